"""``modules_to_save``: modules trained whole beside the adapter, as PEFT does for LoRA (issue 12).

Every config refused the keyword. Now PEFT's ``ModulesToSaveWrapper`` trains a copy of each named module, the method
adapts nothing inside it, the copy is saved with the adapter and loads in a fresh process (``PeftModel`` and
`load_adapter`), and ``merge_and_unload`` leaves a plain UNet holding the trained copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from peft.utils import ModulesToSaveWrapper

from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig
from peft_memcontrol.tuners import MaskedTunerLayer

from helpers.models import build_sd15_unet, run, sd15_inputs


TESTS = str(Path(__file__).resolve().parent)
CONFIGS = {
    "svdiff": SVDiffConfig,
    "difffit": DiffFitConfig,
    "masked_attention": MaskedAttentionConfig,
    "memcontrol": MemControlConfig,
}


def _trained(method: str):
    """A PeftModel with ``method`` (random, non-identity) and conv_out saved whole, its copy changed as training would."""
    torch.manual_seed(4)
    model = get_peft_model(build_sd15_unet(), CONFIGS[method](init_weights=False, modules_to_save=["conv_out"]))
    with torch.no_grad():
        model.base_model.model.conv_out.modules_to_save["default"].weight.add_(0.05)
    return model


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_saved_module_is_trained_whole_and_counted(method):
    model = _trained(method)
    unet = model.base_model.model
    assert isinstance(unet.conv_out, ModulesToSaveWrapper)
    assert not any(isinstance(module, MaskedTunerLayer) for module in unet.conv_out.modules())
    conv_out = build_sd15_unet().conv_out
    conv_out_size = conv_out.weight.numel() + conv_out.bias.numel()
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    adapter_only = get_peft_model(build_sd15_unet(), CONFIGS[method](exclude_modules=["conv_out"]))
    assert trainable == model.peft_config["default"].trainable_parameters
    assert trainable == adapter_only.peft_config["default"].trainable_parameters + conv_out_size


def test_fresh_process_loads_the_saved_module(tmp_path):
    inputs = sd15_inputs()
    expected = {}
    for method in CONFIGS:
        model = _trained(method)
        model.save_pretrained(str(tmp_path / method))
        expected[method] = run(model, inputs)
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {TESTS!r})
        from helpers.models import build_sd15_unet, run, sd15_inputs
        import peft_memcontrol
        from peft import PeftModel
        outputs = {{}}
        for method in {sorted(CONFIGS)!r}:
            folder = {str(tmp_path)!r} + "/" + method
            outputs[method, "peft"] = run(PeftModel.from_pretrained(build_sd15_unet(), folder), sd15_inputs())
            outputs[method, "load_adapter"] = run(peft_memcontrol.load_adapter(build_sd15_unet(), folder), sd15_inputs())
        torch.save(outputs, {str(tmp_path / "outputs.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    outputs = torch.load(tmp_path / "outputs.pt")
    for method, output in expected.items():
        assert torch.equal(outputs[method, "peft"], output), method
        assert torch.equal(outputs[method, "load_adapter"], output), method


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_merge_and_unload_leaves_a_plain_unet_with_the_trained_copy(method):
    model = _trained(method)
    trained_conv_out = model.base_model.model.conv_out.modules_to_save["default"].state_dict()
    inputs = sd15_inputs()
    expected = run(model, inputs)

    merged = model.merge_and_unload()

    plain = build_sd15_unet()
    plain.load_state_dict(merged.state_dict(), strict=True)
    for name, value in trained_conv_out.items():
        assert torch.equal(plain.conv_out.state_dict()[name], value)
    torch.testing.assert_close(run(plain, inputs), expected, atol=2e-5, rtol=1e-4)


def test_a_saved_module_name_that_matches_nothing_is_refused():
    with pytest.raises(ValueError, match=r"modules_to_save of SVDiffConfig: \['conv_outt'\] match no module"):
        get_peft_model(build_sd15_unet(), SVDiffConfig(modules_to_save=["conv_outt"]))
