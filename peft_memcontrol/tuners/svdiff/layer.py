from __future__ import annotations

import torch

from ...svd import spectral_factors
from ..base import MaskedTunerConfig, MaskedTunerLayer
from ..targets import NORM_LAYERS


class SVDiffLayer(MaskedTunerLayer):
    """Spectral shift of one ``Linear``/``Conv2d`` weight, or one scalar shift of a norm's scale vector."""

    adapter_layer_names = ("mc_svdiff_spectral_shift", "mc_svdiff_norm_shift")

    @property
    def is_norm(self) -> bool:
        return isinstance(self.get_base_layer(), NORM_LAYERS)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, s, Vh)`` of the original base weight, float32, shared with every adapter on this layer."""
        weight = self._originals[0] if self._originals is not None else self.get_base_layer().weight
        return spectral_factors(weight, as_row=self.is_norm)

    def create_components(self, adapter_name: str, config: MaskedTunerConfig, components: frozenset) -> None:
        base = self.get_base_layer()
        if self.is_norm:
            container, size = "mc_svdiff_norm_shift", 1
        else:
            container, size = "mc_svdiff_spectral_shift", min(base.weight.shape[0], base.weight[0].numel())
        shift = torch.zeros(size)
        if not config.init_weights and base.weight.device.type != "meta":
            shift = 0.2 * self.factors()[1].cpu() * torch.randn(size)
        self._new_parameter(container, adapter_name, shift)
        if base.weight.device.type != "meta":
            self.factors()  # decompose now, so that set-up cost and errors show up at injection

    def apply_adapter(
        self, adapter_name: str, weight: torch.Tensor, bias: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        container = self.mc_svdiff_norm_shift if self.is_norm else self.mc_svdiff_spectral_shift
        u, s, vh = self.factors()
        shifted = torch.relu(s + container[adapter_name]) - s
        delta = (u * (scale * shifted)) @ vh
        return weight + delta.reshape(weight.shape), bias
