"""The check that a checkpoint fits the adapter injected in a model, run by every load of this package's adapters.

The tuners run it while PEFT maps a checkpoint's keys to the model (``_remap_adapter_state_dict_for_load``), so that
``PeftModel.from_pretrained``, ``load_adapter`` and diffusers' loaders all refuse a checkpoint that would load a
silently wrong model.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import _filter_state_dict_by_key_prefixes, _get_tuner_state_dict_key_prefixes
from torch import nn


def _readable(key: str, adapter_name: str) -> str:
    key = key.removeprefix("base_model.model.")
    return key.replace(f".{adapter_name}", "") if key.endswith(f".{adapter_name}") else key


def check_adapter_state_dict(model: nn.Module, adapter_name: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint that does not fit the adapter injected in ``model``.

    Raises:
        ValueError: naming the layers that are missing on either side, the layers whose shapes differ (with both
            shapes), or the tensors that hold NaN or inf.
    """
    model_state = model.state_dict()
    expected = _filter_state_dict_by_key_prefixes(
        model_state, _get_tuner_state_dict_key_prefixes(model, adapter_name=adapter_name)
    )
    problems = []
    unexpected = [key for key in state_dict if key not in model_state]
    if unexpected:
        problems.append(
            "the adapter has weights for layers this model does not have: "
            + ", ".join(_readable(key, adapter_name) for key in unexpected[:8])
            + (f" (and {len(unexpected) - 8} more)" if len(unexpected) > 8 else "")
        )
    missing = [key for key in expected if key not in state_dict]
    if missing:
        problems.append(
            "the adapter lacks weights this model's adapter needs: "
            + ", ".join(_readable(key, adapter_name) for key in missing[:8])
            + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
        )
    for key, value in state_dict.items():
        if key in model_state and tuple(value.shape) != tuple(model_state[key].shape):
            problems.append(
                f"{_readable(key, adapter_name)} has shape {tuple(value.shape)} in the adapter but "
                f"{tuple(model_state[key].shape)} in this model"
            )
        elif value.is_floating_point() and not torch.isfinite(value).all():
            problems.append(f"{_readable(key, adapter_name)} holds NaN or inf values")
    if problems:
        raise ValueError(
            f"Cannot load adapter {adapter_name!r} into {type(model).__name__}: "
            + "; ".join(problems[:10])
            + ". Was it saved for another architecture or another mask? Load it onto the base model it was "
            "trained on (see base_model_name_or_path in its adapter_config.json)."
        )
