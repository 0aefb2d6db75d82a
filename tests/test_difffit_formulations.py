"""DiffFit applied to a layer's output gives the outputs and gradients of the scaled weight (issue 17, item 2).

``"output"`` (the default) shifts and scales the frozen layer's output per channel; ``"rebuild"`` forms the scaled
weight, as before. The reference is the rebuild route, whose merge is exact (`tests/test_adapters.py`); the merged
model's output is checked too.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from peft_memcontrol import DiffFitConfig
from peft_memcontrol.tuners import DiffFitLayer

from helpers.models import build_sd15_unet, run, sd15_inputs


def _outputs_and_gradients(formulation: str, adapters: tuple[str, ...]) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(1)
    model = get_peft_model(build_sd15_unet(), DiffFitConfig(init_weights=False), adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, DiffFitConfig(init_weights=False))
    model.base_model.set_adapter(list(adapters))
    if len(adapters) > 1:
        model.base_model.model.set_adapters(list(adapters), weights=[0.7, -0.4])
    for module in model.modules():
        if isinstance(module, DiffFitLayer):
            module.formulation = formulation
    model.train()
    output = model(**sd15_inputs()).sample
    output.pow(2).mean().backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return output.detach(), gradients


@pytest.mark.parametrize("adapters", [("default",), ("a", "b")], ids=["one-adapter", "two-weighted"])
def test_output_route_matches_the_rebuilt_weight(adapters):
    expected_output, expected_gradients = _outputs_and_gradients("rebuild", adapters)
    output, gradients = _outputs_and_gradients("output", adapters)
    torch.testing.assert_close(output, expected_output, rtol=0, atol=1e-5)
    assert gradients.keys() == expected_gradients.keys() and gradients
    for name, gradient in gradients.items():
        scale = expected_gradients[name].abs().max().item()
        torch.testing.assert_close(gradient, expected_gradients[name], rtol=0, atol=1e-4 * scale + 1e-8, msg=name)


def test_merged_model_gives_the_output_route_result():
    torch.manual_seed(2)
    model = get_peft_model(build_sd15_unet(), DiffFitConfig(init_weights=False))
    inputs = sd15_inputs()
    expected = run(model, inputs)
    merged = model.merge_and_unload()
    torch.testing.assert_close(run(merged, inputs), expected, rtol=0, atol=1e-5)


def test_unknown_formulation_is_refused():
    model = get_peft_model(build_sd15_unet(), DiffFitConfig())
    layer = next(module for module in model.modules() if isinstance(module, DiffFitLayer))
    layer.formulation = "fast"
    with pytest.raises(ValueError, match="Unknown DiffFit formulation 'fast'"):
        run(model, sd15_inputs())
