"""The four methods on tiny SD-1.5, SDXL and DiT models: identity at init, masked gradients, merge formulas, large SVDs.

The PEFT and diffusers adapter calls one by one (named adapters, set_adapters, fuse, half precision, gradient
checkpointing, ...) are walked in tests/test_conformance.py."""

from __future__ import annotations

import re

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from torch import nn

import peft_memcontrol as pm
from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig
from peft_memcontrol.svd import SMALL_MATRIX, spectral_factors, weight_matrix

from helpers.models import MODELS, build_sd15_unet, run, sd15_inputs


CONFIGS = {
    "svdiff": lambda **kw: SVDiffConfig(**kw),
    "difffit": lambda **kw: DiffFitConfig(**kw),
    "masked_attention": lambda **kw: MaskedAttentionConfig(**kw),
    "memcontrol": lambda **kw: MemControlConfig(method="difffit", **kw),
}
ADAPTER_PARAMETER = re.compile(r"\.mc_[a-z_]+\.[A-Za-z0-9_]+$")


@pytest.fixture(params=sorted(CONFIGS))
def method(request):
    return request.param


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_identity_init_disabled_and_merged(arch, method):
    build, make_inputs = MODELS[arch]
    inputs = make_inputs()
    base_output = run(build(), inputs)

    identity = get_peft_model(build(), CONFIGS[method]())
    assert torch.equal(run(identity, inputs), base_output)

    model = get_peft_model(build(), CONFIGS[method](init_weights=False))
    adapted = run(model, inputs)
    assert not torch.allclose(adapted, base_output, atol=1e-4)
    with model.disable_adapter():
        assert torch.equal(run(model, inputs), base_output)

    original = {k: v.clone() for k, v in build().state_dict().items()}
    model.merge_adapter()
    torch.testing.assert_close(run(model, inputs), adapted, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    unloaded = model.unload()
    for key, value in unloaded.state_dict().items():
        assert torch.equal(value, original[key]), key

    model = get_peft_model(build(), CONFIGS[method](init_weights=False))
    merged = model.merge_and_unload()
    assert not any("mc_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(run(merged, inputs), adapted, rtol=1e-5, atol=1e-5)


def _slot_of(name: str, units: list[str]) -> str | None:
    return next((unit for unit in units if name.startswith(unit + ".")), None)


@pytest.mark.parametrize("semantics", ["paper", "strict"])
def test_gradients_reach_only_adapters_of_selected_slots(method, semantics):
    unet = build_sd15_unet()
    config = CONFIGS[method](mask_semantics=semantics)
    units = pm.slot_units(unet, config)
    selected = set(units[::3])
    mask = {unit: unit in selected for unit in units}
    model = get_peft_model(unet, CONFIGS[method](mask=mask, mask_semantics=semantics, init_weights=False))
    model.train()
    inputs = sd15_inputs()
    model(**inputs).sample.pow(2).mean().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad, "no gradient at all"
    assert all(ADAPTER_PARAMETER.search(name) for name in with_grad), sorted(with_grad)[:5]
    for name in with_grad:
        module_path = name.removeprefix("base_model.model.")
        slot = _slot_of(module_path, units)
        in_blocks = slot is not None and module_path.startswith(slot + ".transformer_blocks.")
        maskable = {
            "svdiff": True,
            "difffit": "gamma" in name,
            "memcontrol": "gamma" in name,
            "masked_attention": re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)\.", module_path) is not None,
        }[method]
        if semantics == "strict" or in_blocks and maskable:
            assert slot in selected, name
    frozen = [n for n, p in model.named_parameters() if not ADAPTER_PARAMETER.search(n) and p.requires_grad]
    assert frozen == []


def test_svdiff_merge_matches_the_svdiff_formula():
    model = get_peft_model(build_sd15_unet(), SVDiffConfig(init_weights=False))
    layer = model.base_model.model.down_blocks[1].resnets[0].conv1
    original = layer.get_base_layer().weight.detach().clone()
    shift = layer.mc_svdiff_spectral_shift["default"].detach()
    u, s, vh = torch.linalg.svd(weight_matrix(original.double()), full_matrices=False)
    expected = (u * torch.relu(s + shift.double())) @ vh
    model.merge_adapter()
    torch.testing.assert_close(
        layer.get_base_layer().weight.double(), expected.reshape(original.shape), atol=1e-5, rtol=1e-5
    )
    norm = model.base_model.model.down_blocks[0].resnets[0].norm1
    # a norm's scale is a 1 x C matrix: one singular value s = ||w||, so w' = w * relu(s + d) / s
    original_scale = norm._originals[0].double()
    shift = norm.mc_svdiff_norm_shift["default"].detach().double()
    assert shift.numel() == 1
    singular = original_scale.norm()
    expected_scale = original_scale * torch.relu(singular + shift) / singular
    torch.testing.assert_close(norm.get_base_layer().weight.double(), expected_scale, atol=1e-6, rtol=1e-6)


def test_difffit_merge_matches_the_gamma_formula():
    model = get_peft_model(build_sd15_unet(), DiffFitConfig(init_weights=False))
    layer = model.base_model.model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_out[0]
    base = layer.get_base_layer()
    weight, bias = base.weight.detach().clone(), base.bias.detach().clone()
    gain = layer.mc_difffit_gamma["default"] * layer.mc_difffit_residual_gamma["default"]
    expected_weight = gain[:, None] * weight
    expected_bias = gain * (bias + layer.mc_difffit_bias["default"])
    model.merge_adapter()
    torch.testing.assert_close(base.weight, expected_weight.detach())
    torch.testing.assert_close(base.bias, expected_bias.detach())


def test_svd_factors_are_never_saved(tmp_path):
    model = get_peft_model(build_sd15_unet(), SVDiffConfig())
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert keys and all(re.search(r"\.mc_svdiff_(spectral|norm)_shift$", key) for key in keys)
    assert not any(k for k in model.state_dict() if "base_layer" not in k and "mc_svdiff" not in k and "mc_" in k)


def test_param_groups_give_svdiff_norm_shifts_their_own_learning_rate():
    model = get_peft_model(build_sd15_unet(), SVDiffConfig(norm_learning_rate=2e-6))
    groups = pm.adapter_param_groups(model, learning_rate=1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 2e-6]
    norm_shifts = {id(p) for n, p in model.named_parameters() if "mc_svdiff_norm_shift" in n}
    assert {id(p) for p in groups[1]["params"]} == norm_shifts
    n_norms = sum(isinstance(m, (nn.GroupNorm, nn.LayerNorm)) for m in build_sd15_unet().modules())
    assert len(norm_shifts) == n_norms


def test_empty_strict_mask_is_refused():
    unet = build_sd15_unet()
    units = pm.slot_units(unet, SVDiffConfig(mask_semantics="strict"))
    with pytest.raises(ValueError, match="selects nothing"):
        get_peft_model(unet, SVDiffConfig(mask=dict.fromkeys(units, False), mask_semantics="strict"))


def test_bad_config_values():
    with pytest.raises(ValueError, match="granularity"):
        SVDiffConfig(granularity="tile")
    with pytest.raises(ValueError, match="mask_semantics"):
        SVDiffConfig(mask_semantics="loose")
    with pytest.raises(ValueError, match="Unknown method"):
        MemControlConfig(method="lora")
    with pytest.raises(ValueError, match="Unknown option"):
        MemControlConfig(method="svdiff", method_options={"rank": 4})


@pytest.mark.parametrize("shape", [(64, 20000), (20000, 64)])
def test_large_matrices_take_the_gram_path_and_match_lapack(shape):
    torch.manual_seed(0)
    weight = torch.randn(*shape) / 100
    assert weight.numel() >= SMALL_MATRIX
    u, s, vh = spectral_factors(weight)
    reference = torch.linalg.svd(weight.double(), full_matrices=False)
    torch.testing.assert_close(s.double(), reference.S, rtol=1e-5, atol=0)
    torch.testing.assert_close((u * s) @ vh, weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(u.T @ u, torch.eye(64), rtol=0, atol=1e-5)
    torch.testing.assert_close(vh @ vh.T, torch.eye(64), rtol=0, atol=1e-5)


def test_rank_deficient_large_matrix_falls_back_to_lapack():
    torch.manual_seed(0)
    weight = torch.randn(64, 4) @ torch.randn(4, 20000)  # rank 4
    u, s, vh = spectral_factors(weight)
    assert torch.isfinite(u).all() and torch.isfinite(vh).all()
    torch.testing.assert_close(vh @ vh.T, torch.eye(64), rtol=0, atol=1e-4)
    torch.testing.assert_close((u * s) @ vh, weight, rtol=0, atol=5e-4 * weight.abs().max().item())


def test_channels_last_input_trains(method):
    model = get_peft_model(build_sd15_unet(), CONFIGS[method](init_weights=False))
    model.train()
    inputs = sd15_inputs()
    inputs["sample"] = inputs["sample"].contiguous(memory_format=torch.channels_last)
    model(**inputs).sample.pow(2).mean().backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
