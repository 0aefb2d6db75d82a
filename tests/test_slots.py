"""Slot discovery, units at each granularity, masks, bit order and layouts."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

import peft_memcontrol as pm
from peft_memcontrol import Mask, SVDiffConfig, get_layout, slot_units

from helpers.models import build_dit, build_sd15_unet, build_sdxl_unet


SD15_SLOTS = (
    [f"down_blocks.{b}.attentions.{i}" for b in range(3) for i in range(2)]
    + ["mid_block.attentions.0"]
    + [f"up_blocks.{b}.attentions.{i}" for b in (1, 2, 3) for i in range(3)]
)


def test_sd15_has_16_slots_in_data_flow_order():
    assert [c.name for c in pm.find_slot_containers(build_sd15_unet())] == SD15_SLOTS
    assert slot_units(build_sd15_unet(), SVDiffConfig()) == SD15_SLOTS


def test_sd15_meta_model_has_the_same_slots():
    assert [c.name for c in pm.find_slot_containers(pm.meta_unet())] == SD15_SLOTS


def test_sdxl_slots():
    expected = (
        [f"down_blocks.{b}.attentions.{i}" for b in (1, 2) for i in range(2)]
        + ["mid_block.attentions.0"]
        + [f"up_blocks.{b}.attentions.{i}" for b in (0, 1) for i in range(3)]
    )
    assert slot_units(build_sdxl_unet(), SVDiffConfig()) == expected
    assert slot_units(pm.meta_unet(pm.SDXL_UNET_CONFIG), SVDiffConfig()) == expected


def test_dit_slots_are_its_transformer_blocks():
    assert slot_units(build_dit(), SVDiffConfig()) == [f"transformer_blocks.{i}" for i in range(3)]


def test_block_granularity():
    unet = build_sd15_unet()
    paper = slot_units(unet, SVDiffConfig(granularity="block"))
    assert paper == [
        "down_blocks.0",
        "down_blocks.1",
        "down_blocks.2",
        "mid_block",
        "up_blocks.1",
        "up_blocks.2",
        "up_blocks.3",
    ]
    strict = slot_units(unet, SVDiffConfig(granularity="block", mask_semantics="strict"))
    assert strict == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3", "mid_block"] + [
        f"up_blocks.{i}" for i in range(4)
    ]


def test_layer_granularity_lists_targets():
    unet = build_sd15_unet()
    units = slot_units(unet, SVDiffConfig(granularity="layer"))
    # paper semantics: the units are the targets inside transformer blocks (Linear layers and LayerNorms)
    expected = [
        name
        for name, module in unet.named_modules()
        if ".transformer_blocks." in name and isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm))
    ]
    assert sorted(units) == sorted(expected)
    strict = slot_units(unet, SVDiffConfig(granularity="layer", mask_semantics="strict"))
    every = [
        n
        for n, m in unet.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm))
    ]
    assert sorted(strict) == sorted(every)


def test_model_without_slots_raises():
    with pytest.raises(ValueError, match="has no slots"):
        pm.find_slot_containers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_mask_bits_and_json_round_trip(tmp_path):
    bits = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0]
    mask = Mask.from_bits(bits, SD15_SLOTS)
    assert mask.to_bits(SD15_SLOTS) == bits
    assert mask.selected() == [slot for slot, bit in zip(SD15_SLOTS, bits) if bit]
    assert Mask.from_json(mask.to_json()) == mask
    mask.save(tmp_path / "mask.json")
    assert Mask.load(tmp_path / "mask.json") == mask


def test_mask_of_wrong_length_names_the_order():
    with pytest.raises(ValueError, match="Got 3 bits for 16 units"):
        Mask.from_bits([1, 0, 1], SD15_SLOTS)


def test_unknown_slot_lists_valid_ones():
    unet = build_sd15_unet()
    with pytest.raises(
        ValueError, match=r"Unknown slot name\(s\) in mask: \['down_blocks.9.attentions.0'\].*mid_block"
    ):
        pm.count_trainable_parameters(unet, SVDiffConfig(mask={"down_blocks.9.attentions.0": True}))


def test_incomplete_mask_is_refused():
    mask = dict.fromkeys(SD15_SLOTS[:-1], True)
    with pytest.raises(ValueError, match="gives no value for \\['up_blocks.3.attentions.2'\\]"):
        pm.count_trainable_parameters(build_sd15_unet(), SVDiffConfig(mask=mask))


def test_reference_13_bit_layout():
    layout = get_layout("sd15-reference-13")
    assert layout.num_bits == 13
    mask = layout.decode([0] * 13)
    assert sorted(mask.selected()) == [f"up_blocks.{b}.attentions.2" for b in (1, 2, 3)]
    assert set(mask) == set(SD15_SLOTS)
    bits = [1, 0] * 6 + [1]
    assert layout.encode(layout.decode(bits)) == bits
    with pytest.raises(ValueError, match="holds"):
        layout.encode(Mask.all_off(SD15_SLOTS))
    assert get_layout("sd15-reference-16").genome == tuple(SD15_SLOTS)
    with pytest.raises(ValueError, match="Unknown layout"):
        get_layout("nope")


class _NoSlots(torch.nn.Module):
    """A model without attention containers: a linear layer and a convolution."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 5)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, image):
        return self.proj(x), self.conv(image)


@pytest.mark.parametrize("config_class", [pm.SVDiffConfig, pm.DiffFitConfig])
def test_a_model_without_slots_takes_svdiff_and_difffit_without_a_mask(config_class):
    torch.manual_seed(0)
    base = _NoSlots()
    x, image = torch.randn(2, 6), torch.randn(1, 3, 5, 5)
    expected = base(x, image)
    model = get_peft_model(base, config_class(target_modules=["proj", "conv"]))
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    # both layers adapted (every unit on: the model has none), outputs unchanged before training
    assert any(".proj." in name for name in trained) and any(".conv." in name for name in trained)
    for got, want in zip(model(x, image), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # a mask switches slots, and there are none: refused with the fix
    with pytest.raises(ValueError, match="has no slots.*without a mask"):
        get_peft_model(_NoSlots(), config_class(target_modules=["proj", "conv"], mask={"proj": True}))
