"""The layer types and module names of diffusers models that the methods adapt, named once for all of them."""

from __future__ import annotations

from torch import nn


NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm)
"""Norm layers: SVDiff shifts their scale, DiffFit trains their scale and shift."""

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d, *NORM_LAYERS)
"""Every layer type an adapter layer of this package can wrap."""

BLOCK_ATTENTIONS = ("attn1", "attn2")
"""The self- and cross-attention of a diffusers transformer block (``BasicTransformerBlock``)."""

ATTENTION_OUTPUT = "to_out.0"
"""The output projection of a diffusers ``Attention`` module (its residual branch, for DiffFit)."""

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", ATTENTION_OUTPUT)
"""The query, key, value and output projections of a diffusers ``Attention`` module."""

_PROJECTION_SUFFIXES = tuple(
    f".{attention}.{projection}" for attention in BLOCK_ATTENTIONS for projection in ATTENTION_PROJECTIONS
)


def is_attention_projection(path: str) -> bool:
    """Whether the module at ``path`` is a projection of a transformer block's self- or cross-attention."""
    return path.endswith(_PROJECTION_SUFFIXES)
