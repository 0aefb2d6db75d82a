"""Optimizer parameter groups for the adapters of this package."""

from __future__ import annotations

from torch import nn

from .tuners.svdiff import SVDiffLayer


def adapter_param_groups(model: nn.Module, learning_rate: float, weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups for ``model``'s trainable parameters.

    SVDiff's norm shifts train at their config's ``norm_learning_rate`` (1e-6 in the reference code); every other
    trainable parameter (other adapters, or the whole model under full fine-tuning) at ``learning_rate``.
    """
    configs = getattr(model, "peft_config", {}) or {}
    special: dict[int, float] = {}
    for module in model.modules():
        if isinstance(module, SVDiffLayer):
            for adapter, parameter in module.mc_svdiff_norm_shift.items():
                config = configs.get(adapter)
                options = getattr(config, "method_options", {}) or {}
                rate = options.get("norm_learning_rate", getattr(config, "norm_learning_rate", 1e-6))
                special[id(parameter)] = rate
    groups: dict[float, list[nn.Parameter]] = {}
    main: list[nn.Parameter] = []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if id(parameter) in special:
            groups.setdefault(special[id(parameter)], []).append(parameter)
        else:
            main.append(parameter)
    result = [{"params": main, "lr": learning_rate, "weight_decay": weight_decay}] if main else []
    result += [{"params": params, "lr": rate, "weight_decay": 0.0} for rate, params in sorted(groups.items())]
    return result
