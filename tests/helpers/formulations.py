"""Run a tiny SD-1.5 UNet with one of a layer class's ``formulation`` routes and compare routes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft import PeftConfig, get_peft_model

from .models import build_sd15_unet, sd15_inputs


def outputs_and_gradients(
    config: Callable[[], PeftConfig], layer_class: type, formulation: str, adapters: tuple[str, ...]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and adapter gradients of one training step with ``adapters`` (random init) active, every
    ``layer_class`` layer on ``formulation``; two adapters are weighted 0.7 and -0.4 through ``set_adapters``."""
    torch.manual_seed(1)
    model = get_peft_model(build_sd15_unet(), config(), adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, config())
    model.base_model.set_adapter(list(adapters))
    if len(adapters) > 1:
        model.base_model.model.set_adapters(list(adapters), weights=[0.7, -0.4][: len(adapters)])
    for module in model.modules():
        if isinstance(module, layer_class):
            module.formulation = formulation
    model.train()
    output = model(**sd15_inputs()).sample
    output.pow(2).mean().backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return output.detach(), gradients


def assert_same_step(
    got: tuple[torch.Tensor, dict[str, torch.Tensor]], expected: tuple[torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    """Outputs within 1e-5, each gradient within 1e-4 of its largest value."""
    (output, gradients), (expected_output, expected_gradients) = got, expected
    torch.testing.assert_close(output, expected_output, rtol=0, atol=1e-5)
    assert gradients.keys() == expected_gradients.keys() and gradients
    for name, gradient in gradients.items():
        scale = expected_gradients[name].abs().max().item()
        torch.testing.assert_close(gradient, expected_gradients[name], rtol=0, atol=1e-4 * scale + 1e-8, msg=name)
