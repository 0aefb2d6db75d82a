"""`FeatureBank`: a feature space that embeds each fixed image set once per process.

The reference sets of an evaluation (training images, held-out images, the memorized images) are the same for every
model and every search candidate; only the generations change. A bank remembers the features of every fixed set it
has embedded, keyed by the images' content, so a worker that scores many models embeds each set once.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from tqdm.auto import tqdm

from ..metrics.features import DEFAULT_FEATURE, FeatureExtractor, FeatureSpec, extract_features, get_feature_extractor


EMBEDDING_BATCH_SIZE = 64
"""Images embedded at once."""


class FeatureBank:
    """A feature extractor, and the features of the fixed image sets embedded with it so far.

    Args:
        extractor: the feature space (see `peft_memcontrol.metrics.get_feature_extractor`).
    """

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.extractor = extractor
        self._fixed: dict[tuple, torch.Tensor] = {}

    def embed(self, images: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """(N, d) features of images seen once, such as a model's generations; ``progress`` shows a bar."""
        # extract_features' own batches, one call each, so that the bar moves and the features stay the same
        with tqdm(total=len(images), desc="Embedding images", unit="image", disable=not progress) as bar:
            features = []
            for batch in images.split(EMBEDDING_BATCH_SIZE):
                features.append(extract_features(batch, self.extractor, batch_size=EMBEDDING_BATCH_SIZE))
                bar.update(len(batch))
        return torch.cat(features)

    def fixed(self, images: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """(N, d) features of a fixed image set: embedded on first use (``progress``: with a bar), then returned
        from the bank."""
        key = _content_key(images)
        if key not in self._fixed:
            self._fixed[key] = self.embed(images, progress)
        return self._fixed[key]


def _content_key(images: torch.Tensor) -> tuple:
    """Shape, dtype and a digest of the values: equal for equal images, whichever tensor holds them."""
    values = images.detach().cpu().contiguous()
    return tuple(values.shape), str(values.dtype), hashlib.sha256(values.view(torch.uint8).numpy()).hexdigest()


_BANKS: dict[tuple[Any, str], FeatureBank] = {}


def feature_bank(feature: FeatureSpec = DEFAULT_FEATURE, device: str | torch.device | None = None) -> FeatureBank:
    """This process's bank of ``feature`` on ``device`` (default: the CPU), built on first use and then kept."""
    key = (feature, str(torch.device(device or "cpu")))
    if key not in _BANKS:
        extractor = get_feature_extractor(feature)
        _BANKS[key] = FeatureBank(extractor if device is None else extractor.to(device))
    return _BANKS[key]
