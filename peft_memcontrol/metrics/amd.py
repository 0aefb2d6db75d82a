"""AMD, the average minimum cosine distance, and MiFID, the FID penalised by it.

AMD (generated to training, the default direction) is, for each generated image g, the smallest cosine distance
1 - cos(f(g), f(t)) over training images t, averaged over g. Lower AMD means generations sit on top of training
images: more memorization. The reverse direction (each training image to its nearest generation) is what
torchmetrics' ``MemorizationInformedFrechetInceptionDistance`` uses; it answers "how many training images were
reproduced" rather than "how many generations are copies", and is offered as ``direction="training_to_generated"``.

MiFID (Bai et al. 2021) = FID / AMD when AMD < ``threshold`` (tau), else FID: lower is better, and memorization
(a small AMD) inflates it. Bai et al.'s tau = 0.1 (`INCEPTION_MIFID_THRESHOLD`) was set for Inception pool features
and is the default only there; in any other space pass a calibrated tau (`CopyCalibration.distance_threshold`).
When AMD is below `EXACT_COPY_DISTANCE` (float32 noise of a cosine: the generations are the training images), MiFID is
``inf``, fully penalized, rather than FID divided by rounding noise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torchmetrics import Metric

from .calibration import INCEPTION_MIFID_THRESHOLD
from .features import DEFAULT_FEATURE, FeatureSpec, as_features, resolve_feature
from .fid import FrechetDistance
from .images import ImageInput
from .paired import Direction, PairedFeatureMetric, check_direction


MIFID_EPSILON = 1e-15
#: AMD below which generations are exact copies (cosine distances of identical float32 features are about 1e-7).
EXACT_COPY_DISTANCE = 1e-5


class AMDResult(NamedTuple):
    """AMD and, per query image, its minimum cosine distance and the index of that nearest neighbour."""

    amd: torch.Tensor
    distances: torch.Tensor
    indices: torch.Tensor


class AverageMinCosineDistance(PairedFeatureMetric):
    """AMD as a torchmetrics ``Metric``; ``compute()`` returns an `AMDResult`.

    ``direction="generated_to_training"`` (default): queries are generations, indices point into the training set.
    ``direction="training_to_generated"``: queries are training images, indices point into the generations.
    Other arguments: see `PairedFeatureMetric`.
    """

    higher_is_better = True  # higher AMD = less memorization

    def __init__(self, direction: Direction = "generated_to_training", **kwargs: Any) -> None:
        check_direction(direction)
        super().__init__(**kwargs)
        self.direction = direction

    def compute(self) -> AMDResult:
        """Searches nearest neighbours in chunks and averages the minimum cosine distances."""
        similarities, indices = self._nearest(self.direction)
        distances = 1.0 - similarities
        return AMDResult(distances.mean(), distances, indices)


def average_min_cosine_distance(
    generated_features: torch.Tensor,
    training_features: torch.Tensor,
    direction: Direction = "generated_to_training",
    **kwargs: Any,
) -> AMDResult:
    """Function form of `AverageMinCosineDistance` on precomputed (N, d) features."""
    metric = AverageMinCosineDistance(direction=direction, feature=None, **kwargs)
    metric.update(generated_features, real=False)
    metric.update(training_features, real=True)
    return metric.compute()


def mifid(fid: torch.Tensor | float, amd: torch.Tensor | float, threshold: float) -> torch.Tensor:
    """MiFID = FID / AMD if AMD < ``threshold`` else FID (Bai et al. 2021; torchmetrics' thresholding and epsilon);
    ``inf`` when AMD < `EXACT_COPY_DISTANCE` (exact copies). ``threshold`` is tau in the AMD's feature space."""
    fid, amd = torch.as_tensor(fid, dtype=torch.float64), torch.as_tensor(amd, dtype=torch.float64)
    penalty = torch.where(amd < threshold, amd, torch.ones_like(amd))
    score = fid / (penalty + MIFID_EPSILON)
    return torch.where(amd < EXACT_COPY_DISTANCE, torch.full_like(score, float("inf")), score)


def default_mifid_threshold(feature: FeatureSpec | None) -> float:
    """Bai et al.'s tau for the Inception space; refuses every other space, where it means nothing."""
    if feature == "inception":
        return INCEPTION_MIFID_THRESHOLD
    raise ValueError(
        f"MiFID's tau = {INCEPTION_MIFID_THRESHOLD} was set for Inception pool features, not for feature space "
        f"{feature!r}. Pass threshold= a tau calibrated on your data: "
        "peft_memcontrol.metrics.calibrate_copy_detection(...).distance_threshold."
    )


class MemorizationInformedFID(Metric):
    """MiFID from one embedding per image: each update's features feed both FID and AMD.

    Args:
        feature: the feature space, as in the other metrics, or ``None`` when updates pass features only.
        num_features: the feature width, needed with ``feature=None`` or a callable without ``num_features``.
        batch_size: images embedded at once.
        threshold: AMD below which FID is divided by AMD (tau); default: 0.1 with ``feature="inception"``, required
            for every other feature space.
        direction: AMD direction (default generated to training; torchmetrics' MiFID uses the reverse).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        feature: FeatureSpec | None = DEFAULT_FEATURE,
        num_features: int | None = None,
        batch_size: int = 64,
        threshold: float | None = None,
        direction: Direction = "generated_to_training",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.feature_extractor, width = resolve_feature(feature, num_features)
        self.batch_size = batch_size
        self.threshold = default_mifid_threshold(feature) if threshold is None else threshold
        self.fid = FrechetDistance(feature=None, num_features=width, **kwargs)
        self.amd = AverageMinCosineDistance(direction=direction, feature=None, **kwargs)

    def update(self, images_or_features: ImageInput | torch.Tensor, real: bool) -> None:
        """Embeds once and updates both FID and AMD (``real=True`` for training/real images)."""
        features = as_features(images_or_features, self.feature_extractor, self.batch_size)
        self.fid.update(features, real=real)
        self.amd.update(features, real=real)

    def compute(self) -> torch.Tensor:
        """MiFID of everything seen so far."""
        return mifid(self.fid.compute(), self.amd.compute().amd, self.threshold)

    def reset(self) -> None:
        """Resets FID and AMD."""
        super().reset()
        self.fid.reset()
        self.amd.reset()
