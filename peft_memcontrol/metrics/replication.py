"""Replication rate (Somepalli et al. 2023): how many generations are near-copies of a training image.

For each generated image, the best cosine similarity to any training image in a feature space; the replication rate
is the share of generations whose best similarity exceeds ``threshold``, reported with the 95th percentile of the
best similarities. Higher = more memorization. The threshold has no default: the paper's 0.5
(`SSCD_REPLICATION_THRESHOLD`) holds for the SSCD copy-detection embedding only; in any other space calibrate one on
your data (`peft_memcontrol.metrics.calibrate_copy_detection`), which also says how often it errs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .paired import PairedFeatureMetric


class ReplicationResult(NamedTuple):
    """Replication rate, 95th percentile of best similarities, and per-generation similarity and training index."""

    rate: torch.Tensor
    percentile_95: torch.Tensor
    similarities: torch.Tensor
    indices: torch.Tensor


class ReplicationRate(PairedFeatureMetric):
    """Replication rate as a torchmetrics ``Metric``; ``compute()`` returns a `ReplicationResult`.

    Args:
        threshold: a generation counts as replicated when its best cosine similarity is strictly above it.
        **kwargs: the feature space and search options of `PairedFeatureMetric`.
    """

    higher_is_better = False  # a higher rate = more memorization

    def __init__(self, threshold: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def compute(self) -> ReplicationResult:
        """Best similarity of each generation to the training set, its share above threshold and its 95th pct."""
        similarities, indices = self._nearest("generated_to_training")
        rate = (similarities > self.threshold).float().mean()
        return ReplicationResult(rate, torch.quantile(similarities, 0.95), similarities, indices)


def replication_rate(
    generated_features: torch.Tensor, training_features: torch.Tensor, threshold: float, **kwargs: Any
) -> ReplicationResult:
    """Function form of `ReplicationRate` on precomputed (N, d) features."""
    metric = ReplicationRate(threshold=threshold, feature=None, **kwargs)
    metric.update(generated_features, real=False)
    metric.update(training_features, real=True)
    return metric.compute()
