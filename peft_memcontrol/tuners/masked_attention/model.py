from __future__ import annotations

from torch import nn

from ...model_parts import attention_projections
from ...slots import Candidates, find_slot_containers
from ..base import MaskedTuner, MaskedTunerLayer, iter_base_modules
from ..targets import SUPPORTED_LAYERS
from .config import MaskedAttentionConfig
from .layer import MaskedAttentionLayer


class MaskedAttentionModel(MaskedTuner):
    """Applies `MaskedAttentionConfig` to a diffusers UNet or transformer (created by ``get_peft_model``)."""

    prefix: str = "mc_masked_attention_"
    tuner_layer_cls = MaskedAttentionLayer

    @classmethod
    def candidates(cls, model: nn.Module, config: MaskedAttentionConfig) -> Candidates:
        containers = find_slot_containers(model)
        modules = dict(iter_base_modules(model))
        projections = attention_projections(modules)
        found = {}
        for path, module in modules.items():
            if not isinstance(module, SUPPORTED_LAYERS) or getattr(module, "weight", None) is None:
                continue
            if not any(container.contains(path) for container in containers):
                continue
            if path in projections:
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

    @classmethod
    def adapts_attention(cls, config: MaskedAttentionConfig) -> bool:
        return True
