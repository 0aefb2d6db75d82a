"""Shared base of the metrics that compare generated images with training images by nearest neighbours."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from .features import DEFAULT_FEATURE, FeatureSpec, as_features, get_feature_extractor
from .images import ImageInput
from .neighbours import NearestNeighbours, nearest_neighbours


Direction = Literal["generated_to_training", "training_to_generated"]
DIRECTIONS = ("generated_to_training", "training_to_generated")


def check_direction(direction: str) -> None:
    """Refuse a nearest-neighbour direction other than `DIRECTIONS` (a typo would otherwise pass until compute)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'.")


class PairedFeatureMetric(Metric):
    """Accumulates features of generated images and of training images, then searches nearest neighbours.

    ``update(x, real)`` follows torchmetrics' FID: ``real=True`` for training images, ``False`` for generations.
    ``x`` is images (embedded with ``feature``) or precomputed (N, d) features. Feature lists are concatenated
    across processes, so every process computes the same result; indices refer to the gathered order (rank 0's
    updates, then rank 1's, ...). A process may have no generated or no training features (fewer images than
    processes); processes that updated with features of different widths are refused at ``compute()``.

    Args:
        feature: the feature space (see `get_feature_extractor`), or
            ``None`` when updates pass features only.
        num_features: width of a user callable's features when it has no ``num_features`` attribute.
        batch_size: images embedded at once.
        reset_training_features: when ``False``, ``reset()`` keeps the training features, so a fixed training set
            is embedded once and reused across evaluations (as torchmetrics' ``reset_real_features``).
        query_chunk_size: queries per block of the chunked nearest-neighbour search.
        reference_chunk_size: training (or generated) features per block of that search.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        feature: FeatureSpec | None = DEFAULT_FEATURE,
        num_features: int | None = None,
        batch_size: int = 64,
        reset_training_features: bool = True,
        query_chunk_size: int = 1024,
        reference_chunk_size: int = 8192,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.feature_extractor = get_feature_extractor(feature, num_features) if feature is not None else None
        self.batch_size = batch_size
        self.reset_training_features = reset_training_features
        self.query_chunk_size = query_chunk_size
        self.reference_chunk_size = reference_chunk_size
        self.add_state("generated_features", default=[], dist_reduce_fx="cat")
        self.add_state("training_features", default=[], dist_reduce_fx="cat")

    def update(self, images_or_features: ImageInput | torch.Tensor, real: bool) -> None:
        """Adds training (``real=True``) or generated (``real=False``) images or (N, d) features."""
        features = as_features(images_or_features, self.feature_extractor, self.batch_size)
        features = features.to(device=self.device, dtype=self.dtype)
        for state in (self.generated_features, self.training_features):
            if isinstance(state, list) and state and state[0].shape[1] != features.shape[1]:
                raise ValueError(
                    f"Features of width {features.shape[1]} do not match earlier updates of width {state[0].shape[1]}."
                )
        (self.training_features if real else self.generated_features).append(features)

    def reset(self) -> None:
        """Resets the states, keeping the training features when ``reset_training_features`` is False."""
        kept = list(self.training_features) if not self.reset_training_features else None
        super().reset()
        if kept is not None:
            self.training_features = kept

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        """Gathers the feature lists across processes, after giving an empty list the shape (0, d).

        torchmetrics replaces an empty list state by a 1-D empty tensor, whose shape the other processes' (N, d)
        states cannot be gathered with (gloo aborts the process). The width d is agreed on first, so a process that
        saw no features at all still joins every gather with the same shape.
        """
        group = process_group or self.process_group
        states = (self.generated_features, self.training_features)
        local_width = max((features.shape[-1] for state in states for features in state), default=0)
        widths = {int(width) for width in dist_sync_fn(torch.tensor([local_width], device=self.device), group=group)}
        widths.discard(0)
        if len(widths) > 1:
            raise ValueError(
                f"Processes updated {type(self).__name__} with features of different widths {sorted(widths)}: every "
                "process must embed its images in the same feature space."
            )
        width = widths.pop() if widths else 0
        for name in ("generated_features", "training_features"):
            if not len(getattr(self, name)):
                setattr(self, name, [torch.empty(0, width, device=self.device, dtype=self.dtype)])
        super()._sync_dist(dist_sync_fn, process_group)

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (synchronised) generated and training feature matrices; raises if either set is empty."""
        if not len(self.generated_features) or not len(self.training_features):
            raise RuntimeError(
                f"{type(self).__name__} needs at least one generated and one training image: call "
                "update(x, real=False) and update(x, real=True) before compute()."
            )
        return dim_zero_cat(self.generated_features), dim_zero_cat(self.training_features)

    def _nearest(self, direction: Direction = "generated_to_training") -> NearestNeighbours:
        """Nearest neighbours of each generated feature among training features, or the reverse."""
        check_direction(direction)
        generated, training = self._gathered()
        queries, references = (generated, training) if direction == DIRECTIONS[0] else (training, generated)
        return nearest_neighbours(queries, references, self.query_chunk_size, self.reference_chunk_size)
