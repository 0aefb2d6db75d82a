"""diffusers' own LoRA files through `peft_memcontrol.load_adapter`, and this package's folders through diffusers.

A model's ``save_lora_adapter`` and a pipeline's ``save_lora_weights`` write ``pytorch_lora_weights.safetensors``
with the LoRA config in the safetensors header, and no ``adapter_config.json``. `load_adapter` must load them to what
diffusers' own loader gives. diffusers' loaders cannot load this package's folders, and raise inside diffusers before
any code of this package runs; the tests below pin those errors, which docs/hub.md quotes, so that a diffusers upgrade
that changes them is noticed.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LORA_WEIGHT_NAME_SAFE
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import peft_memcontrol as pm
from peft_memcontrol import SVDiffConfig
from peft_memcontrol.hub import DIFFUSERS_CONFIG_KEY, DIFFUSERS_WEIGHTS_NAME

from helpers.models import RANDOM_ADAPTERS, build_random_pipeline, build_sd15_unet, run, sd15_inputs


LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_v", "conv1"], "init_lora_weights": False}
OURS = RANDOM_ADAPTERS


def unet_with_lora() -> torch.nn.Module:
    """A UNet with a LoRA whose B factors are random (not zero), so that it changes the output."""
    unet = build_sd15_unet()
    torch.manual_seed(5)
    unet.add_adapter(LoraConfig(**LORA))
    return unet


def saved_by_pipeline(folder, with_config: bool = True, with_text_encoder: bool = False) -> str:
    """A pipeline's ``save_lora_weights`` of a UNet LoRA (and a text-encoder LoRA): keys under ``unet.``."""
    unet = unet_with_lora()
    layers = {"unet_lora_layers": get_peft_model_state_dict(unet)}
    if with_config:
        layers["unet_lora_adapter_metadata"] = unet.peft_config["default"].to_dict()
    if with_text_encoder:
        config = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
        text_encoder = get_peft_model(build_random_pipeline().text_encoder, config)
        layers["text_encoder_lora_layers"] = {
            key.removeprefix("base_model.model."): value
            for key, value in get_peft_model_state_dict(text_encoder).items()
        }
    build_random_pipeline().save_lora_weights(str(folder), **layers)
    return str(folder)


def lora_weights_by_module(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's LoRA tensors, keyed without the adapter name (as diffusers and PEFT save them)."""
    return {
        re.sub(r"\.lora_(A|B)\.[^.]+\.weight$", r".lora_\1.weight", name): parameter.detach()
        for name, parameter in model.named_parameters()
        if ".lora_" in name
    }


def test_the_file_and_header_names_are_diffusers_own():
    assert (DIFFUSERS_WEIGHTS_NAME, DIFFUSERS_CONFIG_KEY) == (LORA_WEIGHT_NAME_SAFE, LORA_ADAPTER_METADATA_KEY)


def test_a_save_lora_adapter_folder_loads_as_diffusers_loads_it(tmp_path):
    saved = unet_with_lora()
    saved.save_lora_adapter(str(tmp_path))
    assert os.listdir(tmp_path) == [DIFFUSERS_WEIGHTS_NAME]

    loaded = pm.load_adapter(build_sd15_unet(), str(tmp_path), adapter_name="style")
    by_diffusers = build_sd15_unet()
    by_diffusers.load_lora_adapter(str(tmp_path), weight_name=DIFFUSERS_WEIGHTS_NAME, prefix=None)

    inputs = sd15_inputs()
    torch.testing.assert_close(run(loaded, inputs), run(by_diffusers, inputs), rtol=0, atol=0)
    torch.testing.assert_close(run(loaded, inputs), run(saved, inputs), rtol=0, atol=0)
    assert not torch.allclose(run(loaded, inputs), run(build_sd15_unet(), inputs))  # the LoRA changes the output
    file_weights = load_file(f"{tmp_path}/{DIFFUSERS_WEIGHTS_NAME}")
    targets = [
        name for name, _ in build_sd15_unet().named_modules() if name.rpartition(".")[2] in LORA["target_modules"]
    ]
    assert len(file_weights) == 2 * len(targets) == 172  # lora_A and lora_B of each target layer
    for expected in (file_weights, lora_weights_by_module(by_diffusers)):
        torch.testing.assert_close(lora_weights_by_module(loaded), expected, rtol=0, atol=0)
    config = loaded.peft_config["style"]
    assert (type(config), config.r, config.lora_alpha) == (LoraConfig, 4, 8)
    assert sorted(config.target_modules) == ["conv1", "to_q", "to_v"]
    assert not any(parameter.requires_grad for parameter in loaded.parameters())


def test_a_pipeline_lora_file_loads_into_the_pipeline_and_into_its_unet(tmp_path):
    folder = saved_by_pipeline(tmp_path)
    by_diffusers = build_random_pipeline()
    by_diffusers.load_lora_weights(folder)
    expected = run(by_diffusers.unet, sd15_inputs())

    pipeline = build_random_pipeline()
    pm.load_adapter(pipeline, folder)
    torch.testing.assert_close(run(pipeline.unet, sd15_inputs()), expected, rtol=0, atol=0)
    file_path = f"{folder}/{DIFFUSERS_WEIGHTS_NAME}"
    unet = pm.load_adapter(build_sd15_unet(), file_path)  # the file itself, into a UNet on its own
    torch.testing.assert_close(run(unet, sd15_inputs()), expected, rtol=0, atol=0)
    expected_weights = {key.removeprefix("unet."): value for key, value in load_file(file_path).items()}
    torch.testing.assert_close(lora_weights_by_module(unet), expected_weights, rtol=0, atol=0)


def test_our_adapter_saved_by_save_lora_adapter_loads(tmp_path):
    unet = build_sd15_unet()
    torch.manual_seed(2)
    unet.add_adapter(SVDiffConfig(init_weights=False))
    unet.save_lora_adapter(str(tmp_path))
    loaded = pm.load_adapter(build_sd15_unet(), str(tmp_path))
    assert type(loaded.peft_config["default"]) is SVDiffConfig
    torch.testing.assert_close(run(loaded, sd15_inputs()), run(unet, sd15_inputs()), rtol=0, atol=0)
    # diffusers' own loader builds a LoraConfig from the header, and fails
    with pytest.raises(TypeError, match=r"^`LoraConfig` class could not be instantiated\.$"):
        build_sd15_unet().load_lora_adapter(str(tmp_path), weight_name=DIFFUSERS_WEIGHTS_NAME, prefix=None)


def test_a_lora_file_without_config_in_its_header_is_refused(tmp_path):
    folder = saved_by_pipeline(tmp_path, with_config=False)
    with safe_open(f"{folder}/{DIFFUSERS_WEIGHTS_NAME}", framework="pt") as handle:
        assert LORA_ADAPTER_METADATA_KEY not in (handle.metadata() or {})
    unet = build_sd15_unet()
    with pytest.raises(
        ValueError, match=r"has no adapter config in its safetensors header .*unet_lora_adapter_metadata"
    ):
        pm.load_adapter(unet, folder)
    assert not hasattr(unet, "peft_config")


def test_a_pipeline_file_that_also_holds_a_text_encoder_lora_is_refused(tmp_path):
    folder = saved_by_pipeline(tmp_path, with_text_encoder=True)
    pipeline = build_random_pipeline()
    with pytest.raises(ValueError, match=r"\['text_encoder'\] besides 'unet'.*pipeline\.load_lora_weights"):
        pm.load_adapter(pipeline, folder)
    assert not hasattr(pipeline.unet, "peft_config")


@pytest.mark.parametrize("change", ["drop", "add"])
def test_a_lora_file_whose_tensors_do_not_match_its_config_is_refused(tmp_path, change):
    unet_with_lora().save_lora_adapter(str(tmp_path))
    path = f"{tmp_path}/{DIFFUSERS_WEIGHTS_NAME}"
    with safe_open(path, framework="pt") as handle:
        header = handle.metadata()
    weights = load_file(path)
    key = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.lora_A.weight"
    if change == "drop":
        del weights[key]
        expected = (
            r"1 adapter parameters not in the file \(up_blocks\.1\.attentions\.0\..*attn2\.to_q\.lora_A\.default"
        )
    else:
        weights[key.replace("to_q", "to_k")] = weights[key].clone()
        expected = r"1 tensors of the file that fit no adapter parameter \(.*attn2\.to_k\.lora_A"
    save_file(weights, path, metadata=header)
    unet = build_sd15_unet()
    with pytest.raises(ValueError, match=expected):
        pm.load_adapter(unet, str(tmp_path))
    assert not hasattr(unet, "peft_config")


def test_a_peft_lora_folder_with_a_missing_tensor_is_refused(tmp_path):
    """PEFT folders are loaded strictly too: a tensor missing from adapter_model.safetensors left its parameter at its
    random initial value without a word."""
    torch.manual_seed(5)
    get_peft_model(build_sd15_unet(), LoraConfig(**LORA)).save_pretrained(str(tmp_path))
    path = f"{tmp_path}/adapter_model.safetensors"
    weights = load_file(path)
    del weights["base_model.model.down_blocks.0.resnets.0.conv1.lora_B.weight"]
    save_file(weights, path)
    with pytest.raises(
        ValueError,
        match=r"1 adapter parameters not in the file \(down_blocks\.0\.resnets\.0\.conv1\.lora_B\.default\.weight\)",
    ):
        pm.load_adapter(build_sd15_unet(), str(tmp_path))


# -- this package's folders through diffusers' loaders: the errors docs/hub.md quotes --------------------------------
@pytest.fixture(scope="module")
def our_folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ours")
    for method, config in OURS.items():
        get_peft_model(build_sd15_unet(), config()).save_pretrained(root / method)
    return {method: str(root / method) for method in OURS}


@pytest.mark.parametrize("method", sorted(OURS))
def test_diffusers_loaders_refuse_our_folders_with_the_documented_errors(our_folders, method):
    folder = our_folders[method]
    with pytest.raises(
        OSError, match=rf"^Error no file named pytorch_lora_weights\.bin found in directory {folder}\.$"
    ):
        build_sd15_unet().load_lora_adapter(folder)
    with pytest.raises(
        ValueError, match=r"^Invalid LoRA checkpoint\. Make sure all LoRA param names contain `'lora'` substring\.$"
    ):
        build_random_pipeline().load_lora_weights(folder)
    pm.load_adapter(build_sd15_unet(), folder)  # the fix the docs name


def test_diffusers_load_lora_adapter_with_the_file_named_loads_nothing_silently(our_folders):
    unet = build_sd15_unet()
    assert unet.load_lora_adapter(our_folders["svdiff"], weight_name="adapter_model.safetensors") is None
    assert not getattr(unet, "peft_config", None)
    with pytest.raises(IndexError, match=r"^list index out of range$"):
        unet.load_lora_adapter(our_folders["svdiff"], weight_name="adapter_model.safetensors", prefix=None)
    torch.testing.assert_close(run(unet, sd15_inputs()), run(build_sd15_unet(), sd15_inputs()), rtol=0, atol=0)
