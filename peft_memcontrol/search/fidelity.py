"""Proxy fidelity: does the search's cheap inner-loop score rank masks the way the full fine-tune does?

The search ranks candidates by scores from a short training on a few images (the inner loop, `InnerLoop`); the user
cares about the fully fine-tuned model. Whether the first predicts the second is an empirical question, answered per
search in three steps:

1. `select_fidelity_candidates` picks a sample of a `SearchResult`'s successful full-budget candidates: the front's
   extremes and knee first, then other front points and points off the front at random (seeded).
2. The caller fully fine-tunes and evaluates each of them (e.g.
   ``peft_memcontrol.evaluation.evaluate_model(...).table_values()``).
3. `measure_proxy_fidelity` computes, per inner-loop objective, Spearman's rank correlation between its values and
   its full-evaluation counterpart (`FullCounterpart`) over the sample, with a bootstrap confidence interval
   (`rank_correlation`); `ProxyFidelity.to_markdown` writes the table and a reading per objective for the search
   report.

Orientation: every inner-loop objective is minimized. A full metric may be better low or high, so each counterpart
carries a sign: +1 when a lower full value is what a lower objective promises, -1 when a higher one is. The
correlation is taken with ``sign * full``, so a positive rho always means "the proxy agrees with the full fine-tune".
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .genome import Candidate
from .result import SearchResult


logger = logging.getLogger(__name__)


class RankCorrelation(NamedTuple):
    """Spearman's rank correlation of paired values, with a percentile bootstrap confidence interval.

    Attributes:
        rho: Spearman's rho over all pairs (ties share their average rank), in [-1, 1].
        low: lower end of the confidence interval.
        high: upper end of the confidence interval.
        n: number of pairs.
        confidence: the interval's confidence level (e.g. 0.95).
        num_bootstrap: bootstrap resamples drawn.
        skipped: resamples left out because one side was constant in them (rho undefined there).
    """

    rho: float
    low: float
    high: float
    n: int
    confidence: float
    num_bootstrap: int
    skipped: int


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the average of the ranks they span (Spearman's convention)."""
    _, inverse, counts = np.unique(np.asarray(values, dtype=float), return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2)[inverse]


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation of the average ranks (``x`` and ``y`` must not be constant)."""
    correlation = np.corrcoef(average_ranks(x), average_ranks(y))[0, 1]
    return float(np.clip(correlation, -1.0, 1.0))


def rank_correlation(
    proxy: Sequence[float],
    full: Sequence[float],
    confidence: float = 0.95,
    num_bootstrap: int = 2000,
    seed: int = 0,
) -> RankCorrelation:
    """Spearman's rho between paired ``proxy`` and ``full`` values, with a percentile bootstrap confidence interval.

    The interval resamples the pairs with replacement (``num_bootstrap`` times, from ``numpy.random.default_rng(seed)``)
    and takes the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled rhos. Resamples in
    which one side is constant have no rho: they are skipped and counted (`RankCorrelation.skipped`).

    Few pairs say little: on bivariate normal samples whose rank correlation is 0.79, the 95% interval lay above 0
    for 49% of samples of 5 pairs, 74% of 10 and 99.5% of 20 (200 samples each), and at 5 pairs it held the true rho
    only 88% of the time. Fully evaluate 10 or more candidates when the answer matters.

    Raises:
        ValueError: for sequences of different lengths, fewer than 3 pairs, non-finite values, a constant side
            (rho is undefined), a ``confidence`` outside (0, 1) or ``num_bootstrap`` below 1.
    """
    x, y = np.asarray(proxy, dtype=float), np.asarray(full, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"Expected two flat sequences of equal length, got shapes {x.shape} and {y.shape}.")
    n = len(x)
    if n < 3:
        raise ValueError(
            f"A rank correlation needs at least 3 pairs, got {n}: with 2 it is always +1 or -1. Evaluate more "
            "candidates (select_fidelity_candidates' num_front and num_other)."
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("The values must be finite: drop the candidates whose evaluation failed (NaN or inf).")
    for name, values in (("proxy", x), ("full", y)):
        if np.ptp(values) == 0:
            raise ValueError(
                f"The {name} values are all {values[0]:g}: they rank no candidate above another, so rho is undefined."
            )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    if num_bootstrap < 1:
        raise ValueError(f"num_bootstrap must be at least 1, got {num_bootstrap}.")
    rng = np.random.default_rng(seed)
    resampled = []
    for indices in rng.integers(0, n, size=(num_bootstrap, n)):
        xs, ys = x[indices], y[indices]
        if np.ptp(xs) > 0 and np.ptp(ys) > 0:
            resampled.append(_spearman(xs, ys))
    if not resampled:
        raise ValueError(f"Every one of the {num_bootstrap} bootstrap resamples was constant on one side.")
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return RankCorrelation(
        rho=_spearman(x, y),
        low=float(low),
        high=float(high),
        n=n,
        confidence=confidence,
        num_bootstrap=num_bootstrap,
        skipped=num_bootstrap - len(resampled),
    )


class FullCounterpart(NamedTuple):
    """The full-evaluation metric an inner-loop objective stands in for, and how the two are oriented.

    Attributes:
        metric: the full evaluation's name for it (a key of the full scores, e.g. ``ModelScores.table_values()``).
        sign: +1 when a lower ``metric`` is what a lower (better) objective promises, -1 when a higher one is.
    """

    metric: str
    sign: int

    @property
    def label(self) -> str:
        """The metric as the table shows it: ``-amd`` for a negated one."""
        return self.metric if self.sign > 0 else f"-{self.metric}"


DEFAULT_FULL_COUNTERPARTS: dict[str, FullCounterpart] = {
    "fid": FullCounterpart("kid", +1),
    "kid": FullCounterpart("kid", +1),
    "neg_amd": FullCounterpart("amd", -1),
    "noise_norm": FullCounterpart("extracted", +1),
    "copy_similarity": FullCounterpart("amd", -1),
    "extraction": FullCounterpart("extracted", +1),
}
"""Inner-loop objective -> full-evaluation metric, for the built-in objectives and `ModelScores.table_values`' names.

The objectives are minimized. Of the full metrics, ``kid`` (quality: lower is better) and ``extracted`` (training
images the attack regenerates) are better low, so their sign is +1; ``amd`` (average distance of generations to their
nearest training image) is better high, so ``neg_amd`` (minus the proxy's AMD) and ``copy_similarity`` (the proxy's
mean best similarity to a memorized image, 1 - a distance) pair with ``-amd``. The calibrated replication rate is the
thresholded form of the same distance, but it is often 0 for every candidate of a small run and then ranks nothing."""


#: Candidates below which no verdict is given: a percentile bootstrap over 3 or 4 pairs resamples at most 2 or 3
#: distinct points, whose ranks agree perfectly by chance (3 candidates in any order give an interval of [1, 1] or
#: [-1, -1] for a monotone sample); the correlation is still shown.
MIN_CANDIDATES_FOR_VERDICT = 5


@dataclass
class FidelityRow:
    """One inner-loop objective against its full counterpart.

    Attributes:
        objective: the inner-loop objective.
        counterpart: its full-evaluation metric and sign.
        correlation: the rank correlation of the objective with ``sign * metric``; ``None`` when one side is the
            same for every candidate (``constant`` says which and its value), so that it ranks nothing.
        constant: e.g. ``"extracted is 0 for all 5 candidates"`` when there is no correlation.
    """

    objective: str
    counterpart: FullCounterpart
    correlation: RankCorrelation | None
    constant: str | None = None

    @property
    def verdict(self) -> str:
        """``"agrees"`` (interval above 0), ``"no evidence"`` (it contains 0), ``"opposite"`` (below 0),
        ``"undefined"`` (no correlation) or ``"too few"`` (fewer than `MIN_CANDIDATES_FOR_VERDICT` candidates)."""
        if self.correlation is None:
            return "undefined"
        if self.correlation.n < MIN_CANDIDATES_FOR_VERDICT:
            return "too few"
        if self.correlation.low > 0:
            return "agrees"
        if self.correlation.high < 0:
            return "opposite"
        return "no evidence"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: objective, full metric and sign, the correlation's fields (``None`` when undefined), why it is
        undefined, the verdict and the reading."""
        correlation = None if self.correlation is None else self.correlation._asdict()
        return {
            "objective": self.objective,
            "metric": self.counterpart.metric,
            "sign": self.counterpart.sign,
            "correlation": correlation,
            "constant": self.constant,
            "verdict": self.verdict,
            "reading": self.reading(),
        }

    def summary(self) -> str:
        """One line for a terminal: the objective, its full metric, rho with its interval, and the verdict."""
        names = f"{self.objective} vs full {self.counterpart.label}"
        if self.correlation is None:
            return f"{names}: undefined ({self.constant})"
        c = self.correlation
        return f"{names}: rho {c.rho:.2f}, {c.confidence:.0%} CI [{c.low:.2f}, {c.high:.2f}], n={c.n}: {self.verdict}"

    def reading(self) -> str:
        """One sentence saying what the correlation means for the search."""
        names = f"`{self.objective}` vs the full `{self.counterpart.label}`"
        if self.correlation is None:
            return f"{names}: not measured: {self.constant}, so there is no ranking to compare."
        c = self.correlation
        numbers = f"rho {c.rho:.2f}, {c.confidence:.0%} CI [{c.low:.2f}, {c.high:.2f}], n={c.n}"
        if self.verdict == "too few":
            return (
                f"{names}: too few candidates to tell ({numbers}; a bootstrap over fewer than "
                f"{MIN_CANDIDATES_FOR_VERDICT} means nothing): fully fine-tune more searched masks."
            )
        if self.verdict == "agrees":
            return f"{names}: the proxy ranks candidates like the full fine-tune ({numbers})."
        if self.verdict == "opposite":
            return (
                f"{names}: the proxy ranks them the opposite way ({numbers}): minimizing it works against the full "
                "fine-tune."
            )
        return f"{names}: no evidence that the proxy ranks candidates like the full fine-tune ({numbers})."


@dataclass
class ProxyFidelity:
    """Per inner-loop objective, how well it ranks candidates like the full fine-tune (`measure_proxy_fidelity`).

    Attributes:
        rows: one `FidelityRow` per objective with a full counterpart, in the proxy scores' order.
        num_candidates: candidates compared.
        unmatched: objectives of the proxy scores without a full counterpart (not measured).
    """

    rows: list[FidelityRow]
    num_candidates: int
    unmatched: list[str] = field(default_factory=list)

    def row(self, objective: str) -> FidelityRow:
        """The row of ``objective``."""
        for row in self.rows:
            if row.objective == objective:
                return row
        raise KeyError(f"No fidelity row for {objective!r}; measured: {[row.objective for row in self.rows]}.")

    def to_markdown(self) -> str:
        """A markdown table (objective, full metric, n, rho, CI), a reading per objective, and how it was measured."""
        lines = [
            "| inner-loop objective | full metric | n | Spearman rho | confidence interval |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for row in self.rows:
            c = row.correlation
            cells = ["n/a", "constant"] if c is None else [f"{c.rho:.2f}", f"[{c.low:.2f}, {c.high:.2f}]"]
            n = self.num_candidates if c is None else c.n
            lines.append(f"| `{row.objective}` | `{row.counterpart.label}` | {n} | {cells[0]} | {cells[1]} |")
        lines.append("")
        lines += [f"- {row.reading()}" for row in self.rows]
        lines.append("")
        lines.append(
            "Spearman's rank correlation between each inner-loop objective (minimized) and its full-evaluation "
            "metric over the same candidates, signed so that a positive rho means the proxy agrees (a metric "
            "shown as `-name` is better high and is negated)."
            + self._bootstrap_note()
            + (f" Not measured (no full counterpart): {', '.join(self.unmatched)}." if self.unmatched else "")
        )
        return "\n".join(lines) + "\n"

    def _bootstrap_note(self) -> str:
        measured = [row.correlation for row in self.rows if row.correlation is not None]
        if not measured:
            return ""
        first = measured[0]
        skipped = sum(c.skipped for c in measured)
        return (
            f" Intervals: {first.confidence:.0%} percentile bootstrap over candidates, {first.num_bootstrap} "
            f"resamples per objective ({skipped} skipped in all, where one side was constant)."
        )


def measure_proxy_fidelity(
    proxy_scores: Sequence[Mapping[str, float]],
    full_scores: Sequence[Mapping[str, float]],
    counterparts: Mapping[str, FullCounterpart | tuple[str, int]] = DEFAULT_FULL_COUNTERPARTS,
    confidence: float = 0.95,
    num_bootstrap: int = 2000,
    seed: int = 0,
) -> ProxyFidelity:
    """Rank correlation between each inner-loop objective and its full-evaluation counterpart, over candidates.

    Args:
        proxy_scores: per candidate, the inner-loop objective values by name (`FidelityCandidate.scores`).
        full_scores: per candidate (same order), the full evaluation's scores by name.
        counterparts: objective -> `FullCounterpart` (or a ``(metric, sign)`` pair); see the module docstring for the
            sign. Objectives of ``proxy_scores`` without one are listed in `ProxyFidelity.unmatched`.
        confidence: the confidence level of each interval (`rank_correlation`).
        num_bootstrap: bootstrap resamples per objective.
        seed: the bootstrap's seed, the same for every objective.

    Raises:
        ValueError: for lists of different lengths, candidates with different objectives, a counterpart without a
            sign of +1 or -1, a full metric missing from a candidate's scores, or no objective to measure.
    """
    if len(proxy_scores) != len(full_scores):
        raise ValueError(
            f"Got inner-loop scores for {len(proxy_scores)} candidates and full scores for {len(full_scores)}: give "
            "one of each per candidate, in the same order."
        )
    if not proxy_scores:
        raise ValueError("No candidates: fully evaluate some (select_fidelity_candidates) first.")
    objectives = list(proxy_scores[0])
    for index, scores in enumerate(proxy_scores):
        if list(scores) != objectives:
            raise ValueError(f"Candidate {index} has objectives {list(scores)}, candidate 0 {objectives}.")
    pairs = {name: _counterpart(name, counterparts[name]) for name in objectives if name in counterparts}
    if not pairs:
        raise ValueError(f"None of the objectives {objectives} has a full counterpart in {sorted(counterparts)}.")
    rows = []
    for objective, counterpart in pairs.items():
        proxy = [float(scores[objective]) for scores in proxy_scores]
        full = [float(_metric(scores, counterpart.metric, index)) for index, scores in enumerate(full_scores)]
        constant = _constant(objective, proxy) or _constant(counterpart.metric, full)
        signed = [counterpart.sign * value for value in full]
        correlation = None if constant else rank_correlation(proxy, signed, confidence, num_bootstrap, seed)
        rows.append(FidelityRow(objective, counterpart, correlation, constant))
    return ProxyFidelity(rows, len(proxy_scores), [name for name in objectives if name not in pairs])


def _counterpart(objective: str, value: FullCounterpart | tuple[str, int] | str) -> FullCounterpart:
    """``value`` as a `FullCounterpart`, refusing a bare metric name or a sign other than +1 and -1."""
    if isinstance(value, str):
        raise ValueError(
            f"The counterpart of {objective!r} is the bare name {value!r}: give its orientation too, "
            f"FullCounterpart({value!r}, +1) when a lower {value} is what a lower {objective} promises, -1 when a "
            "higher one is."
        )
    metric, sign = value
    if sign not in (1, -1):
        raise ValueError(f"The counterpart of {objective!r} has sign {sign!r}: it must be +1 or -1.")
    return FullCounterpart(metric, int(sign))


def _metric(scores: Mapping[str, float], metric: str, index: int) -> float:
    if metric not in scores:
        raise ValueError(f"The full scores of candidate {index} have no {metric!r} (they have {sorted(scores)}).")
    return scores[metric]


def _constant(name: str, values: Sequence[float]) -> str | None:
    """``"<name> is <value> for all <n> candidates"`` when every value is the same, else ``None``."""
    if any(value != values[0] for value in values):
        return None
    return f"{name} is {values[0]:g} for all {len(values)} candidates"


@dataclass
class FidelityCandidate:
    """A candidate to fully fine-tune and evaluate for `measure_proxy_fidelity`.

    Attributes:
        candidate: its mask and learning rate.
        scores: its inner-loop objective values by name (the search's full-budget evaluation).
        record: its journal record.
        on_front: whether it is on the search's Pareto front.
        role: why it was picked: ``"lowest <objective>"``, ``"knee"``, ``"front"`` or ``"off the front"``.
    """

    candidate: Candidate
    scores: dict[str, float]
    record: dict[str, Any] = field(repr=False)
    on_front: bool
    role: str


def select_fidelity_candidates(
    result: SearchResult, num_front: int = 3, num_other: int = 2, seed: int = 0
) -> list[FidelityCandidate]:
    """Up to ``num_front`` front points and ``num_other`` other successful full-budget candidates of ``result``.

    The front points are its extremes (the lowest point of each objective), then the knee, then other front points
    at random; the others are drawn at random from the successful (``status`` ``ok``) full-budget evaluations off the
    front. A spread over the front and beyond it is what a rank correlation needs: front points alone trade one
    objective for another. Fewer are returned, with a warning, when the search has fewer.

    Raises:
        ValueError: when the front is empty (`SearchResult.failure` says why), or for a negative count.
    """
    if num_front < 0 or num_other < 0:
        raise ValueError(f"num_front and num_other must be >= 0, got {num_front} and {num_other}.")
    if not result.front:
        raise ValueError(result.failure())
    rng = random.Random(seed)
    front = {point.candidate.key: point for point in result.front}
    priority: dict[str, str] = {}
    for objective in result.objectives:
        lowest = min(result.front, key=lambda point: point.scores[objective])
        priority.setdefault(lowest.candidate.key, f"lowest {objective}")
    priority.setdefault(result.knee().candidate.key, "knee")
    rest = [key for key in front if key not in priority]
    for key in rng.sample(rest, len(rest)):
        priority[key] = "front"
    chosen = [
        FidelityCandidate(front[key].candidate, dict(front[key].scores), front[key].record, True, role)
        for key, role in list(priority.items())[:num_front]
    ]
    others = {
        record["key"]: record
        for record in result.records
        if record["budget"] == 1.0 and record["status"] == "ok" and record["key"] not in front
    }
    for key in rng.sample(list(others), min(num_other, len(others))):
        record = others[key]
        scores = dict(zip(result.objectives, record["values"]))
        chosen.append(FidelityCandidate(result.space.decode(record["genome"]), scores, record, False, "off the front"))
    if len(chosen) < num_front + num_other:
        logger.warning(
            "The search has %d front points and %d other successful full-budget candidates: %d selected for the "
            "fidelity check instead of %d.",
            len(front),
            len(others),
            len(chosen),
            num_front + num_other,
        )
    return chosen
