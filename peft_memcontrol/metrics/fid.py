"""FID in any feature space, through torchmetrics' ``FrechetInceptionDistance``.

torchmetrics accumulates the feature sums and covariances (summed across processes) and computes the Fréchet
distance; this subclass only chooses the feature space, lets updates pass precomputed features so that one
embedding serves FID, AMD and replication, and clamps the result at 0: FID is a squared distance, and the tiny
negative values the matrix square root produces for identical sets are numerical noise. Lower is better.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from .features import DEFAULT_FEATURE, FeatureInput, FeatureSpec, PrecomputedFeatures, resolve_feature
from .images import ImageInput


class FrechetDistance(FeatureInput, FrechetInceptionDistance):
    """FID in a chosen feature space; ``update(x, real)`` takes images or precomputed (N, d) features.

    Args:
        feature: the feature space (default EfficientNet-Lite0; ``"inception"`` for the standard FID), or ``None``
            when updates pass features only (then ``num_features`` is required).
        num_features: the feature width, needed with ``feature=None`` or a callable without ``num_features``.
        batch_size: images embedded at once.
        reset_real_features: keep the real statistics across ``reset()`` when ``False`` (torchmetrics' option).
    """

    def __init__(
        self,
        feature: FeatureSpec | None = DEFAULT_FEATURE,
        num_features: int | None = None,
        batch_size: int = 64,
        reset_real_features: bool = True,
        **kwargs: Any,
    ) -> None:
        extractor, width = resolve_feature(feature, num_features)
        super().__init__(
            feature=PrecomputedFeatures(width), reset_real_features=reset_real_features, normalize=False, **kwargs
        )
        self.feature_extractor, self.num_features, self.batch_size = extractor, width, batch_size

    def update(self, images_or_features: ImageInput | torch.Tensor, real: bool) -> None:
        """Adds real (``real=True``) or generated images, or their (N, d) features, to the running statistics."""
        super().update(self.features(images_or_features).to(self.device), real=real)

    def compute(self) -> torch.Tensor:
        """The Fréchet distance, clamped at 0; needs at least two real and two generated samples."""
        return super().compute().clamp_min(0.0)


def frechet_distance(real_features: torch.Tensor, generated_features: torch.Tensor) -> torch.Tensor:
    """Function form of `FrechetDistance` on precomputed (N, d) features (N >= 2 in each set)."""
    metric = FrechetDistance(feature=None, num_features=real_features.shape[-1])
    metric.update(real_features, real=True)
    metric.update(generated_features, real=False)
    return metric.compute()
