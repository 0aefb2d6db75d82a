from __future__ import annotations

from torch import nn

from ...slots import Candidates
from ..base import MaskedTuner, MaskedTunerLayer, iter_base_modules
from ..targets import NORM_LAYERS
from .config import SVDiffConfig
from .layer import SVDiffLayer


class SVDiffModel(MaskedTuner):
    """Applies `SVDiffConfig` to a diffusers UNet or transformer (created by ``get_peft_model``)."""

    prefix: str = "mc_svdiff_"
    tuner_layer_cls = SVDiffLayer

    @classmethod
    def candidates(cls, model: nn.Module, config: SVDiffConfig) -> Candidates:
        found = {}
        for path, module in iter_base_modules(model):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                found[path] = {"spectral": True}
            elif config.train_norms and isinstance(module, NORM_LAYERS) and module.weight is not None:
                found[path] = {"norm_shift": True}
        return found

    @classmethod
    def component_numel(cls, module: nn.Module, component: str, config: SVDiffConfig) -> int:
        if component == "norm_shift":
            return 1
        return min(module.weight.shape[0], module.weight[0].numel())

    @classmethod
    def layer_class(cls, config: SVDiffConfig) -> type[MaskedTunerLayer]:
        return SVDiffLayer
