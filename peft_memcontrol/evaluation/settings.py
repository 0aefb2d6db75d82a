"""`EvaluationSettings`: how a model is scored (generation, feature space, extraction attack, noise norm)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..metrics import DEFAULT_FEATURE


@dataclass(frozen=True)
class EvaluationSettings:
    """How `evaluate_model` (and the search's objectives) generate and score.

    Attributes:
        num_generations: seeded generations per attacked (memorized) prompt; they feed the extraction attack, AMD,
            replication and MiFID's AMD (the reference code's attack used 50).
        num_inference_steps, guidance_scale: sampling of every generation.
        extraction_threshold: the attack's tiled-L2 threshold (RMS per tile, pixels in [0, 1]); set it per domain,
            above the VAE's own reconstruction error of the domain's images and below the distance between
            distinct images (see docs/demo.md, "How the setting was chosen").
        min_group_size: generations of one prompt that must lie within the threshold of each other to flag it.
        noise_norm_generations: starting noises per prompt of Wen et al.'s noise-norm score.
        feature: the feature space of FID, AMD, MiFID and replication (a name for
            `peft_memcontrol.metrics.get_feature_extractor`, or an extractor).
        feature_device: where images are embedded; ``None``: the CPU.
        seed: of every generation.
        generation_batch_size: images generated at once; ``None``: ``max(num_generations, 8)``, the demo's choice.
        image_size: height and width of the generations and of the noise-norm score's latents; ``None``: the
            pipeline's native size.
        num_fid_images: held-out prompts (the first ones) generated for FID; ``None``: all of them.
        false_positive_rate: target rate at which held-out images may be called copies; the copy threshold of
            replication, MiFID and duplicate detection is calibrated to it on the evaluation's own data.
    """

    num_generations: int = 4
    num_inference_steps: int = 10
    guidance_scale: float = 4.0
    extraction_threshold: float = 0.3
    min_group_size: int = 2
    noise_norm_generations: int = 2
    feature: Any = DEFAULT_FEATURE
    feature_device: str | torch.device | None = None
    seed: int = 0
    generation_batch_size: int | None = None
    image_size: int | None = None
    num_fid_images: int | None = None
    false_positive_rate: float = 0.01

    @property
    def batch_size(self) -> int:
        """Images generated at once (``generation_batch_size``, or ``max(num_generations, 8)``)."""
        return self.generation_batch_size or max(self.num_generations, 8)

    @property
    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of every pipeline call: steps, guidance and, when set, the image size."""
        sampling: dict[str, Any] = {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
        }
        if self.image_size is not None:
            sampling.update(height=self.image_size, width=self.image_size)
        return sampling
