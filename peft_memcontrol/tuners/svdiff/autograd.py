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
``change`` needs a gradient. They compute in the dtype of ``x``; the caller passes float32. The weight and ``U``,
``Vh`` may be stored in half precision (a half-precision base, `SVDiffLayer.factor_dtype`): they are upcast for each
product, and only the stored tensors are kept for backward, so that a step holds no float32 copy of them. Rounded
factors no longer rebuild the weight to the computation's precision (3e-4 of it in float16), so the gradient of
``x`` then takes ``W^T g`` from the weight itself and only the change's term from the factors: the error stays
proportional to the change (one more product in the backward).
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
        projected = F.linear(x, vh.to(x.dtype))
        ctx.save_for_backward(projected, weight, u, s, change, vh)
        return F.linear(x, weight.to(x.dtype), bias) + F.linear(projected * change, u.to(x.dtype))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        projected, weight, u, s, change, vh = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            back = F.linear(grad, u.to(grad.dtype).T)
            grad_change = (back * projected).reshape(-1, s.shape[0]).sum(0) if ctx.needs_input_grad[5] else None
            grad_x = None
            if ctx.needs_input_grad[0] and u.dtype == grad.dtype:
                grad_x = F.linear(back * (s + change), vh.T)
            elif ctx.needs_input_grad[0]:
                grad_x = F.linear(grad, weight.to(grad.dtype).T) + F.linear(back * change, vh.to(grad.dtype).T)
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
        projected = F.conv2d(x, vh_kernel.to(x.dtype), None, stride, padding, dilation)
        ctx.save_for_backward(projected, weight, u, s, change, vh_kernel)
        ctx.geometry = (x.shape, stride, padding, dilation)
        base = F.conv2d(x, weight.to(x.dtype), bias, stride, padding, dilation)
        return base + F.conv2d(projected * change[:, None, None], u.to(x.dtype)[:, :, None, None])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        projected, weight, u, s, change, vh_kernel = ctx.saved_tensors
        input_shape, stride, padding, dilation = ctx.geometry
        with torch.autocast(grad.device.type, enabled=False):
            back = F.conv2d(grad, u.to(grad.dtype).T[:, :, None, None])
            grad_change = (back * projected).sum((0, 2, 3)) if ctx.needs_input_grad[5] else None
            grad_x = None
            if ctx.needs_input_grad[0] and u.dtype == grad.dtype:
                sigma = (s + change)[:, None, None]
                grad_x = torch.nn.grad.conv2d_input(input_shape, vh_kernel, back * sigma, stride, padding, dilation)
            elif ctx.needs_input_grad[0]:
                geometry = (stride, padding, dilation)
                frozen = torch.nn.grad.conv2d_input(input_shape, weight.to(grad.dtype), grad, *geometry)
                change_term = back * change[:, None, None]
                grad_x = frozen + torch.nn.grad.conv2d_input(
                    input_shape, vh_kernel.to(grad.dtype), change_term, *geometry
                )
        return grad_x, None, None, None, None, grad_change, None, None, None, None
