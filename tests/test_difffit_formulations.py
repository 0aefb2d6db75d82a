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

from helpers.formulations import assert_same_step, outputs_and_gradients
from helpers.models import build_sd15_unet, run, sd15_inputs


def _difffit() -> DiffFitConfig:
    return DiffFitConfig(init_weights=False)


@pytest.mark.parametrize("adapters", [("default",), ("a", "b")], ids=["one-adapter", "two-weighted"])
def test_output_route_matches_the_rebuilt_weight(adapters):
    expected = outputs_and_gradients(_difffit, DiffFitLayer, "rebuild", adapters)
    assert_same_step(outputs_and_gradients(_difffit, DiffFitLayer, "output", adapters), expected)


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
