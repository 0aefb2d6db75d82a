"""SVDiff's two exact routes give the same outputs and gradients (issue 17, item 1).

``"rebuild"`` forms ``W + U diag(shift) Vh`` and runs the layer; ``"factorized"`` runs the frozen layer and adds
``((x Vh^T) * shift) U^T``; ``"auto"`` picks per call. The reference for single layers is a float64 computation from
the layer's own factors; for the UNet it is the rebuild route, itself checked against float64 here.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn

from peft_memcontrol import SVDiffConfig
from peft_memcontrol.tuners import SVDiffLayer

from helpers.formulations import assert_same_step, outputs_and_gradients
from helpers.models import build_sd15_unet, run, sd15_inputs


FORMULATIONS = ("rebuild", "factorized", "auto")


def _layer(module: nn.Module, init_weights: bool = False) -> SVDiffLayer:
    return SVDiffLayer(module, "default", SVDiffConfig(init_weights=init_weights), frozenset({"spectral"}))


def _float64_reference(layer: SVDiffLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output computed in float64 from its factors and shift, with the adapted weight formed explicitly."""
    base = layer.get_base_layer()
    u, s, vh = (factor.double() for factor in layer.spectral_factors)
    shift = torch.relu(s + layer.mc_svdiff_spectral_shift["default"].double()) - s
    weight = base.weight.double() + ((u * shift) @ vh).reshape(base.weight.shape)
    bias = None if base.bias is None else base.bias.double()
    if isinstance(base, nn.Linear):
        return torch.nn.functional.linear(x.double(), weight, bias)
    return torch.nn.functional.conv2d(x.double(), weight, bias, base.stride, base.padding, base.dilation)


@pytest.mark.parametrize(
    ("module", "x_shape"),
    [
        (nn.Linear(48, 40), (2, 5, 48)),
        (nn.Linear(16, 96), (3, 16)),
        (nn.Conv2d(12, 20, 3, padding=1), (2, 12, 9, 9)),
        (nn.Conv2d(12, 20, 3, stride=2, padding=1), (2, 12, 9, 9)),
        (nn.Conv2d(8, 16, 1), (1, 8, 5, 7)),
    ],
    ids=["linear-tokens", "linear-wide", "conv3x3", "conv3x3-stride2", "conv1x1"],
)
@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_each_route_matches_float64(module, x_shape, formulation):
    torch.manual_seed(0)
    layer = _layer(module)
    layer.formulation = formulation
    x = torch.randn(*x_shape)
    expected = _float64_reference(layer, x)
    torch.testing.assert_close(layer(x).double(), expected, rtol=0, atol=1e-5)


def _svdiff() -> SVDiffConfig:
    return SVDiffConfig(init_weights=False)


@pytest.mark.parametrize("adapters", [("default",), ("a", "b")], ids=["one-adapter", "two-weighted"])
def test_unet_outputs_and_gradients_agree_across_routes(adapters):
    expected = outputs_and_gradients(_svdiff, SVDiffLayer, "rebuild", adapters)
    for formulation in ("factorized", "auto"):
        assert_same_step(outputs_and_gradients(_svdiff, SVDiffLayer, formulation, adapters), expected)


def test_auto_uses_both_routes_on_the_tiny_unet():
    model = get_peft_model(build_sd15_unet(), SVDiffConfig())
    routes = {"factorized": 0, "rebuild": 0}

    def record(layer, args, _output):
        routes["factorized" if layer._takes_factorized_route(args[0]) else "rebuild"] += 1

    hooks = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, SVDiffLayer) and not module.is_norm
    ]
    run(model, sd15_inputs())
    for hook in hooks:
        hook.remove()
    assert routes["factorized"] > 0 and routes["rebuild"] > 0


def test_unknown_formulation_is_refused():
    layer = _layer(nn.Linear(4, 4))
    layer.formulation = "fast"
    with pytest.raises(ValueError, match="Unknown SVDiff formulation 'fast'"):
        layer(torch.zeros(1, 4))
