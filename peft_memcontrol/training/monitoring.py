"""Memorization monitoring during training: does the model start to regenerate its training images, and when?

Every ``every_n_steps`` optimizer steps (and once before the first), `MemorizationMonitor` generates one image per
at-risk prompt (the captions of the images most likely to be memorized: duplicated ones, or those the user names)
with the same seeds each time, so that a change between checks is the model's, not the noise's. A generation is a
copy when its best cosine similarity to a reference image (the at-risk training images) is above a calibrated copy
threshold (`peft_memcontrol.metrics.CopyCalibration`: set at a stated false-positive rate on images that were not
trained on, with its detection rate on near copies). Each check is logged to the trackers (copies, largest similarity,
the images to TensorBoard) and kept in the run's result; with ``stop_on_copy`` training stops at the first check that
finds a copy, and the trainer saves what it has (the run is then the last model before copies appeared plus
``every_n_steps`` steps at most).

A check costs one generation per prompt (``num_inference_steps`` denoising steps each) on every process (the same
images everywhere, so that every process stops at the same step).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..metrics import CopyCalibration, nearest_neighbours


logger = logging.getLogger(__name__)


@dataclass
class MemorizationCheck:
    """One check: the best similarity of each at-risk prompt's generation to the reference images.

    Attributes:
        step: the optimizer step the model had reached (0: before training).
        prompts: the at-risk prompts, in order.
        similarities: per prompt, the generation's best cosine similarity to a reference image.
        threshold: the copy threshold (a similarity strictly above it is a copy).
    """

    step: int
    prompts: list[str]
    similarities: list[float]
    threshold: float

    @property
    def copies(self) -> int:
        """Generations above the copy threshold."""
        return sum(similarity > self.threshold for similarity in self.similarities)

    def verdict(self) -> str:
        """The check in one sentence."""
        return (
            f"step {self.step}: {self.copies} of {len(self.prompts)} generations for the at-risk prompts are copies "
            f"of training images (cosine similarity > {self.threshold:.4f}; largest {max(self.similarities):.4f})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "copies": self.copies}


class MemorizationMonitor:
    """Checks for copies of training images every ``every_n_steps`` steps (see the module docstring).

    Args:
        prompts: the at-risk prompts (e.g. the captions of duplicated training images).
        reference_images: (N, 3, H, W) in [0, 1]: the training images a generation must not copy.
        calibration: the copy threshold and its error rates, calibrated in the feature space of ``embed``.
        embed: images (N, 3, H, W) in [0, 1] -> (N, d) features; the one the calibration used.
        every_n_steps: steps between checks.
        num_inference_steps: denoising steps of every check's generations.
        guidance_scale: classifier-free guidance scale of every check's generations.
        seed: of every check's generations (the same each time).
        stop_on_copy: stop training at the first check that finds a copy.
    """

    label = "Memorization check"

    def __init__(
        self,
        prompts: Sequence[str],
        reference_images: torch.Tensor,
        calibration: CopyCalibration,
        embed: Callable[[torch.Tensor], torch.Tensor],
        every_n_steps: int,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        seed: int = 0,
        stop_on_copy: bool = False,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}.")
        if not prompts:
            raise ValueError("Memorization monitoring needs at-risk prompts (e.g. captions of duplicated images).")
        if not calibration.detection_rate >= 0.5:  # also when not measured (NaN)
            logger.warning(
                "The monitor's %s A check that finds no copy is weak evidence unless the threshold finds at least half "
                "of the near copies of training images: calibrate it on held-out images in a feature space that sees "
                "copies at this image size (metrics.calibrate_copy_detection).",
                calibration.describe(),
            )
        self.prompts = list(prompts)
        self.calibration = calibration
        self.embed = embed
        self.reference_features = embed(reference_images)
        self.every_n_steps = every_n_steps
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.stop_on_copy = stop_on_copy
        self.history: list[MemorizationCheck] = []

    def due(self, step: int) -> bool:
        """Whether a check is due after optimizer step ``step`` (and at step 0, before training)."""
        return step % self.every_n_steps == 0

    def check(self, trainer: Any) -> MemorizationCheck:
        """Generate for the at-risk prompts with ``trainer``'s current model, score, log and keep the check."""
        pipeline = trainer.pipeline()
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        with trainer.inference_mode():
            images = (
                pipeline(
                    self.prompts,
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    generator=generator,
                    output_type="pt",
                )
                .images.float()
                .cpu()
            )
        features = self.embed(images)
        similarities = nearest_neighbours(features, self.reference_features).similarities
        check = MemorizationCheck(
            step=trainer.global_step,
            prompts=self.prompts,
            similarities=[float(value) for value in similarities],
            threshold=self.calibration.threshold,
        )
        self.history.append(check)
        trainer.accelerator.log(
            {"memorization/copies": check.copies, "memorization/max_similarity": max(check.similarities)},
            step=check.step,
        )
        for tracker in trainer.accelerator.trackers:
            if tracker.name == "tensorboard":
                pictures = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                tracker.writer.add_images(
                    "memorization", np.ascontiguousarray(pictures), check.step, dataformats="NHWC"
                )
        return check

    def should_stop(self, check: MemorizationCheck) -> bool:
        """Whether training stops after ``check``: ``stop_on_copy`` and a copy was found."""
        return self.stop_on_copy and check.copies > 0
