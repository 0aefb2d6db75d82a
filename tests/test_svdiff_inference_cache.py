"""SVDiff's unmerged inference keeps the adapted weight; merges reuse the layer's factors; autocast (issue 17, item 4).

Forwards that need no gradient run each layer with its adapted weight, kept between calls until the shifts, scales,
active adapters or base weight change. The reference is the same model with the cache off on the ``"rebuild"`` route,
which forms the same weight and runs the same operation: outputs must be equal bit for bit after every kind of change
that a stale cache would miss.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn

from peft_memcontrol import SVDiffConfig
from peft_memcontrol.tuners import SVDiffLayer

from helpers.models import build_sd15_unet, run, sd15_inputs


def _svdiff_layers(model: nn.Module) -> list[SVDiffLayer]:
    return [module for module in model.modules() if isinstance(module, SVDiffLayer)]


def _uncached(model: nn.Module, inputs: dict, formulation: str = "rebuild") -> torch.Tensor:
    """``model``'s output with every layer computing its weight or change per call on ``formulation`` (the cache
    off); the caches are put back afterwards, so that a stale one would still show in the next cached call."""
    layers = _svdiff_layers(model)
    held = [(layer.formulation, layer._inference_cache) for layer in layers]
    for layer in layers:
        layer.inference_cache, layer.formulation = False, formulation
    output = run(model, inputs)
    for layer, (previous, cache) in zip(layers, held, strict=True):
        layer.inference_cache, layer.formulation, layer._inference_cache = True, previous, cache
    return output


def _assert_cached_output_is_current(model: nn.Module, inputs: dict) -> torch.Tensor:
    cached = run(model, inputs)
    assert all(layer._inference_cache is not None for layer in _svdiff_layers(model) if layer.active_adapters)
    assert torch.equal(cached, _uncached(model, inputs))
    return cached


def test_cached_outputs_follow_every_change():
    torch.manual_seed(0)
    model = get_peft_model(build_sd15_unet(), SVDiffConfig(init_weights=False), adapter_name="a")
    model.add_adapter("b", SVDiffConfig(init_weights=False))
    inputs = sd15_inputs()
    first = _assert_cached_output_is_current(model, inputs)
    # `auto` routes through the factors where tokens are few: the same function to float32 rounding
    torch.testing.assert_close(first, _uncached(model, inputs, "auto"), rtol=0, atol=1e-5)

    model.train()
    model(**inputs).sample.square().mean().backward()
    assert all(layer._inference_cache is None for layer in _svdiff_layers(model))  # a training forward frees it
    before_step = _assert_cached_output_is_current(model, inputs)
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()  # in place, between two cached calls
    after_step = _assert_cached_output_is_current(model, inputs)
    assert not torch.equal(after_step, before_step)

    model.base_model.set_adapter("b")
    assert not torch.equal(_assert_cached_output_is_current(model, inputs), after_step)
    model.base_model.model.set_adapters(["a", "b"], weights=[0.7, -0.4])
    _assert_cached_output_is_current(model, inputs)

    model.merge_adapter()
    merged = run(model, inputs)
    model.unmerge_adapter()
    torch.testing.assert_close(_assert_cached_output_is_current(model, inputs), merged, rtol=0, atol=1e-5)

    model.to(torch.float64)
    double = {name: value.double() if value.is_floating_point() else value for name, value in inputs.items()}
    assert _assert_cached_output_is_current(model, double).dtype == torch.float64

    model.base_model.delete_adapter("b")
    _assert_cached_output_is_current(model, double)


def test_repeated_inference_rebuilds_once_and_merging_decomposes_nothing(monkeypatch):
    model = get_peft_model(build_sd15_unet(), SVDiffConfig(init_weights=False))
    calls = {"rebuild": 0, "factorized": 0, "decompositions": 0}

    def counting(method, kind):
        def wrapper(*args, **kwargs):
            calls[kind] += 1
            return method(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(SVDiffLayer, "apply_adapter", counting(SVDiffLayer.apply_adapter, "rebuild"))
    for name in ("_spectral_forward", "_factorized_change"):
        monkeypatch.setattr(SVDiffLayer, name, counting(getattr(SVDiffLayer, name), "factorized"))
    for name in ("svd", "eigh"):
        monkeypatch.setattr(torch.linalg, name, counting(getattr(torch.linalg, name), "decompositions"))

    inputs = sd15_inputs()
    first = run(model, inputs)
    layers = len(_svdiff_layers(model))
    assert calls == {"rebuild": layers, "factorized": 0, "decompositions": 0}
    for _ in range(2):
        assert torch.equal(run(model, inputs), first)
    assert calls == {"rebuild": layers, "factorized": 0, "decompositions": 0}

    # merging reads the layer's own factors: the README's load-then-merge pays the decomposition once
    merged = model.merge_and_unload()
    assert calls["decompositions"] == 0
    torch.testing.assert_close(run(merged, inputs), first, rtol=0, atol=1e-5)


def test_compiled_inference_is_one_graph_without_the_cache():
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = SVDiffLayer(nn.Linear(16, 12), "default", SVDiffConfig(init_weights=False), frozenset({"spectral"}))
    graphs = []

    def backend(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        graphs.append(graph)
        return graph.forward

    compiled = torch.compile(layer, backend=backend, fullgraph=True)  # a graph break raises
    x, other = torch.randn(3, 16), torch.randn(3, 16)
    with torch.no_grad():
        outputs = compiled(x), compiled(other)
        assert len(graphs) == 1 and layer._inference_cache is None
        expected = layer(x), layer(other)  # eager: cached
    assert layer._inference_cache is not None
    for output, eager in zip(outputs, expected, strict=True):
        torch.testing.assert_close(output, eager, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weight_is_rebuilt_in_float32_under_autocast(dtype):
    torch.manual_seed(0)
    layer = SVDiffLayer(nn.Linear(64, 48), "default", SVDiffConfig(init_weights=False), frozenset({"spectral"}))
    expected = layer.adapted_parameters(["default"])[0]
    with torch.autocast("cpu", dtype=dtype):
        weight = layer.adapted_parameters(["default"])[0]
    assert weight.dtype == torch.float32 and torch.equal(weight, expected)
