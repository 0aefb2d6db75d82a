"""Trainable-parameter counts: against an independent count on SD-1.5 and against real adapters on tiny models."""

from __future__ import annotations

import random

import pytest
from peft import get_peft_model
from torch import nn

import peft_memcontrol as pm
from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig, get_layout

from helpers.models import MODELS


SD15_TOTAL = 859_520_964


def _in_masked_region(name: str, off_slots: list[str]) -> bool:
    return any(name.startswith(slot + ".transformer_blocks.") for slot in off_slots)


def independent_counts(unet: nn.Module, off_slots: list[str]) -> dict[str, int]:
    """What the reference code trains on SD-1.5 with ``off_slots`` switched off, counted from scratch."""
    svdiff = difffit = attention = 0
    slots = [name for name, module in unet.named_modules() if hasattr(module, "transformer_blocks")]
    for name, module in unet.named_modules():
        off = _in_masked_region(name, off_slots)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not off:
            svdiff += min(module.weight.shape[0], module.weight[0].numel())
        if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            svdiff += 0 if off else 1
            difffit += module.weight.numel() + module.bias.numel()
        elif getattr(module, "bias", None) is not None:
            difffit += module.bias.numel()
        if type(module).__name__ == "BasicTransformerBlock" and not off:
            difffit += 11 * module.norm1.weight.numel()
        in_slot = any(name.startswith(slot + ".") for slot in slots)
        if in_slot and isinstance(module, (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)):
            projection = any(
                name.endswith(f"{a}.{p}") for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")
            )
            if not (projection and any(name.startswith(slot + ".") for slot in off_slots)):
                attention += sum(p.numel() for p in module.parameters(recurse=False))
    return {"svdiff": svdiff, "difffit": difffit, "masked_attention": attention}


@pytest.fixture(scope="module")
def sd15():
    return pm.meta_unet()


def test_sd15_total(sd15):
    assert pm.count_model_parameters(sd15) == SD15_TOTAL


@pytest.mark.parametrize("bit", [0, 1])
def test_sd15_paper_counts_match_reference(sd15, bit):
    layout13 = get_layout("sd15-reference-13")
    layout16 = get_layout("sd15-reference-16")
    mask13 = layout13.decode([bit] * 13)
    mask16 = layout16.decode([bit] * 16)
    expected13 = independent_counts(sd15, [s for s, on in mask13.items() if not on])
    expected16 = independent_counts(sd15, [s for s, on in mask16.items() if not on])
    assert pm.count_trainable_parameters(sd15, SVDiffConfig(mask=mask13)) == expected13["svdiff"]
    assert pm.count_trainable_parameters(sd15, DiffFitConfig(mask=mask13)) == expected13["difffit"]
    assert pm.count_trainable_parameters(sd15, MaskedAttentionConfig(mask=mask16)) == expected16["masked_attention"]
    # the reference's published ranges (method.md): SVDiff 0.015%..0.026%, DiffFit >= 0.054%, attention 20%..31%
    shares = {
        "svdiff": round(100 * expected13["svdiff"] / SD15_TOTAL, 3),
        "difffit": round(100 * expected13["difffit"] / SD15_TOTAL, 3),
        "masked_attention": round(100 * expected16["masked_attention"] / SD15_TOTAL),
    }
    assert shares == (
        {"svdiff": 0.015, "difffit": 0.055, "masked_attention": 20}
        if bit == 0
        else {"svdiff": 0.026, "difffit": 0.068, "masked_attention": 31}
    )


def test_memcontrol_config_counts_like_its_base_method(sd15):
    mask = get_layout("sd15-reference-13").decode([1, 0] * 6 + [1])
    assert pm.count_trainable_parameters(
        sd15, MemControlConfig(method="svdiff", mask=mask)
    ) == pm.count_trainable_parameters(sd15, SVDiffConfig(mask=mask))


def test_strict_all_off_is_nothing_and_all_on_is_inside_slots(sd15):
    units = pm.slot_units(sd15, SVDiffConfig(mask_semantics="strict"))
    on = pm.count_trainable_parameters(sd15, SVDiffConfig(mask_semantics="strict"))
    expected = sum(
        (min(m.weight.shape[0], m.weight[0].numel()) if isinstance(m, (nn.Linear, nn.Conv2d)) else 1)
        for name, m in sd15.named_modules()
        if any(name.startswith(u + ".") for u in units)
        and isinstance(m, (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm))
    )
    assert on == expected
    assert (
        pm.count_trainable_parameters(
            sd15, SVDiffConfig(mask_semantics="strict", mask={u: u == units[0] for u in units})
        )
        < on
    )


def _random_mask(model, config_cls, rng, **kwargs):
    units = pm.slot_units(model, config_cls(**kwargs))
    return {unit: rng.random() < 0.5 for unit in units}


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("config_cls", [SVDiffConfig, DiffFitConfig, MaskedAttentionConfig])
@pytest.mark.parametrize(
    "options",
    [{}, {"mask_semantics": "strict"}, {"granularity": "block"}, {"granularity": "layer", "mask_semantics": "strict"}],
)
def test_count_equals_trainable_parameters_of_the_real_adapter(arch, config_cls, options):
    build, _ = MODELS[arch]
    rng = random.Random(hash((arch, config_cls.__name__, str(options))) % 1000)
    mask = _random_mask(build(), config_cls, rng, **options)
    mask[next(iter(mask))] = True
    config = config_cls(mask=mask, **options)
    expected = pm.count_trainable_parameters(build(), config)
    model = get_peft_model(build(), config_cls(mask=mask, **options))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert model.peft_config["default"].trainable_parameters == expected
