"""Chunked nearest-neighbour search in cosine similarity, with bounded memory.

AMD and replication both need, for every query feature, its most similar reference feature. The naive way builds
the full (queries x references) similarity matrix: 10k generated x 100k training images is 4 GB in float32. Here
the matrix is built one (query_chunk x reference_chunk) block at a time and only a running maximum per query is
kept, so memory is O(query_chunk x reference_chunk + N x d) whatever the set sizes (see
``benchmarks/bench_nearest_neighbours.py``).
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
    """Scales rows to unit L2 norm; a zero row has no direction, so cosine similarity is undefined for it."""
    norms = features.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(f"{name} contain all-zero feature vectors, whose cosine similarity is undefined.")
    return features / norms


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
        reference_chunk_size: references per block; peak extra memory is about
            ``4 * query_chunk_size * reference_chunk_size`` bytes.

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
    best_similarities = torch.empty(queries.shape[0], device=queries.device)
    best_indices = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    for query_start in range(0, queries.shape[0], query_chunk_size):
        query_block = _normalize(queries[query_start : query_start + query_chunk_size], "query features")
        block_best = torch.full((query_block.shape[0],), -float("inf"), device=queries.device)
        block_index = torch.zeros(query_block.shape[0], dtype=torch.long, device=queries.device)
        for reference_start in range(0, references.shape[0], reference_chunk_size):
            reference_block = _normalize(
                references[reference_start : reference_start + reference_chunk_size], "reference features"
            )
            values, indices = (query_block @ reference_block.T).max(dim=1)
            better = values > block_best  # strict: an earlier chunk keeps ties
            block_best = torch.where(better, values, block_best)
            block_index = torch.where(better, indices + reference_start, block_index)
        best_similarities[query_start : query_start + query_chunk_size] = block_best.clamp(-1.0, 1.0)
        best_indices[query_start : query_start + query_chunk_size] = block_index
    return NearestNeighbours(best_similarities, best_indices)
