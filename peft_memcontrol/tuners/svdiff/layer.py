from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...svd import SpectralFactors, spectral_factors
from ..base import MaskedTunerConfig, MaskedTunerLayer
from ..targets import NORM_LAYERS


class SVDiffLayer(MaskedTunerLayer):
    """Spectral shift of one ``Linear``/``Conv2d`` weight, or one scalar shift of a norm's scale vector.

    The layer owns the SVD of the weight it was created on (`spectral_factors`): every adapter on it shifts those
    singular values, whatever is merged into the base weight later, so that its change composes with other merges
    like a LoRA's does. The factors stay float32 and follow the layer's device through ``.to()``; they are not part of
    the state dict (they are recomputed from the base weight on loading) and are freed with the layer.
    """

    adapter_layer_names = ("mc_svdiff_spectral_shift", "mc_svdiff_norm_shift")
    _spectral: SpectralFactors | None = None

    @property
    def is_norm(self) -> bool:
        return isinstance(self.get_base_layer(), NORM_LAYERS)

    @property
    def spectral_factors(self) -> SpectralFactors:
        """``(U, s, Vh)`` of the base weight this layer was created on, float32, on the base weight's device."""
        device = self.get_base_layer().weight.device
        if self._spectral is None:
            weight = self._originals[0] if self._originals is not None else self.get_base_layer().weight
            self._spectral = spectral_factors(weight, as_row=self.is_norm)
        elif self._spectral.device != device:
            self._spectral = self._spectral.to(device)
        return self._spectral

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        # `.to()`, `.cuda()` and `.half()` reach modules through `_apply`; the factors follow the device only.
        super()._apply(fn, recurse)
        if self._spectral is not None:
            self._spectral = self._spectral.to(self.get_base_layer().weight.device)
        return self

    def create_components(self, adapter_name: str, config: MaskedTunerConfig, components: frozenset) -> None:
        base = self.get_base_layer()
        if self.is_norm:
            container, size = "mc_svdiff_norm_shift", 1
        else:
            container, size = "mc_svdiff_spectral_shift", min(base.weight.shape[0], base.weight[0].numel())
        shift = torch.zeros(size)
        if base.weight.device.type != "meta":
            singular_values = self.spectral_factors.s  # decompose now: set-up cost and errors show up at injection
            if not config.init_weights:
                shift = 0.2 * singular_values.cpu() * torch.randn(size)
        self._new_parameter(container, adapter_name, shift)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if not self.mc_components:
            self._spectral = None

    def apply_adapter(
        self, adapter_name: str, weight: torch.Tensor, bias: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        container = self.mc_svdiff_norm_shift if self.is_norm else self.mc_svdiff_spectral_shift
        u, s, vh = self.spectral_factors
        shifted = torch.relu(s + container[adapter_name]) - s
        delta = (u * (scale * shifted)) @ vh
        return weight + delta.reshape(weight.shape), bias


def spectral_factor_bytes(model: nn.Module) -> int:
    """Bytes of the SVD factors the SVDiff layers of ``model`` hold (each distinct set counted once).

    They are not parameters or buffers (never saved, never cast to half precision), so ``state_dict`` and parameter
    counts do not show them; on SD-1.5 they are larger than the UNet's float16 weights.
    """
    held = {
        id(module._spectral): module._spectral
        for module in model.modules()
        if isinstance(module, SVDiffLayer) and module._spectral is not None
    }
    return sum(factors.nbytes for factors in held.values())
