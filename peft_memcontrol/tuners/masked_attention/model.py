from __future__ import annotations

from torch import nn

from ...slots import Candidates, find_slot_containers
from ..base import MaskedTuner, MaskedTunerLayer, iter_base_modules
from ..targets import SUPPORTED_LAYERS, is_attention_projection
from .config import MaskedAttentionConfig
from .layer import MaskedAttentionLayer


class MaskedAttentionModel(MaskedTuner):
    """Applies `MaskedAttentionConfig` to a diffusers UNet or transformer (created by ``get_peft_model``)."""

    prefix: str = "mc_masked_attention_"
    tuner_layer_cls = MaskedAttentionLayer

    @classmethod
    def candidates(cls, model: nn.Module, config: MaskedAttentionConfig) -> Candidates:
        containers = find_slot_containers(model)
        found = {}
        for path, module in iter_base_modules(model):
            if not isinstance(module, SUPPORTED_LAYERS) or getattr(module, "weight", None) is None:
                continue
            if not any(container.contains(path) for container in containers):
                continue
            if is_attention_projection(path):
                found[path] = {"delta": True}
            elif not config.attention_only:
                found[path] = {"delta": False}
        return found

    @classmethod
    def component_numel(cls, module: nn.Module, component: str, config: MaskedAttentionConfig) -> int:
        return module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)

    @classmethod
    def layer_class(cls, config: MaskedAttentionConfig) -> type[MaskedTunerLayer]:
        return MaskedAttentionLayer
