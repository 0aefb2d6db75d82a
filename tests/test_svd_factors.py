"""SVD factors belong to the layer and always describe the weight it was created on (issue 12, item 1).

Decompositions used to be cached by ``(id(weight), weight._version)``. Merges write through ``.data``, which keeps
both, so an SVDiff adapter created after a merge shifted the singular values of the weights as they were before it.
The reference here is independent of any cache: the factors a layer holds must reconstruct the base weight it
wraps, and an adapter created on a merged UNet must give the outputs of the same adapter on a plain UNet that loads the
merged state dict.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from peft_memcontrol import MemControlConfig, SpectralFactorPool, SVDiffConfig, spectral_factor_bytes, svd
from peft_memcontrol.svd import weight_key
from peft_memcontrol.tuners import SVDiffLayer

from helpers.models import build_sd15_unet, run, sd15_inputs


CONFIGS = {
    "svdiff": lambda: SVDiffConfig(init_weights=False),
    "memcontrol": lambda: MemControlConfig(method="svdiff", init_weights=False),
}


def _svdiff_layers(model: nn.Module) -> dict[str, SVDiffLayer]:
    return {path: module for path, module in model.named_modules() if isinstance(module, SVDiffLayer)}


def _assert_factors_describe_base_weights(model: nn.Module) -> None:
    """Every layer's ``U diag(s) Vh`` equals the weight under it (float64 product; float32 SVD accuracy)."""
    layers = _svdiff_layers(model)
    assert layers
    for path, layer in layers.items():
        weight = layer.get_base_layer().weight.detach()
        u, s, vh = layer.spectral_factors
        rebuilt = ((u.double() * s.double()) @ vh.double()).reshape(weight.shape)
        scale = weight.abs().max().item()
        torch.testing.assert_close(rebuilt, weight.double(), rtol=0, atol=1e-5 * scale, msg=path)


def _plain_copy(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    plain = build_sd15_unet()
    plain.load_state_dict(state_dict, strict=True)
    return plain


def _adapted_output(unet: nn.Module, config_name: str, inputs: dict) -> torch.Tensor:
    torch.manual_seed(7)
    model = get_peft_model(unet, CONFIGS[config_name]())
    _assert_factors_describe_base_weights(model)
    return run(model, inputs)


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_adapter_after_our_merge_and_unload_decomposes_the_merged_weights(config_name):
    inputs = sd15_inputs()
    torch.manual_seed(3)
    merged = get_peft_model(build_sd15_unet(), CONFIGS[config_name]()).merge_and_unload()
    merged_weights = {name: value.detach().clone() for name, value in merged.state_dict().items()}

    got = _adapted_output(merged, config_name, inputs)
    expected = _adapted_output(_plain_copy(merged_weights), config_name, inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_adapter_after_a_lora_merged_through_data_decomposes_the_merged_weights():
    inputs = sd15_inputs()
    unet = build_sd15_unet()
    get_peft_model(unet, SVDiffConfig()).unload()  # decomposes every weight of `unet`, then leaves it as it was
    torch.manual_seed(4)
    lora = LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"], init_lora_weights=False)
    merged = get_peft_model(unet, lora).merge_and_unload()  # PEFT's LoRA merge writes through `.data`
    merged_weights = {name: value.detach().clone() for name, value in merged.state_dict().items()}

    got = _adapted_output(merged, "svdiff", inputs)
    expected = _adapted_output(_plain_copy(merged_weights), "svdiff", inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_weight_key_changes_with_content_written_through_data():
    weight = nn.Parameter(torch.randn(8, 6))
    before = weight_key(weight)
    version = weight._version
    with torch.no_grad():
        weight.data[0, 0] += 1e-3
    assert weight._version == version  # the old key could not see this write
    assert weight_key(weight) != before
    assert weight_key(weight.detach().clone()) == weight_key(weight)
    assert weight_key(weight, as_row=True) != weight_key(weight)
    assert weight_key(weight.double()) != weight_key(weight)


def test_factors_are_freed_with_the_layer_unless_a_pool_holds_them():
    # weights no other test builds, so that no layer elsewhere in the process shares their factors (the first layer,
    # conv_in, is random; unit norms are shared by every fresh UNet)
    unet = build_sd15_unet(seed=31)
    model = get_peft_model(unet, SVDiffConfig())
    first_path = next(iter(_svdiff_layers(model)))
    assert first_path.endswith("conv_in")
    held = weakref.ref(_svdiff_layers(model)[first_path].spectral_factors)
    model.unload()
    del model
    gc.collect()
    assert held() is None

    pool = SpectralFactorPool()
    get_peft_model(build_sd15_unet(), SVDiffConfig())  # outside the pool's block: not held
    assert len(pool) == 0
    with pool:
        candidate = get_peft_model(unet, SVDiffConfig())
    first = {path: layer.spectral_factors for path, layer in _svdiff_layers(candidate).items()}
    unet = candidate.unload()
    del candidate
    gc.collect()
    assert len(pool) == len({id(factors) for factors in first.values()})  # equal weights (unit norms) share
    with pool:
        candidate = get_peft_model(unet, SVDiffConfig())
    second = _svdiff_layers(candidate)
    assert all(second[path].spectral_factors is factors for path, factors in first.items())  # decomposed once
    candidate.unload()

    held = weakref.ref(first[first_path])
    del first, second, candidate
    pool.clear()
    gc.collect()
    assert held() is None


def test_deleting_the_last_adapter_of_a_layer_frees_its_factors():
    model = get_peft_model(build_sd15_unet(), SVDiffConfig(), adapter_name="a")
    model.add_adapter("b", SVDiffConfig())
    layer = next(iter(_svdiff_layers(model).values()))
    model.delete_adapter("a")
    assert layer._spectral is not None
    model.delete_adapter("b")
    assert layer._spectral is None
    assert spectral_factor_bytes(model) == 0


def test_factor_bytes_counted_from_the_shapes():
    """Each distinct weight's factors once (layers with equal weights, such as fresh unit norms, share theirs)."""
    model = get_peft_model(build_sd15_unet(), SVDiffConfig())
    sizes = {}
    for layer in _svdiff_layers(model).values():
        weight = layer.get_base_layer().weight.detach()
        rows, columns = (1, weight.numel()) if layer.is_norm else (weight.shape[0], weight[0].numel())
        rank = min(rows, columns)
        sizes[(weight.numpy().tobytes(), tuple(weight.shape), layer.is_norm)] = 4 * (
            rows * rank + rank + rank * columns
        )
    assert spectral_factor_bytes(model) == sum(sizes.values())
    assert not any(name.endswith((".u", ".s", ".vh", "_spectral")) for name in model.state_dict())


def test_factors_stay_float32_when_the_model_is_cast():
    inputs = sd15_inputs()
    torch.manual_seed(7)
    model = get_peft_model(build_sd15_unet(), SVDiffConfig(init_weights=False))
    expected = run(model, inputs)
    model.to(torch.float64)
    for layer in _svdiff_layers(model).values():
        assert all(factor.dtype == torch.float32 for factor in layer.spectral_factors)
    model.to(torch.float32)
    torch.testing.assert_close(run(model, inputs), expected, rtol=0, atol=1e-6)


def _matrix_with_condition(rows: int, columns: int, condition: float, seed: int) -> torch.Tensor:
    """A float32 matrix whose singular values fall log-evenly from 1 to ``1 / condition``."""
    generator = torch.Generator().manual_seed(seed)
    rank = min(rows, columns)
    left, _ = torch.linalg.qr(torch.randn(rows, rank, dtype=torch.float64, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(columns, rank, dtype=torch.float64, generator=generator))
    singular_values = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), rank, dtype=torch.float64)
    return ((left * singular_values) @ right.T).float()


@pytest.mark.parametrize(
    "shape, condition",
    [((1024, 1024), 0.9), ((512, 2048), 0.9), ((1024, 1024), 10.0)],
    ids=["square", "wide", "square-beyond-the-limit"],
)
def test_fast_route_factors_are_orthonormal_up_to_the_condition_limit(shape, condition):
    """Large weights take the Gram-matrix route (float64 eigendecomposition, `svd.SMALL_MATRIX`), which loses
    orthogonality on ill-conditioned square weights when done in float32 (0.54 on 1280 x 1280, issue 17): at the
    largest condition number it accepts, its factors must still be orthonormal (to the 1e-3 that cached factors are
    held to, `svd._check_decomposition`; measured 2e-4 on the square case, the float64 bound eps * condition**2) and
    rebuild the weight; beyond it the route declines and the weight takes LAPACK's SVD."""
    matrix = _matrix_with_condition(*shape, condition * svd.CONDITION_LIMIT, seed=shape[1])
    assert matrix.numel() >= svd.SMALL_MATRIX
    found = svd._gram_svd(matrix)
    if condition > 1:
        assert found is None
        return
    u, s, vh = (factor.double() for factor in found)
    eye = torch.eye(min(shape), dtype=torch.float64)
    assert (u.T @ u - eye).abs().max() < 1e-3
    assert (vh @ vh.T - eye).abs().max() < 1e-3
    assert ((u * s) @ vh - matrix.double()).abs().max() < 1e-5
