"""The PEFT methods of this package, and their registration with PEFT."""

from .._registry import register_method
from .attention import MaskedAttentionConfig, MaskedAttentionLayer, MaskedAttentionModel
from .base import MaskedTuner, MaskedTunerConfig, MaskedTunerLayer
from .difffit import DiffFitConfig, DiffFitLayer, DiffFitModel
from .memcontrol import METHOD_NAMES, MemControlConfig, MemControlModel
from .svdiff import SVDiffConfig, SVDiffLayer, SVDiffModel


METHODS: dict[str, tuple[type[MaskedTunerConfig], type[MaskedTuner]]] = {
    "svdiff": (SVDiffConfig, SVDiffModel),
    "difffit": (DiffFitConfig, DiffFitModel),
    "attention": (MaskedAttentionConfig, MaskedAttentionModel),
}
"""Method name -> (config class, tuner class) of the masked base methods."""

PEFT_METHODS = {
    "mc_svdiff": (SVDiffConfig, SVDiffModel),
    "mc_difffit": (DiffFitConfig, DiffFitModel),
    "mc_masked_attention": (MaskedAttentionConfig, MaskedAttentionModel),
    "mc_memcontrol": (MemControlConfig, MemControlModel),
}
"""PEFT method name -> (config class, tuner class), as registered with PEFT."""

for _name, (_config_cls, _model_cls) in PEFT_METHODS.items():
    register_method(_name, _config_cls, _model_cls, prefix=_model_cls.prefix)


def tuner_for(config: MaskedTunerConfig) -> type[MaskedTuner]:
    """The tuner class that applies ``config``."""
    for config_cls, model_cls in PEFT_METHODS.values():
        if type(config) is config_cls:
            return model_cls
    raise TypeError(f"{type(config).__name__} is not a peft_memcontrol config.")


__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "PEFT_METHODS",
    "DiffFitConfig",
    "DiffFitLayer",
    "DiffFitModel",
    "MaskedAttentionConfig",
    "MaskedAttentionLayer",
    "MaskedAttentionModel",
    "MaskedTuner",
    "MaskedTunerConfig",
    "MaskedTunerLayer",
    "MemControlConfig",
    "MemControlModel",
    "SVDiffConfig",
    "SVDiffLayer",
    "SVDiffModel",
    "tuner_for",
]
