"""The layer types the methods adapt, named once for all of them (attention modules are found by type in
`peft_memcontrol.model_parts`)."""

from __future__ import annotations

from torch import nn


NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm)
"""Norm layers: SVDiff shifts their scale, DiffFit trains their scale and shift."""

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d, *NORM_LAYERS)
"""Every layer type an adapter layer of this package can wrap."""
