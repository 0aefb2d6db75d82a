"""The one image convention of ``peft_memcontrol.metrics``, applied in one place.

Every metric that takes images calls `prepare_images` first, so all of them accept the same inputs and
agree on what a pixel value means:

* the result is a ``float32`` tensor of shape ``(N, 3, H, W)`` (NCHW, RGB) with values in ``[0, 1]``;
* ``torch.Tensor`` inputs are NCHW, or CHW for a single image; ``numpy`` arrays are NHWC, or HWC for a single
  image (what ``pipeline(..., output_type="np")`` returns); a ``PIL.Image`` or a list of images is stacked;
* ``uint8`` values are divided by 255; other integer and boolean types are refused;
* a single channel (grayscale) is repeated to three channels; any other channel count other than 3 is refused;
* float values must lie in ``[0, 1]``: images in ``[-1, 1]`` (the VAE's range) or ``[0, 255]`` (pixel values stored
  as float) are refused with a hint, because silently rescaling them would change every distance;
* empty batches, empty images and non-finite values (NaN, inf) are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


ImageInput = torch.Tensor | np.ndarray | Sequence[Any]  # or one PIL image

_RANGE_TOLERANCE = 1e-4


def _to_tensor(images: ImageInput) -> torch.Tensor:
    """Turns a tensor, an array, a PIL image or a list of them into one NCHW tensor (no value conversion)."""
    if isinstance(images, torch.Tensor):
        return images.unsqueeze(0) if images.dim() == 3 else images
    if isinstance(images, np.ndarray):
        array = images[None] if images.ndim == 3 else images
        if array.ndim == 3:  # a single grayscale HW image has no channel axis
            array = array[..., None]
        if array.ndim != 4:
            raise ValueError(f"numpy images must be NHWC or HWC, got shape {images.shape}.")
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("Got an empty list of images; at least one image is needed.")
        parts = [_to_tensor(image) for image in images]
        shapes = {tuple(part.shape[1:]) for part in parts}
        if len(shapes) > 1:
            raise ValueError(f"All images in a list must have the same channels and size, got {sorted(shapes)}.")
        return torch.cat(parts)
    if hasattr(images, "convert") and hasattr(images, "size"):  # a PIL image, without importing PIL
        array = np.asarray(images)
        return _to_tensor(array if array.ndim == 3 else array[..., None])
    raise TypeError(f"Cannot read images of type {type(images).__name__}; pass a tensor, an array or PIL images.")


def prepare_images(images: ImageInput) -> torch.Tensor:
    """Converts images to the library's convention: float32, NCHW, RGB, values in [0, 1].

    See the module docstring for the accepted inputs and the conversions made. The result stays on the device of a
    tensor input.
    """
    tensor = _to_tensor(images)
    if tensor.dim() != 4:
        raise ValueError(f"Images must be NCHW (or CHW for one image), got shape {tuple(tensor.shape)}.")
    if tensor.shape[0] == 0:
        raise ValueError("Got an empty batch of images; at least one image is needed.")
    if tensor.shape[2] == 0 or tensor.shape[3] == 0:
        raise ValueError(f"Images have an empty spatial size: {tuple(tensor.shape)}.")
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    elif tensor.shape[1] != 3:
        raise ValueError(
            f"Images must have 1 (grayscale) or 3 (RGB) channels in dimension 1 (NCHW), got {tensor.shape[1]}. "
            "Drop an alpha channel first; channels-last tensors must be permuted to NCHW."
        )
    if tensor.dtype == torch.uint8:
        return tensor.float().div(255.0).contiguous()
    if not tensor.is_floating_point():
        raise TypeError(f"Images must be uint8 in [0, 255] or float in [0, 1], got dtype {tensor.dtype}.")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ValueError("Images contain NaN or infinite values.")
    low, high = tensor.min().item(), tensor.max().item()
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"Float images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}].{_range_hint(low, high)}"
        )
    return tensor.clamp(0.0, 1.0).contiguous()


def _range_hint(low: float, high: float) -> str:
    """Names the common range that out-of-range float images look like, and how to bring them to [0, 1]."""
    if low >= -1 - _RANGE_TOLERANCE and high <= 1 + _RANGE_TOLERANCE:
        return " They look like [-1, 1] images: pass (images + 1) / 2."
    if low >= -_RANGE_TOLERANCE and high <= 255 + _RANGE_TOLERANCE:
        return " They look like [0, 255] pixel values stored as float: divide by 255 (pass images / 255)."
    return ""
