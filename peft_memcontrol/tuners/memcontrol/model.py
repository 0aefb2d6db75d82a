from __future__ import annotations

from torch import nn

from ..._registry import base_method
from ...slots import Candidates
from ..base import MaskedTuner, MaskedTunerLayer
from .config import MemControlConfig


class MemControlModel(MaskedTuner):
    """Applies a `MemControlConfig`: the base method's tuner logic with the config's mask."""

    prefix: str = "mc_"
    tuner_layer_cls = MaskedTunerLayer

    @staticmethod
    def _method_tuner(config: MemControlConfig) -> type[MaskedTuner]:
        return base_method(config.method).model_cls

    @classmethod
    def candidates(cls, model: nn.Module, config: MemControlConfig) -> Candidates:
        return cls._method_tuner(config).candidates(model, config.base_config())

    @classmethod
    def component_numel(cls, module: nn.Module, component: str, config: MemControlConfig) -> int:
        return cls._method_tuner(config).component_numel(module, component, config.base_config())

    @classmethod
    def layer_class(cls, config: MemControlConfig) -> type[MaskedTunerLayer]:
        return cls._method_tuner(config).layer_class(config.base_config())

    @classmethod
    def adapts_attention(cls, config: MemControlConfig) -> bool:
        return cls._method_tuner(config).adapts_attention(config.base_config())
