"""Mask values are booleans (or 1/0) wherever a mask comes from: a string such as "false" is refused, never read as
True (``bool("false")`` is ``True``: a mask file written by hand would silently train the slots it switched off)."""

from __future__ import annotations

import json

import pytest

from peft_memcontrol.slots import LAYOUTS, Mask
from peft_memcontrol.tuners import SVDiffConfig


UNITS = list(LAYOUTS["sd15-reference-16"].genome)


@pytest.mark.parametrize("bad", ["false", "true", "0", 2, None, 0.5])
def test_a_mask_file_with_a_non_boolean_value_is_refused_with_the_unit_named(tmp_path, bad):
    values = dict.fromkeys(UNITS, False)
    values[UNITS[3]] = bad
    path = tmp_path / "mask.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=rf"Mask value for '{UNITS[3]}' must be true or false"):
        Mask.load(path)
    with pytest.raises(ValueError, match="must be true or false"):
        Mask(values)
    with pytest.raises(ValueError, match="must be true or false"):
        SVDiffConfig(mask=values)


def test_booleans_and_one_zero_are_read_exactly_from_files_and_bits(tmp_path):
    bits = [index % 3 == 0 for index in range(len(UNITS))]
    path = tmp_path / "mask.json"
    path.write_text(json.dumps({"mask": {unit: int(bit) for unit, bit in zip(UNITS, bits)}, "method": "svdiff"}))
    loaded = Mask.load(path)
    assert [loaded[unit] for unit in UNITS] == bits
    assert Mask.from_bits([int(bit) for bit in bits], UNITS) == loaded
    with pytest.raises(ValueError, match="must be true or false"):
        Mask.from_bits(["1"] * len(UNITS), UNITS)


def test_a_mask_entry_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "mask.json"
    path.write_text(json.dumps({"mask": [1, 0, 1]}))
    with pytest.raises(ValueError, match="mapping unit names to true/false"):
        Mask.load(path)


def test_a_layout_refuses_a_string_value_for_a_fixed_unit():
    layout = LAYOUTS["sd15-reference-13"]
    mask = dict(layout.decode([1] * len(layout.genome)))
    mask[next(iter(layout.fixed))] = "false"
    with pytest.raises(ValueError, match="must be true or false"):
        layout.encode(mask)
