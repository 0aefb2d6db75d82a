"""peft-memcontrol: MemControl parameter masks for Hugging Face PEFT.

Importing this package registers its methods with PEFT, so that ``get_peft_model``, ``PeftConfig.from_pretrained``
and ``PeftModel.from_pretrained`` (and diffusers' ``load_adapter``) know them. The registration happens when PEFT is
imported (at once if it already is), and the names below are imported on first use: ``import peft_memcontrol`` itself
imports neither torch nor PEFT, so that the ``memcontrol`` command answers ``--help`` and argument errors in a moment.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._import_hooks import call_after_import
from ._lazy import lazy_exports
from ._version import __version__ as __version__


if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(__name__, __all__, ("counting", "hub", "optim", "slots", "svd", "tuners"))


def _register_methods() -> None:
    """Register the package's methods with PEFT: importing `peft_memcontrol.tuners` does."""
    importlib.import_module(f"{__name__}.tuners")


call_after_import("peft", _register_methods)
