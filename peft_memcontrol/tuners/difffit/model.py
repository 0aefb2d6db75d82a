from __future__ import annotations

from torch import nn

from ...model_parts import attention_projections, residual_outputs
from ...slots import Candidates
from ..base import MaskedTuner, MaskedTunerLayer, iter_base_modules
from ..targets import NORM_LAYERS
from .config import DiffFitConfig
from .layer import DiffFitLayer


class DiffFitModel(MaskedTuner):
    """Applies `DiffFitConfig` to a diffusers UNet or transformer (created by ``get_peft_model``)."""

    prefix: str = "mc_difffit_"
    tuner_layer_cls = DiffFitLayer

    @classmethod
    def candidates(cls, model: nn.Module, config: DiffFitConfig) -> Candidates:
        modules = dict(iter_base_modules(model))
        found: dict[str, dict[str, bool]] = {}
        for path, module in modules.items():
            if isinstance(module, NORM_LAYERS) and module.weight is not None:
                found[path] = {"norm": False}
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                found[path] = {"bias": False}
        for path in attention_projections(modules):
            found.setdefault(path, {})["gamma"] = True
        for path in residual_outputs(modules):
            found.setdefault(path, {})["residual_gamma"] = True
        return found

    @classmethod
    def component_numel(cls, module: nn.Module, component: str, config: DiffFitConfig) -> int:
        if component in ("gamma", "residual_gamma"):
            return module.weight.shape[0]
        if component == "bias":
            return module.bias.numel()
        return module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)

    @classmethod
    def layer_class(cls, config: DiffFitConfig) -> type[MaskedTunerLayer]:
        return DiffFitLayer

    @classmethod
    def adapts_attention(cls, config: DiffFitConfig) -> bool:
        return True
