"""Surrogate-assisted offspring: a cheap model of the objectives, fitted on the evaluations so far, picks which of many
candidate offspring are worth a fine-tuning run (`SearchConfig(surrogate="gp")`).

Every evaluation of a mask search is a fine-tuning run, so a user affords tens of them; NSGA-II alone needs hundreds.
The searcher keeps NSGA-II's variation as the source of candidates, draws ``surrogate_pool`` times more offspring than
it dispatches, and lets `choose_offspring` pick the batch:

* **Model**: one Gaussian process per objective (numpy only), on a kernel made for the genome: an exponential of the
  Hamming distance between unit genes (bits or per-unit method choices, compared for equality) times a squared
  exponential of the learning-rate gene scaled to [0, 1]. Targets are standardized; the kernel's two length scales and
  the noise level are chosen on a fixed grid by the log marginal likelihood, so that the fit is deterministic.
* **Batch**: ParEGO-style random scalarizations (Knowles 2006; Paria et al. 2019). Each slot of the batch draws a
  weight vector from the search's own random generator and takes the not yet chosen candidate with the lowest
  augmented Tchebycheff scalarization of the optimistic prediction (mean minus `EXPLORATION` standard deviations),
  objectives normalized over the evaluations. Different weights send the batch to different parts of the front.
* **Not screened**: the offspring of group moves (`SearchConfig.group_move_share`). A model fitted on masks that
  differ a unit at a time predicts a whole block's change from its single units, and where a block helps only whole
  (the deceptive problem of `peft_memcontrol.search.synthetic`) it screens out exactly the moves that find it.

The fit reads only the evaluations of earlier generations, in key order, and draws from the search's generator, so a
resumed search screens exactly as an uninterrupted one.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .genome import Genome, GenomeSpace


MIN_RECORDS_PER_GENE = 1
"""The surrogate screens offspring once there are at least this many successful evaluations per gene; before, the
search is plain NSGA-II (a model fitted on fewer points guesses). With population 20, one per gene lets it screen
from the first generation of offspring on; two per gene lost 0.02-0.07 of the front at 50 evaluations
(``benchmarks/bench_search_efficiency.py``)."""

EXPLORATION = 1.0
"""Standard deviations subtracted from the predicted mean (a lower confidence bound): the weight of the unknown."""

HAMMING_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
"""Candidate rates of the kernel's decay over the Hamming distance, as a share of the unit genes."""

LEARNING_RATE_SCALES = (0.1, 0.2, 0.5, 1.0)
"""Candidate length scales of the learning-rate gene, on its range scaled to [0, 1]."""

NOISE_LEVELS = (1e-3, 1e-2, 1e-1)
"""Candidate noise variances, as a share of the standardized targets' unit variance."""

TCHEBYCHEFF_AUGMENTATION = 0.05
"""Weight of the sum in the augmented Tchebycheff scalarization (ParEGO's rho), which breaks the max's ties."""


@dataclass(frozen=True)
class EncodedGenomes:
    """Genomes as the kernel reads them: unit genes, and the learning-rate gene scaled to [0, 1] (or ``None``)."""

    units: np.ndarray
    learning_rates: np.ndarray | None

    @classmethod
    def of(cls, space: GenomeSpace, genomes: Sequence[Genome]) -> EncodedGenomes:
        genes = np.array([space.canonical(genome) for genome in genomes], dtype=float)
        units = genes[:, : space.num_unit_genes]
        if not space.has_learning_rate:
            return cls(units, None)
        low, high = space.log_learning_rate_bounds
        return cls(units, (genes[:, -1] - low) / (high - low))

    def distances(self, other: EncodedGenomes) -> tuple[np.ndarray, np.ndarray | None]:
        """Hamming distances as a share of the unit genes, and squared learning-rate distances, between each pair."""
        hamming = (self.units[:, None, :] != other.units[None, :, :]).mean(axis=2)
        if self.learning_rates is None:
            return hamming, None
        return hamming, (self.learning_rates[:, None] - other.learning_rates[None, :]) ** 2


def _kernel(
    distances: tuple[np.ndarray, np.ndarray | None], hamming_scale: float, learning_rate_scale: float
) -> np.ndarray:
    hamming, squared = distances
    kernel = np.exp(-hamming_scale * hamming)
    if squared is not None:
        kernel = kernel * np.exp(-squared / (2 * learning_rate_scale**2))
    return kernel


@dataclass(frozen=True)
class GaussianProcess:
    """A fitted Gaussian process for one objective (see the module docstring); `predict` gives mean and std."""

    train: EncodedGenomes
    hamming_scale: float
    learning_rate_scale: float
    cholesky: np.ndarray
    weights: np.ndarray
    offset: float
    scale: float

    @classmethod
    def fit(cls, train: EncodedGenomes, targets: np.ndarray) -> GaussianProcess:
        """Fit on ``targets`` (one value per training genome), with the grid's most likely kernel and noise."""
        offset = float(targets.mean())
        scale = float(targets.std()) or 1.0
        y = (targets - offset) / scale
        distances = train.distances(train)
        learning_rate_scales = LEARNING_RATE_SCALES if train.learning_rates is not None else (1.0,)
        best = None
        for hamming_scale, learning_rate_scale, noise in itertools.product(
            HAMMING_SCALES, learning_rate_scales, NOISE_LEVELS
        ):
            matrix = _kernel(distances, hamming_scale, learning_rate_scale) + noise * np.eye(len(y))
            cholesky = np.linalg.cholesky(matrix)
            weights = np.linalg.solve(cholesky.T, np.linalg.solve(cholesky, y))
            likelihood = -0.5 * y @ weights - np.log(np.diag(cholesky)).sum()
            if best is None or likelihood > best[0]:
                best = (likelihood, hamming_scale, learning_rate_scale, cholesky, weights)
        _, hamming_scale, learning_rate_scale, cholesky, weights = best
        return cls(train, hamming_scale, learning_rate_scale, cholesky, weights, offset, scale)

    def predict(self, genomes: EncodedGenomes) -> tuple[np.ndarray, np.ndarray]:
        """Predicted mean and standard deviation (of the noise-free objective) at each genome."""
        cross = _kernel(genomes.distances(self.train), self.hamming_scale, self.learning_rate_scale)
        mean = cross @ self.weights
        solved = np.linalg.solve(self.cholesky, cross.T)
        variance = np.clip(1.0 - (solved**2).sum(axis=0), 0.0, None)
        return self.offset + self.scale * mean, self.scale * np.sqrt(variance)


def can_screen(space: GenomeSpace, num_evaluations: int) -> bool:
    """Whether ``num_evaluations`` successful evaluations are enough to fit the surrogate (`MIN_RECORDS_PER_GENE`)."""
    return num_evaluations >= MIN_RECORDS_PER_GENE * space.num_genes


def choose_offspring(
    space: GenomeSpace,
    evaluated: Sequence[Genome],
    values: Sequence[Sequence[float]],
    candidates: Sequence[Genome],
    count: int,
    rng: random.Random,
) -> list[int]:
    """Indices of the ``count`` candidates to evaluate, chosen by random scalarizations of the surrogate's optimistic
    prediction (see the module docstring); ``evaluated`` and ``values`` are the successful evaluations, all
    objectives minimized. Draws one weight vector per chosen candidate from ``rng``."""
    if len(candidates) <= count:
        return list(range(len(candidates)))
    targets = np.asarray(values, dtype=float)
    train = EncodedGenomes.of(space, evaluated)
    pool = EncodedGenomes.of(space, candidates)
    low, high = targets.min(axis=0), targets.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    optimistic = []
    for objective in range(targets.shape[1]):
        mean, std = GaussianProcess.fit(train, targets[:, objective]).predict(pool)
        optimistic.append((mean - EXPLORATION * std - low[objective]) / span[objective])
    optimistic = np.stack(optimistic, axis=1)
    available = np.ones(len(candidates), dtype=bool)
    chosen = []
    for _ in range(count):
        weights = np.array([rng.expovariate(1.0) for _ in range(targets.shape[1])])
        weights /= weights.sum()
        weighted = optimistic * weights
        scores = weighted.max(axis=1) + TCHEBYCHEFF_AUGMENTATION * weighted.sum(axis=1)
        scores[~available] = np.inf
        best = int(np.argmin(scores))
        chosen.append(best)
        available[best] = False
    return chosen
