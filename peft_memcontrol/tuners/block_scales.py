"""diffusers' block-wise adapter weights for adapters on modules outside the U-Net's blocks.

``unet.set_adapters(name, {"down": 0, "mid": 1, "up": 1})`` (and a pipeline's ``set_adapters``, which calls it)
expands the dict into one weight per transformer layer (``"down_blocks.1.attentions.0"``) and gives each adapter layer
the weight whose layer name its path contains, or else the weight of ``<block>.attentions.<index>`` built from the
4th part of its path (a resnet or sampler beside a transformer layer; 1.0 where the block has none, as in
``mid_block.resnets`` or SD-1.5's ``down_blocks.3``). A path with fewer than 4 parts (``conv_in``,
``time_embedding.linear_1``, ``conv_out``) has no 4th part, and diffusers raises a bare ``IndexError``; a LoRA on
``conv_in`` fails the same way. SVDiff, DiffFit and MemControl adapt those modules.

`install_block_scales` wraps diffusers' expansion for U-Nets so that every top-level module outside
``down_blocks``/``mid_block``/``up_blocks`` is named with weight 1.0: the weight diffusers gives every module that a
block-wise dict does not name. Its adapters there keep their full change; the blocks are scaled exactly as for a LoRA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers.loaders import peft as diffusers_peft
from torch import nn


BLOCK_LISTS = ("down_blocks", "mid_block", "up_blocks")
"""The U-Net parts that diffusers' block-wise weights address."""

OUTSIDE_BLOCKS_WEIGHT = 1.0
"""The weight of adapter layers outside `BLOCK_LISTS` under a block-wise dict."""

_EXPANDED_CLASSES = ("UNet2DConditionModel", "UNetMotionModel")
"""The model classes whose block-wise weights diffusers expands (``_SET_ADAPTER_SCALE_FN_MAPPING``)."""

Expansion = Callable[[nn.Module, list[Any]], list[Any]]


def _naming_outside_modules(expand: Expansion) -> Expansion:
    """``expand``, adding the weight of every top-level module outside the blocks to each block-wise dict."""

    def expand_block_weights(model: nn.Module, weights: list[Any]) -> list[Any]:
        # After the block names, so that a module inside a block still finds its block's weight first.
        outside = {name: OUTSIDE_BLOCKS_WEIGHT for name, _ in model.named_children() if name not in BLOCK_LISTS}
        return [{**weight, **outside} if isinstance(weight, dict) else weight for weight in expand(model, weights)]

    expand_block_weights.names_outside_modules = True
    return expand_block_weights


def install_block_scales() -> None:
    """Wrap diffusers' block-wise weight expansion of U-Nets (once; importing or reloading again changes nothing)."""
    mapping = diffusers_peft._SET_ADAPTER_SCALE_FN_MAPPING
    for class_name in _EXPANDED_CLASSES:
        if class_name in mapping and not getattr(mapping[class_name], "names_outside_modules", False):
            mapping[class_name] = _naming_outside_modules(mapping[class_name])
