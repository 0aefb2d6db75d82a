"""Trainable-parameter counts of (method, mask, semantics), without building adapters or allocating weights.

The counts come from the same plan that `get_peft_model` follows, so they are exact; on a model built on the meta
device (`meta_unet`) they take well under a second even for SD-1.5 and SDXL.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from torch import nn

from ._registry import method_of
from .tuners.base import MaskedTunerConfig, count_model_parameters


SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
"""The UNet of stable-diffusion-v1-5 (859,520,964 parameters)."""

SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
"""The UNet of stable-diffusion-xl-base-1.0."""


def meta_unet(config: dict[str, Any] | None = None) -> nn.Module:
    """A ``UNet2DConditionModel`` on the meta device (no weights allocated); SD-1.5's by default."""
    with init_empty_weights():
        return UNet2DConditionModel(**(config or SD15_UNET_CONFIG))


def count_trainable_parameters(model: nn.Module, config: MaskedTunerConfig) -> int:
    """How many parameters ``get_peft_model(model, config)`` would train."""
    return method_of(config).model_cls.count(model, config)


def trainable_share(model: nn.Module, config: MaskedTunerConfig) -> float:
    """Trainable parameters as a fraction of the base model's parameters (0.00019 = 0.019%)."""
    return count_trainable_parameters(model, config) / count_model_parameters(model)


def slot_units(model: nn.Module, config: MaskedTunerConfig) -> list[str]:
    """The mask units of ``config``'s method, granularity and semantics on ``model``, in bit order."""
    return method_of(config).model_cls.plan(model, dataclasses.replace(config, mask=None)).units
