"""Mistakes an adapter user makes are refused with an error that names the problem and the fix (issue 12).

Each case used to end in a misleading message (``target_modules`` that match nothing blamed the mask), an error deep
inside a library (``AttributeError: 'list' object has no attribute 'items'``, ``KeyError: 3``, a JSON error without
the file's name) or, for a target list with one misspelt name, silently trained less.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from peft_memcontrol import (
    DiffFitConfig,
    Mask,
    MaskedAttentionConfig,
    MemControlConfig,
    SVDiffConfig,
    load_adapter,
    slot_units,
)
from peft_memcontrol.tuners import MaskedTunerLayer

from helpers.models import build_sd15_unet, build_sdxl_unet


CONFIGS = {
    "svdiff": SVDiffConfig,
    "difffit": DiffFitConfig,
    "masked_attention": MaskedAttentionConfig,
    "memcontrol": MemControlConfig,
}


def _adapted_paths(model: nn.Module) -> set[str]:
    return {path for path, module in model.named_modules() if isinstance(module, MaskedTunerLayer)}


def _saved_adapter(folder, config=None) -> str:
    get_peft_model(build_sd15_unet(), config or SVDiffConfig()).save_pretrained(str(folder))
    return str(folder)


def _edit_config(folder: str, **fields) -> str:
    path = f"{folder}/adapter_config.json"
    with open(path) as handle:
        attributes = json.load(handle)
    attributes.update(fields)
    with open(path, "w") as handle:
        json.dump(attributes, handle)
    return path


# -- target_modules -------------------------------------------------------------------------------------------------
def test_a_target_that_matches_nothing_is_named_even_beside_one_that_matches():
    with pytest.raises(ValueError, match=r"'to_qq' matches no module of UNet2DConditionModel"):
        build_sd15_unet().add_adapter(SVDiffConfig(target_modules=["to_q", "to_qq"]))


def test_a_regex_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match=r"'\.\*attn3\.\*' matches no module"):
        build_sd15_unet().add_adapter(SVDiffConfig(target_modules=r".*attn3.*"))


def test_a_target_the_method_does_not_adapt_says_what_it_matched():
    with pytest.raises(ValueError, match=r"'conv_in' matches \['conv_in'\], which it does not adapt"):
        build_sd15_unet().add_adapter(MaskedAttentionConfig(target_modules=["conv_in"]))


def test_matching_targets_adapt_exactly_the_modules_they_name():
    unet = build_sd15_unet()
    expected = {path for path, _ in unet.named_modules() if path.endswith((".to_q", ".attn2.to_k"))}
    unet.add_adapter(SVDiffConfig(target_modules=["to_q", "attn2.to_k"]))
    assert _adapted_paths(unet) == expected and len(expected) == 48


def test_all_linear_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match=r'"all-linear" is a LoRA shortcut.*Leave target_modules unset'):
        SVDiffConfig(target_modules="all-linear")


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules"])
@pytest.mark.parametrize("value", [5, [1, 2], {"to_q": True}])
def test_module_patterns_of_the_wrong_type_are_refused(field, value):
    with pytest.raises(ValueError, match=rf"SVDiffConfig\.{field} must be None, a regex string or a list"):
        SVDiffConfig(**{field: value})


# -- composition with other PEFT methods ----------------------------------------------------------------------------
def test_add_weighted_adapter_names_the_method():
    model = get_peft_model(build_sd15_unet(), SVDiffConfig())
    model.add_adapter("second", SVDiffConfig())
    with pytest.raises(NotImplementedError, match=r"add_weighted_adapter is not implemented for SVDiff adapters"):
        model.add_weighted_adapter(["default", "second"], [0.5, 0.5], "mix")


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_our_adapter_after_a_lora_says_to_add_ours_first_and_leaves_the_model_alone(method):
    unet = build_sd15_unet()
    unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="lora")
    keys = sorted(unet.state_dict())
    with pytest.raises(ValueError, match=r"already holds a peft\.tuners\.lora.*\['lora'\].*adapter first.*delete"):
        unet.add_adapter(CONFIGS[method](), adapter_name="ours")
    assert sorted(unet.state_dict()) == keys  # nothing was injected


# -- masks ----------------------------------------------------------------------------------------------------------
def _sd15_mask() -> Mask:
    units = slot_units(build_sd15_unet(), MemControlConfig())
    return Mask.from_bits([1, 0] * 8, units)


def test_a_mask_for_another_architecture_gives_both_unit_counts():
    with pytest.raises(ValueError, match=r"values for 16 units and this model has 11.*another model"):
        build_sdxl_unet().add_adapter(MemControlConfig(mask=_sd15_mask()))


def test_a_saved_mask_for_another_architecture_gives_both_unit_counts(tmp_path):
    folder = _saved_adapter(tmp_path, MemControlConfig(mask=_sd15_mask()))
    with pytest.raises(ValueError, match=r"values for 16 units and this model has 11"):
        PeftModel.from_pretrained(build_sdxl_unet(), folder)


@pytest.mark.parametrize("build", [Mask, lambda mask: MemControlConfig(mask=mask)], ids=["Mask", "config"])
def test_a_bit_list_is_refused_with_from_bits(build):
    with pytest.raises(TypeError, match=r"got a list of 3 values.*Mask\.from_bits\(bits, slot_units"):
        build([1, 0, 1])


@pytest.mark.parametrize("build", [Mask, lambda mask: MemControlConfig(mask=mask)], ids=["Mask", "config"])
def test_a_path_string_is_refused_with_mask_load(build):
    with pytest.raises(TypeError, match=r"got the string 'mask\.json'.*Mask\.load\(path\)"):
        build("mask.json")


def test_malformed_mask_json_names_the_file(tmp_path):
    path = tmp_path / "mask.json"
    path.write_text('{"down_blocks.0.attentions.0": true,')
    with pytest.raises(ValueError, match=re.escape(str(path))):
        Mask.load(path)


# -- hand-edited adapter folders ------------------------------------------------------------------------------------
def test_malformed_config_json_names_the_file(tmp_path):
    folder = _saved_adapter(tmp_path)
    path = f"{folder}/adapter_config.json"
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write(text[: len(text) // 2])
    with pytest.raises(ValueError, match=re.escape(path) + r" is not valid JSON"):
        load_adapter(build_sd15_unet(), folder)


@pytest.mark.parametrize("peft_type", [3, None, "MC_SVDIF"])
def test_a_hand_edited_peft_type_is_named(tmp_path, peft_type):
    path = _edit_config(_saved_adapter(tmp_path), peft_type=peft_type)
    with pytest.raises(
        ValueError, match=re.escape(path) + rf" gives peft_type {re.escape(repr(peft_type))}.*MC_SVDIFF"
    ):
        load_adapter(build_sd15_unet(), str(tmp_path))


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "mask"])
def test_a_hand_edited_field_of_the_wrong_type_names_the_file(tmp_path, field):
    path = _edit_config(_saved_adapter(tmp_path), **{field: [1, 2]})
    with pytest.raises(ValueError, match=re.escape(path) + rf" holds an invalid adapter config: .*{field[:4]}"):
        load_adapter(build_sd15_unet(), str(tmp_path))
    with pytest.raises((ValueError, TypeError), match=r"must be None, a regex string|Mask\.from_bits"):
        PeftModel.from_pretrained(build_sd15_unet(), str(tmp_path))


def test_a_valid_folder_still_loads_to_the_saved_outputs(tmp_path):
    """The checks refuse only what is wrong: the unedited folder loads, and gives the saved adapter's outputs."""
    torch.manual_seed(3)
    model = get_peft_model(build_sd15_unet(), SVDiffConfig(init_weights=False))
    model.save_pretrained(str(tmp_path))
    unet = load_adapter(build_sd15_unet(), str(tmp_path))
    for path, layer in model.base_model.model.named_modules():
        if isinstance(layer, MaskedTunerLayer):
            loaded = unet.get_submodule(path)
            for name in layer.adapter_layer_names:
                for adapter, value in getattr(layer, name).items():
                    torch.testing.assert_close(getattr(loaded, name)[adapter], value, rtol=0, atol=0)


def test_exclude_modules_that_excluded_something_give_no_warning():
    unet = build_sd15_unet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unet.add_adapter(SVDiffConfig(exclude_modules=["conv_out"]))
    assert "conv_out" not in _adapted_paths(unet) and "conv_in" in _adapted_paths(unet)
    with pytest.warns(UserWarning, match=r"no modules were excluded"):
        build_sd15_unet().add_adapter(SVDiffConfig(exclude_modules=["conv_outt"]))
