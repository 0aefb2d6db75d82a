"""Pareto fronts of minimized objectives: non-dominated filtering, hypervolume and its reference point, and picking
one mask from a front.

Hypervolume comes from ``moocore`` (what DEAP's own indicator uses); everything else is a few lines of numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import moocore
import numpy as np


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` Pareto-dominates ``b`` (all objectives minimized): no worse anywhere, better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_indices(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, in input order; of duplicate points only the first is kept."""
    values = np.asarray(points, dtype=float)
    if values.size == 0:
        return []
    if values.shape[1] == 2 and np.isfinite(values).all():
        return _non_dominated_2d(values)
    kept: list[int] = []
    for index, point in enumerate(values):
        no_better = np.all(values <= point, axis=1)
        strictly = np.any(values < point, axis=1)
        if np.any(no_better & strictly):
            continue
        if any(np.array_equal(values[other], point) for other in kept):
            continue
        kept.append(index)
    return kept


def _non_dominated_2d(values: np.ndarray) -> list[int]:
    """`non_dominated_indices` of finite two-objective points in O(n log n): sorted by the first objective (then the
    second, then the index), a point is non-dominated when its second objective beats every earlier point's."""
    order = np.lexsort((np.arange(len(values)), values[:, 1], values[:, 0]))
    second = values[order, 1]
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(second)[:-1]])
    return sorted(order[second < best_before].tolist())


def hypervolume(points: Sequence[Sequence[float]], reference_point: Sequence[float]) -> float:
    """The volume dominated by ``points`` and bounded by ``reference_point`` (minimization); 0 for no points.

    Points that do not strictly dominate the reference point add nothing and are dropped first.
    """
    ref = np.asarray(reference_point, dtype=float)
    values = np.asarray(points, dtype=float).reshape(-1, ref.shape[0])
    values = values[np.all(values < ref, axis=1)]
    if len(values) == 0:
        return 0.0
    return float(moocore.hypervolume(values, ref=ref))


def default_reference_point(points: Sequence[Sequence[float]]) -> list[float]:
    """A hypervolume reference point: the worst value of each objective plus 10% of its range (or of its magnitude
    when the range is 0)."""
    reference = []
    for column in zip(*points):
        low, high = min(column), max(column)
        span = high - low if high > low else max(abs(high), 1.0)
        reference.append(high + 0.1 * span)
    return reference


def _normalized(points: np.ndarray) -> np.ndarray:
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (points - low) / span


def knee_point(points: Sequence[Sequence[float]]) -> int:
    """Index of the knee of a front: the best trade-off, where improving one objective starts to cost much more.

    With two objectives (normalized to [0, 1] over the front) it is the point farthest from the line through the
    two extreme points on the side of the ideal point (every objective at its minimum over the front): the classic
    definition, with the distance signed so that a concave stretch, which bulges away from the ideal point, is never
    taken for the knee. When no point lies on the ideal side (a concave or straight front), and with more than two
    objectives, it is the point closest to the ideal point.
    """
    values = np.asarray(points, dtype=float)
    if len(values) == 0:
        raise ValueError("The front is empty.")
    normalized = _normalized(values)
    if len(values) > 2 and values.shape[1] == 2:
        first, last = normalized[np.argmin(normalized[:, 0])], normalized[np.argmin(normalized[:, 1])]
        direction = last - first
        length = np.linalg.norm(direction)
        if length > 0:
            offset = normalized - first
            # Positive on the ideal point's side: first = (0, 1) and last = (1, 0) after normalization.
            distance = (offset[:, 0] * direction[1] - offset[:, 1] * direction[0]) / length
            if distance.max() > 0:
                return int(np.argmax(distance))
    return int(np.argmin(np.linalg.norm(normalized, axis=1)))


def best_within(
    points: Sequence[Mapping[str, float]],
    minimize: str,
    bounds: Mapping[str, float],
) -> int | None:
    """Index of the point with the lowest ``minimize`` among those with every ``bounds`` objective <= its bound.

    The form of both "least memorization with quality within a bound" and "best quality with memorization within a
    bound". Returns ``None`` when no point meets the bounds. Ties go to the first point.
    """
    best: int | None = None
    for index, point in enumerate(points):
        if all(point[name] <= bound for name, bound in bounds.items()) and (
            best is None or point[minimize] < points[best][minimize]
        ):
            best = index
    return best
