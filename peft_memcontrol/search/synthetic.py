"""A closed-form stand-in for the inner loop: a mask problem with a known Pareto front, for tests, benchmarks and
trying the tool without training anything.

Each unit has a memorization cost ``w_i`` and a quality gain ``v_i``, and pairs of units interact, so switching units
on trades memorization against quality as a real mask does, with a front that is not simply "the k cheapest units".
With ``num_bits`` small enough (10: 1,024 masks) the true front is found by enumeration.

Objectives (both minimized, both in [0, 1] without noise): ``memorization = w.x / sum(w)`` and
``quality = 1 - (v.x + x^T A x / 2) / norm`` plus, with a learning-rate gene, a quadratic penalty for missing
``learning_rate_optimum``. Multi-fidelity: at budget ``b < 1`` each objective is off by ``noise * (1 - b) * u``
with ``u`` in [-1, 1] fixed per genome, the way short trainings give biased, rank-correlated scores.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from .genome import Candidate


class SyntheticMaskProblem:
    """A picklable evaluator ``problem(candidate, budget) -> {"memorization": m, "quality": q}``.

    Args:
        num_bits: units of the genome it expects.
        seed: draws the costs, gains and interactions.
        noise: size of the low-budget error (0: every budget gives the exact values).
        delay: seconds of sleep per unit of budget (to stand in for training time, e.g. in kill-and-resume tests).
        learning_rate_optimum: the learning rate without penalty (used when the genome has a learning-rate gene).
        failures: bit string (e.g. ``"1111111111"``) -> ``"raise"`` or ``"nan"``: candidates that fail on purpose.
    """

    objectives = ("memorization", "quality")

    def __init__(
        self,
        num_bits: int = 10,
        seed: int = 0,
        noise: float = 0.0,
        delay: float = 0.0,
        learning_rate_optimum: float = 1e-4,
        failures: Mapping[str, str] | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.num_bits = num_bits
        self.cost = rng.uniform(0.2, 1.0, num_bits)
        self.gain = rng.uniform(0.2, 1.0, num_bits)
        interactions = rng.uniform(-0.3, 0.3, (num_bits, num_bits))
        self.interactions = np.triu(interactions, 1) + np.triu(interactions, 1).T
        best = self.gain.sum() + 0.5 * np.clip(self.interactions, 0, None).sum()
        worst = 0.5 * np.clip(self.interactions, None, 0).sum()
        self.scale = (worst, best)
        self.noise = noise
        self.delay = delay
        self.learning_rate_optimum = learning_rate_optimum
        self.failures = dict(failures or {})

    def settings(self) -> dict[str, object]:
        """What decides the scores (everything but ``delay``), for the search journal's header: a resumed search on a
        problem with other settings is refused (`MaskSearcher.header`)."""
        return {
            "num_bits": self.num_bits,
            "seed": self.seed,
            "noise": self.noise,
            "learning_rate_optimum": self.learning_rate_optimum,
            "failures": dict(sorted(self.failures.items())),
        }

    def values(self, bits: Sequence[int], learning_rate: float | None = None) -> tuple[float, float]:
        """The exact objectives of a mask (and learning rate): what the full budget returns."""
        x = np.asarray(bits, dtype=float)
        if x.shape != (self.num_bits,):
            raise ValueError(f"Expected {self.num_bits} bits, got {len(bits)}.")
        memorization = float(self.cost @ x / self.cost.sum())
        worst, best = self.scale
        quality = 1.0 - float((self.gain @ x + 0.5 * x @ self.interactions @ x - worst) / (best - worst))
        if learning_rate is not None:
            quality += 0.1 * (math.log10(learning_rate) - math.log10(self.learning_rate_optimum)) ** 2
        return memorization, quality

    def _error(self, key: str, objective: int) -> float:
        digest = hashlib.sha256(f"{key}:{objective}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**63 - 1.0

    def __call__(self, candidate: Candidate, budget: float = 1.0) -> dict[str, float]:
        bits = candidate.bits
        failure = self.failures.get("".join(map(str, bits)))
        if self.delay:
            time.sleep(self.delay * budget)
        if failure == "raise":
            raise RuntimeError("synthetic training failure")
        values = list(self.values(bits, candidate.learning_rate))
        if failure == "nan":
            values[1] = float("nan")
        if self.noise and budget < 1.0:
            values = [v + self.noise * (1.0 - budget) * self._error(candidate.key, i) for i, v in enumerate(values)]
        return dict(zip(self.objectives, values))
