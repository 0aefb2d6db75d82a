"""One call for the usual report on images already generated: each image is embedded once and the features feed FID,
AMD, MiFID and replication. Scoring a whole model (generating, attacking, these metrics and the noise norm) is
`peft_memcontrol.evaluation.evaluate_model`, which calls this."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .amd import AMDResult, average_min_cosine_distance, mifid
from .features import DEFAULT_FEATURE, FeatureSpec, as_features, get_feature_extractor
from .fid import frechet_distance
from .images import ImageInput
from .paired import Direction
from .replication import ReplicationResult, replication_rate


class GenerationScores(NamedTuple):
    """FID (lower = better quality), AMD (lower = more memorization), MiFID, and replication (higher = more)."""

    fid: torch.Tensor
    mifid: torch.Tensor
    amd: AMDResult
    replication: ReplicationResult


def evaluate_generations(
    generated_images: ImageInput,
    training_images: ImageInput,
    real_images: ImageInput | None = None,
    feature: FeatureSpec = DEFAULT_FEATURE,
    batch_size: int = 64,
    amd_direction: Direction = "generated_to_training",
    replication_threshold: float = 0.5,
    mifid_threshold: float = 0.1,
) -> GenerationScores:
    """Scores generations against the training set (AMD, replication) and real images (FID, MiFID).

    Each of the three inputs is images, or the (N, d) features of images already embedded in ``feature``'s space
    (to embed a fixed training or test set once for several models).

    Args:
        generated_images: the model's generations.
        training_images: the images the model was fine-tuned on.
        real_images: held-out real images for FID (the paper's test images); the training images when ``None``.
        feature: the feature space shared by all four metrics.
        batch_size: images embedded at once.
        amd_direction: AMD direction (see `AverageMinCosineDistance`).
        replication_threshold: best cosine similarity above which a generation counts as replicated.
        mifid_threshold: AMD below which MiFID divides FID by AMD.
    """
    extractor = get_feature_extractor(feature)
    generated = as_features(generated_images, extractor, batch_size)
    training = as_features(training_images, extractor, batch_size)
    real = training if real_images is None else as_features(real_images, extractor, batch_size)
    fid = frechet_distance(real, generated)
    amd = average_min_cosine_distance(generated, training, direction=amd_direction)
    replication = replication_rate(generated, training, threshold=replication_threshold)
    return GenerationScores(fid, mifid(fid, amd.amd, mifid_threshold), amd, replication)
