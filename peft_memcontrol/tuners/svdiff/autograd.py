"""SVDiff's training step through the weight's factors, with a hand-written backward.

With ``W = U diag(s) Vh`` and the change of the singular values ``change``, a layer's adapted output is
``W x + bias + U (change * (Vh x))``. Autograd differentiates the three products one by one (6 matrix products per
token and weight-sized matrix in a step); these functions keep the frozen layer in the forward, so that outputs equal
the base layer's bit for bit where the change is zero, and compute the backward with two products: ``Q = U^T g``, the
gradient of ``change`` is ``sum over tokens of Q * (Vh x)`` and the gradient of ``x`` is ``Vh^T ((s + change) * Q)``
(``W^T g + Vh^T (change * Q)`` with ``W^T = Vh^T diag(s) U^T``): 5 products in all. The only activation kept for
backward is the projected input ``Vh x`` (rank x tokens), besides the resident weights and factors and two vectors of
rank values.

The functions assume that the factors describe ``weight`` (the caller checks it) and that nothing but ``x`` and
``change`` needs a gradient. They compute in the dtype of their inputs; the caller passes float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SpectralLinear(torch.autograd.Function):
    """``F.linear(x, weight + U diag(change) Vh, bias)`` for ``x`` of shape ``(..., in)``, without forming the
    adapted weight."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        u: torch.Tensor,
        s: torch.Tensor,
        change: torch.Tensor,
        vh: torch.Tensor,
    ) -> torch.Tensor:
        projected = F.linear(x, vh)
        ctx.save_for_backward(projected, u, s + change, vh)
        return F.linear(x, weight, bias) + F.linear(projected * change, u)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        projected, u, sigma, vh = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            back = F.linear(grad, u.T)
            grad_change = (back * projected).reshape(-1, sigma.shape[0]).sum(0) if ctx.needs_input_grad[5] else None
            grad_x = F.linear(back * sigma, vh.T) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None, grad_change, None


class SpectralConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight + U diag(change) Vh, bias, stride, padding, dilation)`` (zero padding, one group), the
    change as a convolution with the kernel ``Vh`` (rank output channels) followed by the 1x1 convolution ``U``."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        u: torch.Tensor,
        s: torch.Tensor,
        change: torch.Tensor,
        vh_kernel: torch.Tensor,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> torch.Tensor:
        projected = F.conv2d(x, vh_kernel, None, stride, padding, dilation)
        ctx.save_for_backward(projected, u, s + change, vh_kernel)
        ctx.geometry = (x.shape, stride, padding, dilation)
        base = F.conv2d(x, weight, bias, stride, padding, dilation)
        return base + F.conv2d(projected * change[:, None, None], u[:, :, None, None])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        projected, u, sigma, vh_kernel = ctx.saved_tensors
        input_shape, stride, padding, dilation = ctx.geometry
        with torch.autocast(grad.device.type, enabled=False):
            back = F.conv2d(grad, u.T[:, :, None, None])
            grad_change = (back * projected).sum((0, 2, 3)) if ctx.needs_input_grad[5] else None
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = torch.nn.grad.conv2d_input(
                    input_shape, vh_kernel, back * sigma[:, None, None], stride, padding, dilation
                )
        return grad_x, None, None, None, None, grad_change, None, None, None, None
