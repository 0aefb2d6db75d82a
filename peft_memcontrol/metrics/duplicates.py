"""Duplicated images in a training set: the images a fine-tune is most likely to memorize.

Carlini et al. and Somepalli et al. found that the training images a diffusion model regenerates are mostly the
duplicated ones, and users rarely know which of their rows are duplicates (the same X-ray exported twice, a photo
with and without a crop). `find_duplicate_groups` finds them two ways and merges the result:

* **exact** duplicates: equal pixels (a content hash of the images as read, after resizing to one size);
* **near** duplicates: pairs whose cosine similarity in a feature space is above a copy threshold calibrated on the
  same data (`peft_memcontrol.metrics.calibrate_copy_detection`), so a pair is called a duplicate at the false-positive
  rate that threshold was measured to have.

Pairs are joined into groups (connected components): a group is a set of rows that show one image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .features import check_features
from .images import ImageInput, prepare_images


@dataclass
class DuplicateGroup:
    """Rows (indices into the image set) that show one image, largest groups first in `find_duplicate_groups`.

    Attributes:
        indices: the rows, ascending.
        exact: ``True`` when every row has the same pixels.
        min_similarity: the lowest cosine similarity of a linked pair in the group (1.0 for exact copies).
    """

    indices: list[int]
    exact: bool
    min_similarity: float

    @property
    def size(self) -> int:
        """Rows in the group."""
        return len(self.indices)


def _pixel_hash(image: torch.Tensor) -> str:
    return hashlib.sha256(image.mul(255).round().to(torch.uint8).contiguous().numpy().tobytes()).hexdigest()


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, node: int) -> int:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


@torch.no_grad()
def find_duplicate_groups(
    images: ImageInput,
    features: torch.Tensor | None = None,
    similarity_threshold: float | None = None,
    chunk_size: int = 1024,
) -> list[DuplicateGroup]:
    """Groups of rows that show the same image (see the module docstring), largest first; singletons are left out.

    Args:
        images: the training images, all of one size.
        features: their (N, d) features, for near duplicates; ``None``: exact duplicates only.
        similarity_threshold: cosine similarity above which two rows are near duplicates (a calibrated threshold).
        chunk_size: rows per block of the pairwise similarity search (memory ``chunk_size x N``).
    """
    pixels = prepare_images(images).cpu()
    count = pixels.shape[0]
    links = _UnionFind(count)
    hashes = [_pixel_hash(image) for image in pixels]
    first_by_hash: dict[str, int] = {}
    for index, digest in enumerate(hashes):
        links.union(first_by_hash.setdefault(digest, index), index)
    pair_similarity: dict[int, float] = {}
    if features is not None:
        if similarity_threshold is None:
            raise ValueError("Near duplicates need similarity_threshold (a calibrated copy threshold).")
        features = check_features(features, "features").double()
        if features.shape[0] != count:
            raise ValueError(f"Got {features.shape[0]} feature rows for {count} images.")
        unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-300)
        for start in range(0, count, chunk_size):
            similarities = unit[start : start + chunk_size] @ unit.T
            rows, columns = torch.nonzero(similarities > similarity_threshold, as_tuple=True)
            for row, column in zip((rows + start).tolist(), columns.tolist()):
                if row < column:
                    links.union(row, column)
                    similarity = float(similarities[row - start, column])
                    pair_similarity[row] = min(pair_similarity.get(row, 1.0), similarity)
                    pair_similarity[column] = min(pair_similarity.get(column, 1.0), similarity)
    members: dict[int, list[int]] = {}
    for index in range(count):
        members.setdefault(links.find(index), []).append(index)
    groups = []
    for indices in members.values():
        if len(indices) < 2:
            continue
        exact = len({hashes[i] for i in indices}) == 1
        similarity = 1.0 if exact else min(pair_similarity.get(i, 1.0) for i in indices)
        groups.append(DuplicateGroup(indices, exact, similarity))
    return sorted(groups, key=lambda group: (-group.size, group.indices[0]))
