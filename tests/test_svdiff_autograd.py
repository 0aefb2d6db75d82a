"""SVDiff's factorized route through `SpectralLinear`/`SpectralConv2d` (issue 17, item 1).

The functions compute ``W x + bias + U diag(change) Vh x`` with a hand-written backward that keeps only ``Vh x``. Checked
here: their gradients against finite differences (float64 ``gradcheck``); the layer's outputs and gradients against
the rebuild route (two adapters, scales, shifts that cross the relu); what autograd saves; the cost model's
thresholds; and the fallback to the autograd route where the factors may not describe the weight.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peft_memcontrol import SVDiffConfig
from peft_memcontrol.tuners import SVDiffLayer
from peft_memcontrol.tuners.svdiff.autograd import SpectralConv2d, SpectralLinear


def _factors(rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(torch.randn(rows, columns, dtype=torch.float64), full_matrices=False)
    return u, s, vh


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    u, s, vh = _factors(5, 7)
    weight = (u * s) @ vh
    change = (s * (torch.rand(5, dtype=torch.float64) - 0.5)).requires_grad_()
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, change: SpectralLinear.apply(x, weight, bias, u, s, change, vh), (x, change)
    )

    u, s, vh = _factors(4, 3 * 3 * 3)
    change = (s * (torch.rand(4, dtype=torch.float64) - 0.5)).requires_grad_()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    kernel = vh.reshape(4, 3, 3, 3)
    weight = ((u * s) @ vh).reshape(4, 3, 3, 3)
    for stride, padding, dilation in [((1, 1), (1, 1), (1, 1)), ((2, 2), (1, 0), (1, 1)), ((1, 2), (2, 2), (2, 1))]:
        assert torch.autograd.gradcheck(
            lambda x, change, geometry=(stride, padding, dilation): SpectralConv2d.apply(
                x, weight, bias[:4], u, s, change, kernel, *geometry
            ),
            (x, change),
        )


def _two_adapter_layer(module: nn.Module) -> SVDiffLayer:
    """``module`` with adapters "a" (scale 0.7) and "b" (scale -0.4), both active, whose shifts push some singular
    values below zero (clipped by the relu) and move the others."""
    torch.manual_seed(1)
    layer = SVDiffLayer(module, "a", SVDiffConfig(), frozenset({"spectral"}))
    layer.update_layer("b", SVDiffConfig(), frozenset({"spectral"}))
    layer.set_adapter(["a", "b"])
    layer.requires_grad_(False)
    s = layer.spectral_factors.s
    with torch.no_grad():
        for name in ("a", "b"):
            shift = layer.mc_svdiff_spectral_shift[name]
            shift.copy_(s * (3 * torch.rand_like(s) - 2))  # -2s..s: a third of the values cross zero
            shift.requires_grad_(True)
    layer.set_scale("a", 0.7)
    layer.set_scale("b", -0.4)
    return layer


def _step(layer: SVDiffLayer, x: torch.Tensor, formulation: str, saved: list) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and shift gradients of a fixed loss on ``formulation``; the tensors the layer's forward
    saves for backward are appended to ``saved``."""
    layer.formulation = formulation
    x = x.clone().requires_grad_(True)

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        output = layer(x)
    shifts = [layer.mc_svdiff_spectral_shift[name] for name in ("a", "b")]
    gradients = torch.autograd.grad(output.square().sum(), [x, *shifts])
    return output.detach(), *gradients


LAYERS = {
    "linear": (lambda: nn.Linear(24, 16), (3, 5, 24)),
    "linear-wide": (lambda: nn.Linear(8, 20), (4, 8)),
    "conv3x3-stride2": (lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1), (2, 6, 9, 8)),
    "conv1x1": (lambda: nn.Conv2d(8, 12, 1, bias=False), (1, 8, 5, 7)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_outputs_gradients_and_saved_tensors_match_the_rebuild_route(name):
    build, x_shape = LAYERS[name]
    layer = _two_adapter_layer(build())
    assert layer._spectral_route_applies()
    x = torch.randn(*x_shape)
    expected = _step(layer, x, "rebuild", [])

    saved: list[torch.Tensor] = []
    got = _step(layer, x, "factorized", saved)
    for value, reference in zip(got, expected, strict=True):
        scale = reference.abs().max().item()
        torch.testing.assert_close(value, reference, rtol=0, atol=2e-6 * scale)

    # autograd keeps the projected input (rank x tokens) and rank-sized vectors, besides the resident factors
    resident = {tensor.untyped_storage().data_ptr() for tensor in (*layer.parameters(), *layer.spectral_factors)}
    kept = [t for t in saved if t.untyped_storage().data_ptr() not in resident]
    rank = layer.spectral_factors.s.shape[0]
    projected = [t for t in kept if t.dim() > 1]
    out_features = layer.get_base_layer().weight.shape[0]
    assert len(projected) == 1 and projected[0].numel() == got[0].numel() // out_features * rank
    assert all(t.shape == (rank,) for t in kept if t.dim() <= 1)


def test_cost_model_thresholds():
    """On a 1280 x 1280 Linear a training step costs ``5 T n^2`` factorized against ``2 n^3 + 3 T n^2`` rebuilt
    (T < n = 1280 tokens favour the factors); a forward alone ``3 T n^2`` against ``n^3 + T n^2`` (T < n / 2); the
    autograd fallback ``6 T n^2`` (T < 2n / 3, 853 tokens)."""
    layer = SVDiffLayer(
        nn.Linear(1280, 1280).requires_grad_(False), "default", SVDiffConfig(), frozenset({"spectral"})
    )
    assert layer._takes_factorized_route(torch.zeros(1, 1279, 1280))
    assert not layer._takes_factorized_route(torch.zeros(1, 1280, 1280))
    with torch.no_grad():
        assert layer._takes_factorized_route(torch.zeros(639, 1280))
        assert not layer._takes_factorized_route(torch.zeros(640, 1280))
    layer.base_layer.weight.requires_grad_(True)
    assert layer._takes_factorized_route(torch.zeros(853, 1280))
    assert not layer._takes_factorized_route(torch.zeros(854, 1280))


def _rebuild_reference(layer: SVDiffLayer, x: torch.Tensor) -> torch.Tensor:
    layer.formulation = "rebuild"
    with torch.no_grad():
        return layer(x)


def test_falls_back_to_autograd_where_the_factors_may_not_describe_the_weight():
    layer = _two_adapter_layer(nn.Linear(24, 16))
    x = torch.randn(4, 24)

    layer.base_layer.weight.requires_grad_(True)  # a trained base weight needs its gradient
    assert not layer._spectral_route_applies()
    layer.formulation = "factorized"
    layer(x).square().sum().backward()
    assert layer.base_layer.weight.grad is not None and layer.base_layer.weight.grad.abs().sum() > 0
    layer.base_layer.weight.requires_grad_(False)
    assert layer._spectral_route_applies()

    with torch.no_grad():
        layer.base_layer.weight.mul_(2.0)  # written in place: its version counter moves
    assert not layer._spectral_route_applies()
    layer.formulation = "factorized"
    torch.testing.assert_close(layer(x), _rebuild_reference(layer, x), rtol=0, atol=1e-5)

    for change in (
        lambda layer: layer.load_state_dict({**layer.state_dict(), "base_layer.weight": torch.randn(16, 24)}),
        lambda layer: layer.merge(adapter_names=["a_lora_wrapping_this_layer"]),
    ):
        layer = _two_adapter_layer(nn.Linear(24, 16))
        change(layer)
        assert not layer._spectral_route_applies()
        layer.formulation = "factorized"
        torch.testing.assert_close(layer(x), _rebuild_reference(layer, x), rtol=0, atol=1e-5)


def test_autocast_computes_in_float32_and_returns_the_autocast_dtype():
    layer = _two_adapter_layer(nn.Linear(24, 16))
    x = torch.randn(4, 24)
    expected = _rebuild_reference(layer, x)
    layer.formulation = "factorized"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = layer(x)
    assert output.dtype == torch.bfloat16
    # float32 matmuls: only the final rounding to bfloat16 (2^-8 relative) separates the two
    torch.testing.assert_close(output.float(), expected, rtol=2**-8, atol=1e-6)
