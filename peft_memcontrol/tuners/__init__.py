"""The PEFT methods of this package. Each method package registers itself with PEFT when it is imported."""

from .._registry import base_methods
from .base import MaskedTuner, MaskedTunerConfig, MaskedTunerLayer
from .block_scales import install_block_scales


# isort: off
# Registration order is the order of METHODS: the paper's, SVDiff, DiffFit, masked attention tuning.
from .svdiff import SVDiffConfig, SVDiffLayer, SVDiffModel, spectral_factor_bytes
from .difffit import DiffFitConfig, DiffFitLayer, DiffFitModel
from .masked_attention import MaskedAttentionConfig, MaskedAttentionLayer, MaskedAttentionModel
from .memcontrol import MemControlConfig, MemControlModel

# isort: on

install_block_scales()  # block-wise set_adapters weights for our adapters on conv_in, time_embedding, conv_out

METHODS: dict[str, tuple[type[MaskedTunerConfig], type[MaskedTuner]]] = {
    name: (record.config_cls, record.model_cls) for name, record in base_methods().items()
}
"""Method name -> (config class, tuner class) of the base methods, the names ``MemControlConfig(method=...)``
takes; derived from the registry (`peft_memcontrol._registry`)."""


__all__ = [
    "METHODS",
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
    "spectral_factor_bytes",
]
