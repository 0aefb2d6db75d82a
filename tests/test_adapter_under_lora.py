"""Our adapter saves the keys a fresh model has, also when a LoRA was added on top of it (issue 12, item 5).

A LoRA added after one of our adapters wraps our layers, so our parameters move under ``.base_layer.`` in the model's
state dict; the saved checkpoint then had keys no fresh UNet has, and loading it blamed the architecture. The
reference is the same adapter saved from a UNet without the LoRA.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file

import peft_memcontrol
from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig

from helpers.models import build_sd15_unet, run, sd15_inputs


PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]
CONFIGS = {
    "svdiff": SVDiffConfig,
    "difffit": DiffFitConfig,
    "masked_attention": MaskedAttentionConfig,
    "memcontrol": MemControlConfig,
}


def _ours_then_lora(method: str, init_weights: bool = False):
    unet = build_sd15_unet()
    torch.manual_seed(5)
    unet.add_adapter(CONFIGS[method](init_weights=init_weights), adapter_name="ours")
    torch.manual_seed(6)
    unet.add_adapter(LoraConfig(r=4, target_modules=PROJECTIONS, init_lora_weights=False), adapter_name="lora")
    assert any(".base_layer.mc_" in key for key in unet.state_dict())  # the LoRA wraps our layers
    return unet


def _ours_alone(method: str):
    unet = build_sd15_unet()
    unet.add_adapter(CONFIGS[method](), adapter_name="ours")
    return unet


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_saved_keys_are_those_of_a_fresh_model(method):
    saved = get_peft_model_state_dict(_ours_then_lora(method), adapter_name="ours")
    fresh = get_peft_model_state_dict(_ours_alone(method), adapter_name="ours")
    assert sorted(saved) == sorted(fresh)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_adapter_saved_under_a_lora_loads_on_a_fresh_unet(method, tmp_path):
    inputs = sd15_inputs()
    unet = _ours_then_lora(method)
    unet.set_adapters(["ours"])
    expected = run(unet, inputs)
    save_file(get_peft_model_state_dict(unet, adapter_name="ours"), str(tmp_path / "adapter_model.safetensors"))
    unet.peft_config["ours"].save_pretrained(str(tmp_path))

    fresh = build_sd15_unet()
    peft_memcontrol.load_adapter(fresh, str(tmp_path), adapter_name="ours")
    torch.testing.assert_close(run(fresh, inputs), expected, rtol=0, atol=1e-6)


def test_checkpoint_of_a_fresh_model_loads_into_ours_under_a_lora():
    inputs = sd15_inputs()
    source = _ours_alone("svdiff")
    torch.manual_seed(9)
    with torch.no_grad():
        for name, parameter in source.named_parameters():
            if ".mc_" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    expected = run(source, inputs)
    checkpoint = get_peft_model_state_dict(source, adapter_name="ours")

    target = _ours_then_lora("svdiff", init_weights=True)
    result = set_peft_model_state_dict(target, checkpoint, adapter_name="ours")
    assert not [key for key in result.unexpected_keys if ".mc_" in key]
    target.set_adapters(["ours"])
    torch.testing.assert_close(run(target, inputs), expected, rtol=0, atol=1e-6)
