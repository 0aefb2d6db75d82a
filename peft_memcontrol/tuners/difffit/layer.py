from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base import MaskedTunerConfig, MaskedTunerLayer


class DiffFitLayer(MaskedTunerLayer):
    """Output scales (gamma, residual gamma), bias delta and norm deltas of one layer.

    For a layer computing ``y = W x + b``: ``y' = g * (W x + b + db)`` with ``g = gamma * residual_gamma``, which
    merges exactly as ``W <- g W``, ``b <- g (b + db)``. A norm layer gets ``w + dw`` and ``b + db``.

    A ``Linear`` or ``Conv2d`` applies the change to its output (``formulation = "output"``, the default): the frozen
    layer runs as it is and its output is shifted and scaled per channel, so no scaled copy of the weight is formed
    and kept for backward, and the gradient of ``g`` needs no weight-sized product (about the cost of the frozen layer
    instead of a full fine-tuning step's). ``"rebuild"`` forms the scaled weight instead; both give the same outputs
    and gradients to float32 rounding.
    """

    formulation: str = "output"

    adapter_layer_names = (
        "mc_difffit_gamma",
        "mc_difffit_residual_gamma",
        "mc_difffit_bias",
        "mc_difffit_norm_weight",
    )

    def create_components(self, adapter_name: str, config: MaskedTunerConfig, components: frozenset) -> None:
        base = self.get_base_layer()
        out_features = base.weight.shape[0]
        random = not config.init_weights
        for component, container in (("gamma", "mc_difffit_gamma"), ("residual_gamma", "mc_difffit_residual_gamma")):
            if component in components:
                value = torch.ones(out_features)
                self._new_parameter(
                    container, adapter_name, value + 0.1 * torch.randn(out_features) if random else value
                )
        if ("bias" in components or "norm" in components) and base.bias is not None:
            size = base.bias.shape[0]
            self._new_parameter(
                "mc_difffit_bias", adapter_name, 0.1 * torch.randn(size) if random else torch.zeros(size)
            )
        if "norm" in components:
            size = base.weight.shape[0]
            self._new_parameter(
                "mc_difffit_norm_weight", adapter_name, 0.1 * torch.randn(size) if random else torch.zeros(size)
            )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.get_base_layer()
        if self.formulation not in ("output", "rebuild"):
            raise ValueError(f"Unknown DiffFit formulation {self.formulation!r}; use 'output' or 'rebuild'.")
        linear_or_conv = isinstance(base, (nn.Linear, nn.Conv2d))
        if self.disable_adapters or self.merged or not linear_or_conv or self.formulation == "rebuild":
            return super().forward(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.mc_components]
        output = self.base_layer(x, *args, **kwargs)
        channels = (-1,) if isinstance(base, nn.Linear) else (-1, 1, 1)
        for name in active:  # in order, as `apply_adapter` composes them
            scale = self.mc_scale[name]
            if name in self.mc_difffit_bias:
                output = output + (scale * self.mc_difffit_bias[name]).to(output.dtype).reshape(channels)
            gain = self._gain(name, scale)
            if gain is not None:
                output = output * gain.to(output.dtype).reshape(channels)
        return output

    def _gain(self, adapter_name: str, scale: float) -> torch.Tensor | None:
        """The per-channel factor ``g = gamma * residual_gamma`` of ``adapter_name`` at ``scale`` (``None``: no
        scale vector on this layer); each vector's change from 1 is scaled."""
        gain = None
        for container in (self.mc_difffit_gamma, self.mc_difffit_residual_gamma):
            if adapter_name in container:
                factor = 1.0 + scale * (container[adapter_name] - 1.0)
                gain = factor if gain is None else gain * factor
        return gain

    def apply_adapter(
        self, adapter_name: str, weight: torch.Tensor, bias: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if adapter_name in self.mc_difffit_norm_weight:
            weight = weight + scale * self.mc_difffit_norm_weight[adapter_name]
        if adapter_name in self.mc_difffit_bias:
            bias = bias + scale * self.mc_difffit_bias[adapter_name]
        gain = self._gain(adapter_name, scale)
        if gain is not None:
            weight = weight * gain.reshape(-1, *([1] * (weight.dim() - 1)))
            bias = bias * gain if bias is not None else None
        return weight, bias
