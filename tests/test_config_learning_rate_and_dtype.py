"""`MemControlConfig.learning_rate` must be usable, and ``autocast_adapter_dtype=False`` is honoured (issue 12).

A NaN, infinite, zero, negative or string learning rate used to be accepted and written to ``adapter_config.json`` as
non-JSON ``NaN``/``Infinity``; ``autocast_adapter_dtype=False`` was silently ignored (adapters stayed float32).
"""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig
from peft_memcontrol.tuners import MaskedTunerLayer

from helpers.models import build_sd15_unet, sd15_inputs


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -1e-4, "1e-4", True, [1e-4]])
def test_unusable_learning_rates_are_refused(value):
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        MemControlConfig(learning_rate=value)


def test_hand_edited_learning_rate_is_refused_on_loading(tmp_path):
    get_peft_model(build_sd15_unet(), MemControlConfig(learning_rate=3e-3)).save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    assert config["learning_rate"] == 3e-3
    config["learning_rate"] = "3e-3"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        PeftModel.from_pretrained(build_sd15_unet(), tmp_path)


def test_integer_learning_rate_is_kept_as_a_float():
    config = MemControlConfig(learning_rate=1)
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)


def _adapter_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {
        parameter.dtype
        for module in model.modules()
        if isinstance(module, MaskedTunerLayer)
        for name in module.adapter_layer_names
        for parameter in getattr(module, name).values()
    }


CONFIGS = {
    "svdiff": SVDiffConfig,
    "difffit": DiffFitConfig,
    "masked_attention": MaskedAttentionConfig,
    "memcontrol": partial(MemControlConfig, method="difffit"),  # SVDiff's layer is covered by "svdiff"
}


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_autocast_adapter_dtype_false_keeps_adapters_in_the_base_dtype(method):
    unet = build_sd15_unet().to(torch.bfloat16)
    lifted = get_peft_model(unet, CONFIGS[method]())
    assert _adapter_dtypes(lifted) == {torch.float32}
    kept = get_peft_model(lifted.unload(), CONFIGS[method](init_weights=False), autocast_adapter_dtype=False)
    assert _adapter_dtypes(kept) == {torch.bfloat16}
    inputs = {
        name: value.to(torch.bfloat16) if value.is_floating_point() else value for name, value in sd15_inputs().items()
    }
    kept.train()
    kept(**inputs).sample.float().pow(2).mean().backward()
    gradients = [p.grad for p in kept.parameters() if p.requires_grad]
    assert gradients and all(
        g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in gradients
    )
