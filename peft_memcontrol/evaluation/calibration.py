"""`calibrate_evaluation`: the thresholds of an evaluation, measured on its own data before any model is scored.

The copy threshold (replication, MiFID's tau, near-duplicate detection) comes from held-out images against the
training images and near copies of them (`peft_memcontrol.metrics.calibrate_copy_detection`); the extraction
attack's threshold is checked against the autoencoder's own reconstructions of the attacked images and the distance
between distinct images (`peft_memcontrol.metrics.calibrate_extraction_threshold`). Both depend on the data, the
feature space and the autoencoder only, so one calibration serves every model scored on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from ..latents import encode_latents
from ..metrics import (
    AttackCalibration,
    CopyCalibration,
    calibrate_copy_detection,
    calibrate_extraction_threshold,
    prepare_images,
)
from .data import EvaluationData
from .features import FeatureBank, feature_bank
from .settings import EvaluationSettings


@dataclass
class EvaluationCalibration:
    """The copy threshold and the extraction attack's calibration of one `EvaluationData`.

    ``image_size`` is the height and width of the images it was measured on: distances and embeddings depend on the
    size, so `peft_memcontrol.evaluation.evaluate_model` refuses a calibration made at another size than its
    generations'. ``None``: not recorded (not checked).
    """

    copy: CopyCalibration
    attack: AttackCalibration
    image_size: tuple[int, int] | None = None

    def describe(self) -> list[str]:
        """One line each, for reports."""
        return [self.copy.describe(), self.attack.describe()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the report lines of `describe` under ``"description"``."""
        return {"copy": self.copy.to_dict(), "attack": self.attack.to_dict(), "description": self.describe()}


@torch.no_grad()
def vae_reconstructions(
    pipeline: Any, images: torch.Tensor, batch_size: int = 16, progress: bool = False
) -> torch.Tensor:
    """``images`` ([0, 1], NCHW) encoded (posterior mean) and decoded by the pipeline's VAE, in [0, 1] on the CPU;
    ``progress`` shows a bar."""
    vae = pipeline.vae
    parameter = next(vae.parameters())
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    outputs = []
    bar = tqdm(total=len(images), desc="Calibrating: VAE reconstructions", unit="image", disable=not progress)
    for batch in prepare_images(images).split(batch_size):
        pixels = batch.mul(2).sub(1).to(parameter.device, parameter.dtype)
        latents = encode_latents(vae, pixels) / vae.config.scaling_factor + shift
        decoded = vae.decode(latents).sample
        outputs.append(decoded.float().add(1).div(2).clamp(0, 1).cpu())
        bar.update(len(batch))
    bar.close()
    return torch.cat(outputs)


def calibrate_evaluation(
    pipeline: Any,
    data: EvaluationData,
    settings: EvaluationSettings,
    features: FeatureBank | None = None,
    copy: CopyCalibration | None = None,
    progress: bool = False,
) -> EvaluationCalibration:
    """Calibrates the copy threshold and checks the attack's threshold on ``data`` (see the module docstring), at
    the size of its images: give them at the size the scored model generates.

    Args:
        pipeline: the pipeline whose autoencoder turns latents into images (adapters do not change it).
        data: the evaluation data; its held-out (test) images are the null distribution.
        settings: the feature space, target false-positive rate, attack threshold and seed.
        features: the feature bank to embed with (default: this process's bank of ``settings.feature``).
        copy: a copy calibration already made (e.g. to find duplicates before choosing what to attack); calibrated
            here when ``None``.
        progress: show progress bars (embedding, autoencoder reconstructions).
    """
    if copy is None:
        features = features or feature_bank(settings.feature, settings.feature_device)
        copy = calibrate_copy_detection(
            data.training.images,
            data.test.images,
            partial(features.fixed, progress=progress),
            false_positive_rate=settings.false_positive_rate,
            seed=settings.seed,
        )
    attacked = data.memorization.images
    attack = calibrate_extraction_threshold(
        attacked,
        vae_reconstructions(pipeline, attacked, progress=progress),
        data.test.images,
        settings.extraction_threshold,
    )
    return EvaluationCalibration(copy, attack, tuple(data.training.images.shape[-2:]))
