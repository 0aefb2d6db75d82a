"""Slots and adapted parameters of DiT-style transformers (PixArt, SD3's joint blocks, FLUX's joint and single-stream
blocks), counted against a loop over module names written for these three layouts."""

from __future__ import annotations

import random

import pytest
import torch
from peft import get_peft_model
from torch import nn

import peft_memcontrol as pm
from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig

from helpers.models import TRANSFORMERS, build_sd15_unet, run


EXPECTED_SLOTS = {
    "pixart": [f"transformer_blocks.{index}" for index in range(2)],
    "sd3": [f"transformer_blocks.{index}" for index in range(2)],
    "flux": ["transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.1"],
}

ATTENTION_NAMES = ("attn", "attn1", "attn2")
PROJECTION_NAMES = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
RESIDUAL_NAMES = ("to_out.0", "to_add_out", "ff.net.2", "ff_context.net.2")

CONFIGS = {"svdiff": SVDiffConfig, "difffit": DiffFitConfig, "masked_attention": MaskedAttentionConfig}


def _slot_of(name: str, slots: list[str]) -> str | None:
    return next((slot for slot in slots if name.startswith(slot + ".")), None)


def _is_projection(name: str) -> bool:
    return any(
        name.endswith(f".{attention}.{projection}") for attention in ATTENTION_NAMES for projection in PROJECTION_NAMES
    )


def _is_residual_output(name: str) -> bool:
    in_single_block = name.startswith("single_transformer_blocks.") and name.endswith(".proj_out")
    ends_attention = any(
        name.endswith(f".{attention}.{output}") for attention in ATTENTION_NAMES for output in RESIDUAL_NAMES[:2]
    )
    return in_single_block or ends_attention or name.endswith(RESIDUAL_NAMES[2:])


def independent_count(model: nn.Module, method: str, mask: dict[str, bool]) -> int:
    """What ``method`` trains under ``"paper"`` semantics with ``mask``, counted from module names."""
    slots = list(mask)
    total = 0
    for name, module in model.named_modules():
        slot = _slot_of(name, slots)
        on = slot is None or mask[slot]
        linear_or_conv = isinstance(module, (nn.Linear, nn.Conv2d))
        norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None
        if method == "svdiff":
            if linear_or_conv and on:
                total += min(module.weight.shape[0], module.weight[0].numel())
            elif norm and on:
                total += 1
        elif method == "difffit":
            if norm:
                total += module.weight.numel() + module.bias.numel()
            elif linear_or_conv and module.bias is not None:
                total += module.bias.numel()
            if linear_or_conv and slot is not None and on:
                gammas = int(_is_projection(name)) + int(_is_residual_output(name))
                total += gammas * module.weight.shape[0]
        elif slot is not None and (linear_or_conv or norm) and (on or not _is_projection(name)):
            total += sum(parameter.numel() for parameter in module.parameters(recurse=False))
    return total


@pytest.mark.parametrize("arch", sorted(TRANSFORMERS))
def test_every_block_of_every_block_list_is_a_slot(arch):
    build, _ = TRANSFORMERS[arch]
    for config_cls in CONFIGS.values():
        assert pm.slot_units(build(), config_cls()) == EXPECTED_SLOTS[arch]


@pytest.mark.parametrize("arch", sorted(TRANSFORMERS))
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_counts_match_a_loop_over_module_names(arch, method):
    build, _ = TRANSFORMERS[arch]
    rng = random.Random(f"{arch}-{method}")
    masks = [dict.fromkeys(EXPECTED_SLOTS[arch], True), dict.fromkeys(EXPECTED_SLOTS[arch], False)]
    masks += [{slot: rng.random() < 0.5 for slot in EXPECTED_SLOTS[arch]} for _ in range(2)]
    for mask in masks:
        expected = independent_count(build(), method, mask)
        assert pm.count_trainable_parameters(build(), CONFIGS[method](mask=mask)) == expected, mask
        if any(mask.values()):
            model = get_peft_model(build(), MemControlConfig(method=method, mask=mask))
            assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected, mask


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_flux_single_stream_blocks_are_switched_off_by_their_bits(method):
    build, _ = TRANSFORMERS["flux"]
    mask = {slot: slot == "transformer_blocks.0" for slot in EXPECTED_SLOTS["flux"]}
    model = get_peft_model(build(), MemControlConfig(method=method, mask=mask))
    trained = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    # what a bit switches under "paper" semantics: SVDiff's shifts, DiffFit's scales, masked attention's projections
    switched = {"svdiff": "mc_svdiff_", "difffit": "gamma", "masked_attention": ".attn."}[method]
    assert any(switched in name and ".transformer_blocks.0." in name for name in trained)
    switched_off = [name for name in trained if ".single_transformer_blocks." in name and switched in name]
    assert switched_off == []


@pytest.mark.parametrize("arch", sorted(TRANSFORMERS))
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_adapter_changes_the_output_and_merges_exactly(arch, method):
    build, inputs = TRANSFORMERS[arch]
    base_output = run(build(), inputs())
    model = get_peft_model(build(), CONFIGS[method](init_weights=False))
    adapted = run(model, inputs())
    assert (adapted - base_output).abs().max() > 1e-3
    merged = model.merge_and_unload()
    torch.testing.assert_close(run(merged, inputs()), adapted, rtol=1e-4, atol=1e-5)


class PlainAttention(nn.Module):
    """An attention module that is not one of diffusers' attention classes, holding the same projections."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        for name, child in attention.named_children():
            self.add_module(name, child)


def _with_plain_attention(unet: nn.Module) -> nn.Module:
    for block in [module for module in unet.modules() if hasattr(module, "attn1")]:
        block.attn1, block.attn2 = PlainAttention(block.attn1), PlainAttention(block.attn2)
    return unet


@pytest.mark.parametrize(
    "config_cls", [DiffFitConfig, MaskedAttentionConfig, lambda: MemControlConfig(method="difffit")]
)
def test_a_method_that_finds_no_attention_refuses(config_cls):
    # DiffFit would still find the feed-forward's scale, and train the block without its attention's scales
    with pytest.raises(ValueError, match="finds no attention module in 16 slot"):
        get_peft_model(_with_plain_attention(build_sd15_unet()), config_cls())
