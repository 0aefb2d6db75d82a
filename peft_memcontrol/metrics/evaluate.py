"""One call for the usual report on images already generated: each image is embedded once and the features feed FID,
KID, AMD, MiFID and replication. Scoring a whole model (generating, attacking, these metrics and the noise norm) is
`peft_memcontrol.evaluation.evaluate_model`, which calls this."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .amd import AMDResult, average_min_cosine_distance, mifid
from .calibration import CopyCalibration, calibrate_copy_detection
from .features import DEFAULT_FEATURE, FeatureSpec, as_features, extract_features, get_feature_extractor
from .fid import frechet_distance
from .images import ImageInput
from .kernel_distance import KIDResult, kernel_distance
from .paired import Direction
from .replication import ReplicationResult, replication_rate


class GenerationScores(NamedTuple):
    """FID and KID (lower = better quality; KID is the one meaningful on tens of images), AMD (lower = more
    memorization), MiFID, replication (higher = more), and the copy calibration replication and MiFID used."""

    fid: torch.Tensor
    kid: KIDResult
    mifid: torch.Tensor
    amd: AMDResult
    replication: ReplicationResult
    calibration: CopyCalibration


def evaluate_generations(
    generated_images: ImageInput,
    training_images: ImageInput,
    real_images: ImageInput | None = None,
    feature: FeatureSpec = DEFAULT_FEATURE,
    batch_size: int = 64,
    amd_direction: Direction = "generated_to_training",
    calibration: CopyCalibration | None = None,
    false_positive_rate: float = 0.01,
) -> GenerationScores:
    """Scores generations against the training set (AMD, replication) and real images (FID, KID, MiFID).

    Each of the three inputs is images, or the (N, d) features of images already embedded in ``feature``'s space
    (to embed a fixed training or test set once for several models).

    Replication's threshold and MiFID's tau come from ``calibration`` (its ``threshold`` and
    ``distance_threshold``). Without one, a threshold is calibrated here at ``false_positive_rate`` from the training
    and real images (`peft_memcontrol.metrics.calibrate_copy_detection`), which must then be images, the real ones
    held out (never trained on). No fixed constant is applied: each was set for another feature space.

    Args:
        generated_images: the model's generations.
        training_images: the images the model was fine-tuned on.
        real_images: held-out real images for FID (the paper's test images); the training images when ``None``.
        feature: the feature space shared by all four metrics.
        batch_size: images embedded at once.
        amd_direction: AMD direction (see `AverageMinCosineDistance`).
        calibration: the copy threshold (`calibrate_copy_detection`, or `fixed_copy_threshold` for parity runs in the
            feature space a paper's constant was set for).
        false_positive_rate: the target rate of the calibration made here when ``calibration`` is ``None``.
    """
    extractor = get_feature_extractor(feature)
    if calibration is None:
        calibration = _calibrate_here(training_images, real_images, extractor, batch_size, false_positive_rate)
    generated = as_features(generated_images, extractor, batch_size)
    training = as_features(training_images, extractor, batch_size)
    real = training if real_images is None else as_features(real_images, extractor, batch_size)
    fid = frechet_distance(real, generated)
    amd = average_min_cosine_distance(generated, training, direction=amd_direction)
    replication = replication_rate(generated, training, threshold=calibration.threshold)
    kid = kernel_distance(real, generated)
    return GenerationScores(
        fid, kid, mifid(fid, amd.amd, calibration.distance_threshold), amd, replication, calibration
    )


def _calibrate_here(
    training_images: ImageInput,
    real_images: ImageInput | None,
    extractor: torch.nn.Module,
    batch_size: int,
    false_positive_rate: float,
) -> CopyCalibration:
    """The calibration of `evaluate_generations` when none is passed, from training and held-out images."""
    for name, value in (("training_images", training_images), ("real_images", real_images)):
        if value is None or (isinstance(value, torch.Tensor) and value.dim() == 2):
            raise ValueError(
                f"No copy threshold: pass calibration= (peft_memcontrol.metrics.calibrate_copy_detection) or give "
                f"{name} as images (held-out real images for real_images) so that one is calibrated on your data."
            )
    return calibrate_copy_detection(
        training_images,
        real_images,
        lambda images: extract_features(images, extractor, batch_size=batch_size),
        false_positive_rate=false_positive_rate,
    )
