"""`EncodingCache`: the frozen encoders' outputs, kept across the trainings of a search.

Every candidate of a mask search trains on the same proxy set with the same seed, so it draws the same batches and
captions at every step, and the frozen VAE and text encoder turn them into the same posteriors and embeddings. A
worker keeps those outputs, keyed by the exact batch content (pixel bytes, captions, device and dtype), and every
later candidate reuses them: its training is bit-identical to encoding again, minus the encoders' time.

Valid only while the VAE and the text encoder stay frozen and unchanged, which the trainer guarantees (only the
UNet trains); one cache belongs to one set of encoders (the search keys it by its `ProxyDataSpec`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch


class EncodingCache:
    """Posterior moments of image batches and embeddings of caption batches, up to a memory budget.

    Every candidate of a search replays the same sequence of batches, so once the budget is full the cache keeps what
    it holds and stops adding (evicting would make a replayed sequence miss at every step): the first steps of each
    candidate then skip the encoders, the later ones encode as usual.

    Args:
        max_bytes: memory the kept tensors may take, on the device where they were computed (default 1 GiB).
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.num_bytes = 0
        self._entries: dict[tuple, Any] = {}
        self.hits = 0
        self.misses = 0

    def _get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key in self._entries:
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        value = compute()
        size = sum(
            tensor.numel() * tensor.element_size() for tensor in (value if isinstance(value, tuple) else (value,))
        )
        if self.num_bytes + size <= self.max_bytes:
            self._entries[key] = value
            self.num_bytes += size
        return value

    def posterior(
        self, pixel_values: torch.Tensor, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior (mean, std) of a pixel batch: kept from an earlier call on the same bytes, or ``compute()``."""
        values = pixel_values.detach().contiguous()
        digest = hashlib.sha256(values.cpu().view(torch.uint8).numpy()).hexdigest()
        return self._get(("images", tuple(values.shape), str(values.dtype), str(values.device), digest), compute)

    def prompts(self, captions: Sequence[str], context: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The embeddings of a caption batch (``context``: device and dtype), kept or ``compute()``."""
        return self._get(("prompts", tuple(captions), *context), compute)

    def __len__(self) -> int:
        return len(self._entries)
