"""`generate`: the one loop that turns prompts into seeded generations, for the evaluation and the search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..metrics import prepare_images
from .settings import EvaluationSettings


@torch.no_grad()
def generate(
    pipeline: Any,
    prompts: Sequence[str],
    settings: EvaluationSettings,
    num_images_per_prompt: int = 1,
    seed: int | None = None,
    progress: tqdm | None = None,
) -> torch.Tensor:
    """Seeded generations for ``prompts``, ``settings.batch_size`` images per pipeline call, prompt by prompt.

    One ``torch.Generator`` seeded with ``seed`` (default ``settings.seed``) draws every starting noise in call
    order, so the batch boundaries are part of the result. With one image per prompt, a call takes
    ``settings.batch_size`` prompts; with several, a call takes one prompt and up to ``settings.batch_size`` of its
    images (diffusers' ``num_images_per_prompt``).

    Args:
        pipeline: a diffusers text-to-image pipeline.
        prompts: the prompts, in order.
        settings: batch size and sampling (steps, guidance, image size).
        num_images_per_prompt: generations of each prompt.
        seed: the generator's seed; ``None``: ``settings.seed``.
        progress: a progress bar counting images, advanced after every pipeline call (callers that generate in
            several calls share one bar); ``None``: none.

    Returns:
        ``(len(prompts) * num_images_per_prompt, 3, H, W)`` images in the library's convention, on the CPU.
    """
    batch_size = settings.batch_size
    if num_images_per_prompt == 1:
        calls = [(list(prompts[start : start + batch_size]), 1) for start in range(0, len(prompts), batch_size)]
    else:
        calls = [
            (prompt, min(batch_size, num_images_per_prompt - start))
            for prompt in prompts
            for start in range(0, num_images_per_prompt, batch_size)
        ]
    generator = torch.Generator(pipeline.device).manual_seed(settings.seed if seed is None else seed)
    images = []
    for prompt, count in calls:
        output = pipeline(
            prompt=prompt, num_images_per_prompt=count, generator=generator, output_type="pt", **settings.sampling
        )
        images.append(prepare_images(output.images).cpu())
        if progress is not None:
            progress.update(len(images[-1]))
    return torch.cat(images)
