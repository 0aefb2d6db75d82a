from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
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

    The change ``U diag(relu(s + d) - s) Vh`` reaches the output by one of two exact routes (``formulation``):
    ``"rebuild"`` forms the adapted weight and runs the layer once (cost ``out x in x k`` per call, whatever the batch);
    ``"factorized"`` runs the frozen layer and adds ``((x Vh^T) * shift) U^T`` (cost ``tokens x k x (in + out)``, like
    a LoRA of rank k). ``"auto"`` (the default) takes the cheaper one for each call from the layer's shape and the
    number of tokens: the factorized route where tokens are few (low-resolution blocks, cross-attention K/V, the time
    embedding), rebuilding where they are many. Both give the same outputs and gradients to float32 rounding.
    """

    adapter_layer_names = ("mc_svdiff_spectral_shift", "mc_svdiff_norm_shift")
    formulation: str = "auto"
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

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged or self.is_norm:
            return super().forward(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.mc_components]
        if not active or not self._takes_factorized_route(x):
            return super().forward(x, *args, **kwargs)
        output = self.base_layer(x, *args, **kwargs)
        return output + self._factorized_change(x, active).to(output.dtype)

    def _takes_factorized_route(self, x: torch.Tensor) -> bool:
        """Whether ``formulation`` (or, for ``"auto"``, the cost model in the class docstring) picks the factorized
        route for input ``x``. Grouped or non-zero-padded convolutions always rebuild."""
        if self.formulation not in ("auto", "rebuild", "factorized"):
            raise ValueError(
                f"Unknown SVDiff formulation {self.formulation!r}; use 'auto', 'rebuild' or 'factorized'."
            )
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            return False
        if self.formulation != "auto":
            return self.formulation == "factorized"
        rows, columns = base.weight.shape[0], base.weight[0].numel()
        if isinstance(base, nn.Linear):
            tokens = x.numel() // max(x.shape[-1], 1)
        else:
            tokens = x.shape[0] * x.shape[-2] * x.shape[-1] // (base.stride[0] * base.stride[1])
        # factorized: tokens x k x (in + out); rebuild: out x in x k (the rank k cancels)
        return tokens * (rows + columns) < rows * columns

    def _factorized_change(self, x: torch.Tensor, active: list[str]) -> torch.Tensor:
        """``x`` through ``U diag(sum of the active adapters' scaled shifts) Vh`` (their changes add)."""
        u, s, vh = self.spectral_factors
        shift = sum(self._singular_value_change(self.mc_svdiff_spectral_shift, name, s) for name in active)
        base = self.get_base_layer()
        dtype = x.dtype if x.is_floating_point() else torch.float32
        u, vh, shift = u.to(dtype), vh.to(dtype), shift.to(dtype)
        if isinstance(base, nn.Linear):
            return F.linear(F.linear(x.to(dtype), vh) * shift, u)
        rank = s.shape[0]
        projected = F.conv2d(
            x.to(dtype), vh.reshape(rank, *base.weight.shape[1:]), None, base.stride, base.padding, base.dilation
        )
        return F.conv2d(projected * shift[:, None, None], u[:, :, None, None])

    def _singular_value_change(
        self, container: nn.ParameterDict, adapter_name: str, s: torch.Tensor, scale: float | None = None
    ) -> torch.Tensor:
        """``scale * (relu(s + d) - s)``: what ``adapter_name`` adds to each singular value (``scale`` defaults to the
        adapter's own)."""
        scale = self.mc_scale[adapter_name] if scale is None else scale
        return scale * (torch.relu(s + container[adapter_name]) - s)

    def apply_adapter(
        self, adapter_name: str, weight: torch.Tensor, bias: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        container = self.mc_svdiff_norm_shift if self.is_norm else self.mc_svdiff_spectral_shift
        u, s, vh = self.spectral_factors
        delta = (u * self._singular_value_change(container, adapter_name, s, scale)) @ vh
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
