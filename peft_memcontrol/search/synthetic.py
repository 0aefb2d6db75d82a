"""Closed-form stand-ins for the inner loop: mask problems with a known Pareto front, for tests, benchmarks and trying
the tool without training anything.

All share the evaluation machinery of `ClosedFormProblem` (failures on purpose, a delay standing in for training
time, a low-budget error for multi-fidelity, an evaluation noise) and differ in their objectives (both minimized):

* `SyntheticMaskProblem`: each unit has a memorization cost ``w_i`` and a quality gain ``v_i``, and pairs of units
  interact, so switching units on trades memorization against quality as a real mask does, with a front that is not
  simply "the k cheapest units". ``memorization = w.x / sum(w)`` and ``quality = 1 - (v.x + x^T A x / 2) / norm``
  plus, with a learning-rate gene, a quadratic penalty for missing the learning rate's optimum. With
  ``learning_rate_coupling`` the optimum moves with the mask (larger masks want smaller rates) and memorization
  grows with the rate, so the learning rate is a trade-off of its own.
* `KnapsackMaskProblem`: a bi-objective 0/1 knapsack with correlated weights and values and a capacity past which
  quality collapses: many masks, a front packed with near-equal trade-offs.
* `DeceptiveMaskProblem`: units in blocks whose quality is a trap function (a block is best all on, but every
  single flip from all-off makes it worse), so bit-flip mutation is led away from the front.

`true_front` enumerates every genome of a space (with the learning-rate gene on its rounding grid) to give the exact
front, which is how tests and ``benchmarks/bench_search_efficiency.py`` measure a search.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from .genome import Candidate, GenomeSpace
from .pareto import non_dominated_indices


class ClosedFormProblem:
    """A picklable evaluator ``problem(candidate, budget) -> {"memorization": m, "quality": q}`` with closed-form
    objectives (`objective_grid`).

    Args:
        num_bits: units of the genome it expects.
        seed: draws the problem's constants.
        noise: size of the low-budget error: at budget ``b < 1`` each objective is off by ``noise * (1 - b) * u``
            with ``u`` in [-1, 1] fixed per genome, the way short trainings give biased, rank-correlated scores
            (0: every budget gives the exact values).
        evaluation_noise: size of an error at every budget, ``evaluation_noise * u`` with ``u`` in [-1, 1] fixed
            per genome (a seeded training run's luck); the search sees it, `values` and `true_front` do not.
        delay: seconds of sleep per unit of budget (to stand in for training time, e.g. in kill-and-resume tests).
        failures: bit string (e.g. ``"1111111111"``) -> ``"raise"`` or ``"nan"``: candidates that fail on purpose.
    """

    objectives = ("memorization", "quality")
    run: int = 0
    """Which training run's luck ``evaluation_noise`` draws (`replicate`); 0 for the search's own evaluations."""

    def __init__(
        self,
        num_bits: int,
        seed: int = 0,
        noise: float = 0.0,
        evaluation_noise: float = 0.0,
        delay: float = 0.0,
        failures: Mapping[str, str] | None = None,
    ) -> None:
        self.num_bits = num_bits
        self.seed = seed
        self.noise = noise
        self.evaluation_noise = evaluation_noise
        self.delay = delay
        self.failures = dict(failures or {})

    def objective_grid(self, bits: np.ndarray, log_learning_rates: np.ndarray | None) -> np.ndarray:
        """Exact objectives of masks ``bits`` (shape ``(N, num_bits)``) at learning rates ``10**log_learning_rates``
        (shape ``(L,)``; ``None`` for a genome without the gene): an array of shape ``(N, L, 2)`` (``L = 1``)."""
        raise NotImplementedError

    def settings(self) -> dict[str, object]:
        """What decides the scores (everything but ``delay``), for the search journal's header: a resumed search on a
        problem with other settings is refused (`MaskSearcher.header`). Options at their default are left out, so
        that the header of a journal does not change when an option is added."""
        settings = {
            "num_bits": self.num_bits,
            "seed": self.seed,
            "noise": self.noise,
            **self._settings(),
            "failures": dict(sorted(self.failures.items())),
        }
        if self.evaluation_noise:
            settings["evaluation_noise"] = self.evaluation_noise
        return settings

    def _settings(self) -> dict[str, object]:
        """The subclass's own settings."""
        return {}

    def values(self, bits: Sequence[int], learning_rate: float | None = None) -> tuple[float, float]:
        """The exact objectives of a mask (and learning rate): what the full budget returns without noise."""
        x = np.asarray(bits, dtype=float)
        if x.shape != (self.num_bits,):
            raise ValueError(f"Expected {self.num_bits} bits, got {len(bits)}.")
        log_learning_rates = None if learning_rate is None else np.array([math.log10(learning_rate)])
        memorization, quality = self.objective_grid(x[None, :], log_learning_rates)[0, 0]
        return float(memorization), float(quality)

    def replicate(self, run: int) -> ClosedFormProblem:
        """This problem as a repeated training run would see it: the same exact values, ``evaluation_noise`` drawn
        anew for run number ``run`` (`peft_memcontrol.search.references` measures the noise this way)."""
        repeated = copy.copy(self)
        repeated.run = run
        return repeated

    def _error(self, key: str, salt: str) -> float:
        digest = hashlib.sha256(f"{key}:{salt}".encode()).digest()
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
            values = [
                v + self.noise * (1.0 - budget) * self._error(candidate.key, str(i)) for i, v in enumerate(values)
            ]
        if self.evaluation_noise:
            values = [
                v
                + self.evaluation_noise * self._error(candidate.key, f"run{i}" + (f":{self.run}" if self.run else ""))
                for i, v in enumerate(values)
            ]
        return dict(zip(self.objectives, values))


class SyntheticMaskProblem(ClosedFormProblem):
    """Units with costs, gains and pairwise interactions (see the module docstring).

    ``num_bits``, ``seed``, ``noise``, ``evaluation_noise``, ``delay`` and ``failures`` are as in `ClosedFormProblem`.

    Args:
        learning_rate_optimum: the learning rate without penalty (used when the genome has a learning-rate gene).
        learning_rate_coupling: ``c >= 0``; the optimum moves by up to ``c`` decades with the mask's cost share
            (``log10 optimum = log10 learning_rate_optimum + c (1/2 - memorization)``) and memorization is scaled
            by ``10 ** (c / 10 * (log10 lr - log10 learning_rate_optimum))``. 0: neither.
    """

    def __init__(
        self,
        num_bits: int = 10,
        seed: int = 0,
        noise: float = 0.0,
        delay: float = 0.0,
        learning_rate_optimum: float = 1e-4,
        failures: Mapping[str, str] | None = None,
        evaluation_noise: float = 0.0,
        learning_rate_coupling: float = 0.0,
    ) -> None:
        super().__init__(num_bits, seed, noise, evaluation_noise, delay, failures)
        rng = np.random.default_rng(seed)
        self.cost = rng.uniform(0.2, 1.0, num_bits)
        self.gain = rng.uniform(0.2, 1.0, num_bits)
        interactions = rng.uniform(-0.3, 0.3, (num_bits, num_bits))
        self.interactions = np.triu(interactions, 1) + np.triu(interactions, 1).T
        best = self.gain.sum() + 0.5 * np.clip(self.interactions, 0, None).sum()
        worst = 0.5 * np.clip(self.interactions, None, 0).sum()
        self.scale = (worst, best)
        self.learning_rate_optimum = learning_rate_optimum
        self.learning_rate_coupling = learning_rate_coupling

    def _settings(self) -> dict[str, object]:
        settings: dict[str, object] = {"learning_rate_optimum": self.learning_rate_optimum}
        if self.learning_rate_coupling:
            settings["learning_rate_coupling"] = self.learning_rate_coupling
        return settings

    def objective_grid(self, bits: np.ndarray, log_learning_rates: np.ndarray | None) -> np.ndarray:
        x = np.asarray(bits, dtype=float)
        memorization = x @ self.cost / self.cost.sum()
        worst, best = self.scale
        quality = 1.0 - (x @ self.gain + 0.5 * np.einsum("ni,ij,nj->n", x, self.interactions, x) - worst) / (
            best - worst
        )
        if log_learning_rates is None:
            return np.stack([memorization, quality], axis=-1)[:, None, :]
        coupling = self.learning_rate_coupling
        base = math.log10(self.learning_rate_optimum)
        optimum = base + coupling * (0.5 - memorization)
        offset = log_learning_rates[None, :] - optimum[:, None]
        memorization = memorization[:, None] * 10 ** (coupling / 10 * (log_learning_rates[None, :] - base))
        quality = quality[:, None] + 0.1 * offset**2
        return np.stack([memorization, quality], axis=-1)


class KnapsackMaskProblem(ClosedFormProblem):
    """A bi-objective 0/1 knapsack: ``memorization = w.x / sum(w)``, ``quality = 1 - v.x / sum(v)`` with values
    correlated to the weights (``v_i = w_i + U(-0.1, 0.1)``), and past ``capacity`` (a share of ``sum(w)``) quality
    worsens by ``2 * excess``, as a mask that trains too much collapses.

    ``num_bits`` and ``seed`` (and, as keywords, ``noise``, ``evaluation_noise``, ``delay``, ``failures``) are as in
    `ClosedFormProblem`.

    Args:
        capacity: the share of the total weight past which quality collapses.
    """

    def __init__(self, num_bits: int = 16, seed: int = 0, capacity: float = 0.6, **kwargs) -> None:
        super().__init__(num_bits, seed, **kwargs)
        rng = np.random.default_rng(seed)
        self.weight = rng.uniform(0.1, 1.0, num_bits)
        self.value = np.clip(self.weight + rng.uniform(-0.1, 0.1, num_bits), 0.01, None)
        self.capacity = capacity

    def _settings(self) -> dict[str, object]:
        return {"problem": "knapsack", "capacity": self.capacity}

    def objective_grid(self, bits: np.ndarray, log_learning_rates: np.ndarray | None) -> np.ndarray:
        _no_learning_rate_gene(self, log_learning_rates)
        x = np.asarray(bits, dtype=float)
        memorization = x @ self.weight / self.weight.sum()
        quality = 1.0 - x @ self.value / self.value.sum() + 2.0 * np.clip(memorization - self.capacity, 0, None)
        return np.stack([memorization, quality], axis=-1)[:, None, :]


class DeceptiveMaskProblem(ClosedFormProblem):
    """Units in blocks of ``block`` with a trap function for quality: a block with ``u`` units on scores ``block`` when
    all are on and ``block - 1 - u`` otherwise, so from all-off every single flip makes the block worse.
    ``memorization = w.x / sum(w)`` with costs ``w_i`` in [0.2, 1]; ``quality = 1 - (sum of block scores) / (bits)``.

    ``num_bits`` and ``seed`` (and, as keywords, ``noise``, ``evaluation_noise``, ``delay``, ``failures``) are as in
    `ClosedFormProblem`.

    Args:
        block: units per block (``num_bits`` must be a multiple).
    """

    def __init__(self, num_bits: int = 16, seed: int = 0, block: int = 4, **kwargs) -> None:
        if num_bits % block:
            raise ValueError(f"num_bits ({num_bits}) must be a multiple of block ({block}).")
        super().__init__(num_bits, seed, **kwargs)
        self.cost = np.random.default_rng(seed).uniform(0.2, 1.0, num_bits)
        self.block = block

    def _settings(self) -> dict[str, object]:
        return {"problem": "deceptive", "block": self.block}

    def objective_grid(self, bits: np.ndarray, log_learning_rates: np.ndarray | None) -> np.ndarray:
        _no_learning_rate_gene(self, log_learning_rates)
        x = np.asarray(bits, dtype=float)
        memorization = x @ self.cost / self.cost.sum()
        ones = x.reshape(len(x), -1, self.block).sum(axis=2)
        scores = np.where(ones == self.block, self.block, self.block - 1 - ones)
        quality = 1.0 - scores.sum(axis=1) / self.num_bits
        return np.stack([memorization, quality], axis=-1)[:, None, :]


def _no_learning_rate_gene(problem: ClosedFormProblem, log_learning_rates: np.ndarray | None) -> None:
    if log_learning_rates is not None:
        raise ValueError(f"{type(problem).__name__} has no learning-rate term: use a space without the gene.")


def learning_rate_grid(space: GenomeSpace) -> np.ndarray | None:
    """Every value the space's ``log10`` learning-rate gene can take (its rounding grid), or ``None`` without it."""
    if not space.has_learning_rate:
        return None
    step = 10.0**-space.learning_rate_decimals
    low, high = (round(bound / step) for bound in space.log_learning_rate_bounds)
    grid = np.round(np.arange(low, high + 1) * step, space.learning_rate_decimals)
    low_bound, high_bound = space.log_learning_rate_bounds
    return grid[(grid >= low_bound) & (grid <= high_bound)]


def true_front(problem: ClosedFormProblem, space: GenomeSpace, chunk: int = 256) -> np.ndarray:
    """The exact Pareto front of ``problem`` over every genome of a bit ``space`` (learning rates on the gene's grid),
    by enumeration: an array of objective values, one row per non-dominated point, sorted by the first objective."""
    if space.choices is not None or space.num_unit_genes != problem.num_bits:
        raise ValueError("true_front enumerates bit genomes with one bit per unit of the problem.")
    grid = learning_rate_grid(space)
    masks = np.array(list(itertools.product([0, 1], repeat=problem.num_bits)), dtype=float)
    front = np.empty((0, 2))
    for start in range(0, len(masks), chunk):
        points = problem.objective_grid(masks[start : start + chunk], grid).reshape(-1, 2)
        points = np.concatenate([front, points])
        front = points[non_dominated_indices(points)]
    return front[np.argsort(front[:, 0], kind="stable")]
