"""Chunked nearest-neighbour search in cosine similarity, with bounded memory.

AMD and replication both need, for every query feature, its most similar reference feature. The naive way builds
the full (queries x references) similarity matrix: 10k generated x 100k training images is 4 GB in float32. Here
the matrix is built one (query_chunk x reference_chunk) block at a time and only a running maximum per query is
kept, so memory is O(query_chunk x reference_chunk + reference_chunk x d + M x d) for M queries, whatever the number
of references (see ``benchmarks/bench_nearest_neighbours.py``).

Rows are scaled to unit length in float64, one block at a time, then multiplied in float32. Float32 norms overflow
once features reach about 1e19, turning every similarity into 0 (an AMD of exactly 1), and underflow below about
1e-20, losing precision and then refusing valid features as all-zero.

Cosine distance here is ``1 - cos``, in [0, 2]: a feature and its negation are as far apart as possible. Kaggle's
MiFID and torchmetrics' ``MemorizationInformedFrechetInceptionDistance`` use ``1 - |cos|``, which counts a negated
feature as a copy; the two agree for non-negative features (post-ReLU pooled activations such as Inception's and
EfficientNet's), where cos >= 0, and differ only for signed features (CLIP, DINOv2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .features import check_features


class NearestNeighbours(NamedTuple):
    """For each query: the highest cosine similarity to any reference, and that reference's index."""

    similarities: torch.Tensor
    indices: torch.Tensor


def _normalize(features: torch.Tensor, name: str) -> torch.Tensor:
    """Scales rows to unit L2 norm, computed in float64 (see the module docstring), and returns them as float32.

    A zero row has no direction, so cosine similarity is undefined for it.
    """
    features = features.double()
    norms = features.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(f"{name} contain all-zero feature vectors, whose cosine similarity is undefined.")
    return (features / norms).float()


@torch.no_grad()
def nearest_neighbours(
    queries: torch.Tensor,
    references: torch.Tensor,
    query_chunk_size: int = 1024,
    reference_chunk_size: int = 8192,
) -> NearestNeighbours:
    """Finds, for each row of ``queries``, the row of ``references`` with the highest cosine similarity.

    Args:
        queries: (M, d) features.
        references: (N, d) features with the same width d.
        query_chunk_size: queries per block of the similarity matrix.
        reference_chunk_size: references per block. Peak extra memory is about
            ``4 * (M * d + query_chunk_size * reference_chunk_size) + 12 * reference_chunk_size * d`` bytes: the
            normalised queries, one similarity block, and one reference block while it is normalised in float64.

    Returns:
        `NearestNeighbours` with (M,) similarities in [-1, 1] and (M,) int64 indices into ``references``.
        Ties go to the lowest index.
    """
    queries = check_features(queries, "query features")
    references = check_features(references, "reference features").to(queries.device)
    if queries.shape[1] != references.shape[1]:
        raise ValueError(
            f"Feature widths differ: queries have {queries.shape[1]}, references {references.shape[1]}. "
            "Both sets must be embedded in the same feature space."
        )
    # Queries are normalised once, references one block at a time: each row is normalised once in all.
    normalized_queries = torch.empty_like(queries)
    for query_start in range(0, queries.shape[0], query_chunk_size):
        rows = slice(query_start, query_start + query_chunk_size)
        normalized_queries[rows] = _normalize(queries[rows], "query features")
    best_similarities = torch.full((queries.shape[0],), -float("inf"), device=queries.device)
    best_indices = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    for reference_start in range(0, references.shape[0], reference_chunk_size):
        reference_block = _normalize(
            references[reference_start : reference_start + reference_chunk_size], "reference features"
        )
        for query_start in range(0, queries.shape[0], query_chunk_size):
            rows = slice(query_start, query_start + query_chunk_size)
            values, indices = (normalized_queries[rows] @ reference_block.T).max(dim=1)
            better = values > best_similarities[rows]  # strict: an earlier reference block keeps ties
            best_similarities[rows] = torch.where(better, values, best_similarities[rows])
            best_indices[rows] = torch.where(better, indices + reference_start, best_indices[rows])
    return NearestNeighbours(best_similarities.clamp(-1.0, 1.0), best_indices)
