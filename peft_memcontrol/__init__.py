"""peft-memcontrol: MemControl parameter masks for Hugging Face PEFT.

Importing this package registers its methods with PEFT, so that ``get_peft_model``, ``PeftConfig.from_pretrained``
and ``PeftModel.from_pretrained`` know them.
"""

from ._version import __version__ as __version__
from .counting import (
    SD15_UNET_CONFIG,
    SDXL_UNET_CONFIG,
    count_model_parameters,
    count_trainable_parameters,
    meta_unet,
    slot_units,
    trainable_share,
)
from .hub import load_adapter, push_adapter_to_hub
from .optim import adapter_param_groups
from .slots import LAYOUTS, Mask, SlotLayout, find_slot_containers, get_layout
from .svd import SpectralFactorPool, clear_svd_cache
from .tuners import (
    METHODS,
    DiffFitConfig,
    MaskedAttentionConfig,
    MemControlConfig,
    SVDiffConfig,
    spectral_factor_bytes,
)


__all__ = [
    "LAYOUTS",
    "METHODS",
    "SD15_UNET_CONFIG",
    "SDXL_UNET_CONFIG",
    "DiffFitConfig",
    "Mask",
    "MaskedAttentionConfig",
    "MemControlConfig",
    "SVDiffConfig",
    "SlotLayout",
    "SpectralFactorPool",
    "adapter_param_groups",
    "clear_svd_cache",
    "count_model_parameters",
    "count_trainable_parameters",
    "find_slot_containers",
    "get_layout",
    "load_adapter",
    "meta_unet",
    "push_adapter_to_hub",
    "slot_units",
    "spectral_factor_bytes",
    "trainable_share",
]
