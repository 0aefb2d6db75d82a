"""`load_adapter` (un)freezes exactly the loaded adapter's parameters, whatever the adapter's name.

Names such as "0", "1" or "attn1" are also parts of base parameter names ("down_blocks.0.attentions.1.transformer_
blocks.0.attn1.to_q.weight"); loading under them must neither unfreeze nor freeze a base parameter. The expected
parameters are computed without the code under test: from the keys of the saved safetensors file, and from PEFT's own
``PeftModel.from_pretrained`` on the same folder.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

import peft_memcontrol as pm

from helpers.models import RANDOM_ADAPTERS, build_sd15_unet


CONFIGS = {
    **RANDOM_ADAPTERS,
    "lora": lambda: LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v", "conv1"], init_lora_weights=False),
}
ADAPTER_NAMES = ["0", "1", "attn1", "default", "mask"]
PEFT_PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """One saved adapter folder per method (and a LoRA), written by PEFT's ``save_pretrained``."""
    root = tmp_path_factory.mktemp("adapters")
    result = {}
    for method, config in CONFIGS.items():
        torch.manual_seed(3)
        get_peft_model(build_sd15_unet(), config()).save_pretrained(root / method)
        result[method] = str(root / method)
    return result


def expected_adapter_parameter_names(folder: str, adapter_name: str) -> set[str]:
    """The model parameter names of the folder's tensors: PEFT saves ``<module>.<container>[.<tensor>]`` without
    the adapter name, and the model holds them at ``<module>.<container>.<adapter_name>[.<tensor>]``."""
    names = set()
    for key in load_file(f"{folder}/adapter_model.safetensors"):
        parts = key.removeprefix(PEFT_PREFIX).split(".")
        container = max(index for index, part in enumerate(parts) if part.startswith(("mc_", "lora_")))
        names.add(".".join(parts[: container + 1] + [adapter_name] + parts[container + 1 :]))
    return names


def trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


@pytest.mark.parametrize("is_trainable", [True, False])
@pytest.mark.parametrize("adapter_name", ADAPTER_NAMES)
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_only_the_adapters_own_parameters_change_requires_grad(folders, method, adapter_name, is_trainable):
    unet = build_sd15_unet().requires_grad_(False)  # a frozen base, as training scripts prepare it
    before = trainable(unet)
    pm.load_adapter(unet, folders[method], adapter_name=adapter_name, is_trainable=is_trainable)
    own = expected_adapter_parameter_names(folders[method], adapter_name)
    assert own <= {name for name, _ in unet.named_parameters()}
    assert trainable(unet) == (before | own if is_trainable else before - own)


@pytest.mark.parametrize("is_trainable", [True, False])
@pytest.mark.parametrize("adapter_name", ["0", "attn1"])
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_trainable_parameters_match_peft_from_pretrained(folders, method, adapter_name, is_trainable):
    """On a model straight from its constructor (every parameter trainable), as PEFT's own loader does it."""
    reference = PeftModel.from_pretrained(
        build_sd15_unet(), folders[method], adapter_name=adapter_name, is_trainable=is_trainable
    )
    expected = {name.removeprefix(PEFT_PREFIX) for name in trainable(reference)}
    unet = pm.load_adapter(build_sd15_unet(), folders[method], adapter_name=adapter_name, is_trainable=is_trainable)
    assert trainable(unet) == expected
    assert len(expected) == (
        len(expected_adapter_parameter_names(folders[method], adapter_name)) if is_trainable else 0
    )
