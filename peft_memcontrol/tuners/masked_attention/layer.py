from __future__ import annotations

import torch

from ..base import MaskedTunerConfig, MaskedTunerLayer


class MaskedAttentionLayer(MaskedTunerLayer):
    """A full-size weight delta (and bias delta) of one layer: ``W' = W + dW``, ``b' = b + db``."""

    adapter_layer_names = ("mc_masked_attention_weight_delta", "mc_masked_attention_bias_delta")

    def create_components(self, adapter_name: str, config: MaskedTunerConfig, components: frozenset) -> None:
        base = self.get_base_layer()
        random = not config.init_weights
        shape = base.weight.shape
        self._new_parameter(
            "mc_masked_attention_weight_delta",
            adapter_name,
            0.02 * torch.randn(shape) if random else torch.zeros(shape),
        )
        if base.bias is not None:
            size = base.bias.shape
            self._new_parameter(
                "mc_masked_attention_bias_delta",
                adapter_name,
                0.02 * torch.randn(size) if random else torch.zeros(size),
            )

    def apply_adapter(
        self, adapter_name: str, weight: torch.Tensor, bias: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = weight + scale * self.mc_masked_attention_weight_delta[adapter_name]
        if adapter_name in self.mc_masked_attention_bias_delta:
            bias = bias + scale * self.mc_masked_attention_bias_delta[adapter_name]
        return weight, bias
