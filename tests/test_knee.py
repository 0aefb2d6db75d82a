"""The knee of a front: the point farthest from the chord between the extremes on the ideal point's side, never a
point of a concave stretch above the chord; with no point on the ideal side, the point closest to the ideal."""

from __future__ import annotations

import itertools

import numpy as np

from peft_memcontrol.search import knee_point


def brute_force_knee(front):
    """Signed distance to the chord by the textbook formula, on fronts whose extremes are (0, 1) and (1, 0)."""
    distances = [(1.0 - x - y) / np.sqrt(2.0) for x, y in front]
    return int(np.argmax(distances)) if max(distances) > 0 else None


def test_the_issues_front_gives_the_real_knee_not_the_concave_bulge():
    front = [(0, 1), (0.1, 0.85), (0.6, 0.75), (0.7, 0.2), (1, 0)]
    assert front[knee_point(front)] == (0.7, 0.2)
    assert knee_point(front) == brute_force_knee(front)


def test_knee_does_not_depend_on_order_or_scale():
    front = [(0, 1), (0.1, 0.85), (0.6, 0.75), (0.7, 0.2), (1, 0)]
    for order in itertools.permutations(range(len(front))):
        permuted = [(10 * front[i][0], 0.01 * front[i][1] + 3) for i in order]  # normalization undoes the scale
        assert front[order[knee_point(permuted)]] == (0.7, 0.2)


def test_random_fronts_match_the_signed_distance():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = np.sort(rng.uniform(0.01, 0.99, 6))
        y = np.sort(rng.uniform(0.01, 0.99, 6))[::-1]
        front = [(0.0, 1.0), *zip(x, y), (1.0, 0.0)]
        expected = brute_force_knee(front)
        if expected is not None:
            assert knee_point(front) == expected


def test_a_front_with_no_point_below_the_chord_falls_back_to_the_point_closest_to_the_ideal():
    front = [(0.0, 1.0), (0.2, 0.95), (0.5, 0.8), (0.9, 0.3), (1.0, 0.0)]  # concave: every point above the chord
    assert brute_force_knee(front) is None
    closest = int(np.argmin([np.hypot(x, y) for x, y in front]))
    assert knee_point(front) == closest == 2
