"""The PEFT methods of this package. Each method package registers itself with PEFT when it is imported."""

from .._registry import base_method
from ..constants import METHOD_NAMES
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
    name: (base_method(name).config_cls, base_method(name).model_cls) for name in METHOD_NAMES
}
"""Method name -> (config class, tuner class) of the base methods, the names ``MemControlConfig(method=...)``
takes: `peft_memcontrol.constants.METHOD_NAMES` (the command line's choices, importable without torch), each taken
from the registry (`peft_memcontrol._registry`), which refuses a name that no method registered."""


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
