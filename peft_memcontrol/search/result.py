"""What a search found: the Pareto front (`FrontPoint` per mask), the hypervolume history and every record.

A point of the front becomes the `MemControlConfig` that ``get_peft_model`` takes (`SearchResult.to_config`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..tuners import MemControlConfig
from .genome import Candidate, GenomeSpace
from .pareto import best_within, knee_point
from .references import SearchReferences


@dataclass
class FrontPoint:
    """One mask of a Pareto front: its candidate, objective values by name, and its journal record."""

    candidate: Candidate
    scores: dict[str, float]
    record: dict[str, Any] = field(repr=False)


#: Objectives whose range over the evaluated candidates is below this share of their median separate nothing: at that
#: spread the seed of one evaluation can reorder candidates (the issue's default search: 0.2% and 0.05%).
MIN_RELATIVE_SPREAD = 0.01


@dataclass
class SearchResult:
    """What a search found: the front (over every full-budget evaluation), hypervolume per generation, and counts.

    Attributes:
        space: the genome space searched.
        objectives: objective names, all minimized, in order.
        front: the non-dominated full-budget evaluations, sorted by the first objective.
        history: one entry per generation: ``generation``, ``hypervolume``, ``evaluations`` (run so far, cache
            hits excluded), ``cost`` (sum of budget fractions so far), ``seconds`` (evaluation time so far).
        reference_point: the hypervolume reference point.
        records: every journal record of the search, in order.
        config_kwargs: extra `MemControlConfig` arguments for `to_config` (mask semantics, granularity, options).
        search_info: facts recorded in each config's ``search`` field.
        references: the noise of one evaluation and the base model's scores, when measured
            (`peft_memcontrol.search.references.measure_references`).
    """

    space: GenomeSpace
    objectives: list[str]
    front: list[FrontPoint]
    history: list[dict[str, float]]
    reference_point: list[float] | None
    records: list[dict[str, Any]]
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    search_info: dict[str, Any] = field(default_factory=dict)
    references: SearchReferences | None = None

    @property
    def hypervolume(self) -> float:
        """The hypervolume of the last generation (0 before the first)."""
        return self.history[-1]["hypervolume"] if self.history else 0.0

    def status_counts(self) -> dict[str, int]:
        """How many evaluations ended in each status (``ok``, ``error``, ``diverged``, ``infeasible``), all budgets."""
        return dict(sorted(Counter(record["status"] for record in self.records).items()))

    def failure(self) -> str | None:
        """Why the search found no mask, or ``None`` when its front holds at least one.

        The front is empty when no full-budget evaluation succeeded: every candidate failed, diverged or violated
        the constraint. The message counts the evaluations by status and quotes the first error, so that a caller
        stops instead of reporting an empty front (``memcontrol search`` exits with status 1).
        """
        if self.front:
            return None
        counts = ", ".join(f"{count} {status}" for status, count in self.status_counts().items()) or "none"
        message = f"No candidate succeeded at the full budget (evaluations: {counts})."
        failed = next((r for r in self.records if r["status"] in ("error", "diverged")), None)
        if failed is not None:
            message += f" First failure ({failed['status']}, genome {failed['key']}): {failed.get('error')}"
        elif self.records and all(record["status"] == "infeasible" for record in self.records):
            message += " No candidate satisfies the search's constraint: loosen it (e.g. --max_trainable_share)."
        return message

    def evaluated_values(self) -> list[list[float]]:
        """Objective values of every successful full-budget evaluation, in journal order."""
        return [record["values"] for record in self.records if record["status"] == "ok" and record["budget"] == 1.0]

    def separation_warnings(self) -> list[str]:
        """One sentence per objective that does not separate the candidates (range below `MIN_RELATIVE_SPREAD` of
        its median, spread within the measured noise of one evaluation (`references`), or a single evaluation): the
        front then is not evidence of a trade-off."""
        values = self.evaluated_values()
        if len(values) < 2:
            return [f"Only {len(values)} successful evaluation: the front shows no trade-off."]
        warnings = []
        for index, name in enumerate(self.objectives):
            column = sorted(value[index] for value in values)
            spread, median = column[-1] - column[0], abs(column[len(column) // 2])
            if spread <= MIN_RELATIVE_SPREAD * max(median, 1e-12):
                warnings.append(
                    f"Objective {name!r} barely differs between the {len(values)} candidates (range {spread:.3g}, "
                    f"{spread / max(median, 1e-12):.2%} of its median): it does not rank the masks. Train candidates "
                    "longer (--max_train_steps), search a learning-rate range that moves this model, or choose "
                    "another objective."
                )
        if self.references is not None:
            warnings += self.references.noise_warnings(values)
        return warnings

    def front_values(self) -> list[list[float]]:
        """The front's objective values, one list per point in objective order."""
        return [[point.scores[name] for name in self.objectives] for point in self.front]

    def knee(self) -> FrontPoint:
        """The knee of the front (`peft_memcontrol.search.pareto.knee_point`)."""
        return self.front[knee_point(self.front_values())]

    def least_memorization(
        self, max_quality: float, memorization: str | None = None, quality: str | None = None
    ) -> FrontPoint | None:
        """The front's least-memorizing mask whose quality objective is at most ``max_quality`` (or ``None``).

        ``memorization`` and ``quality`` name the objectives; by default the first and the second.
        """
        memorization, quality = memorization or self.objectives[0], quality or self.objectives[1]
        index = best_within([p.scores for p in self.front], memorization, {quality: max_quality})
        return None if index is None else self.front[index]

    def best_quality(
        self, max_memorization: float, memorization: str | None = None, quality: str | None = None
    ) -> FrontPoint | None:
        """The front's best-quality mask whose memorization objective is at most ``max_memorization``."""
        memorization, quality = memorization or self.objectives[0], quality or self.objectives[1]
        index = best_within([p.scores for p in self.front], quality, {memorization: max_memorization})
        return None if index is None else self.front[index]

    def to_config(self, point: FrontPoint, chosen: str | None = None, **kwargs: Any) -> MemControlConfig:
        """The point's mask as a `MemControlConfig` that ``get_peft_model`` takes (scores and search recorded).

        The config's ``search`` records the search's facts, the genome, the generation, the point's place on the
        front (``front_position``, 1-based in the order of the first objective, of ``front_size``), ``chosen`` (why
        it was picked: ``"knee"``, ...) and, when measured (`references`), the noise of one evaluation per objective.
        ``kwargs`` override the search's `config_kwargs` (e.g. ``mask_semantics``, ``method_options``).
        """
        candidate = point.candidate
        if len(candidate.masks) != 1:
            raise ValueError(
                f"This mask mixes methods {sorted(candidate.masks)}; a MemControlConfig has one method. Apply one "
                "config per method (`candidate.masks`)."
            )
        method, mask = next(iter(candidate.masks.items()))
        search = {**self.search_info, "genome": list(candidate.genome), "layout": self.space.name}
        search["generation"] = point.record.get("generation")
        keys = [front_point.candidate.key for front_point in self.front]
        if candidate.key in keys:
            search["front_position"], search["front_size"] = keys.index(candidate.key) + 1, len(keys)
        if chosen is not None:
            search["chosen"] = chosen
        if self.references is not None and len(self.references.runs) > 1:
            search["noise"] = {**self.references.noise(), "runs": len(self.references.runs)}
        options = {**self.config_kwargs, **kwargs}
        return MemControlConfig(
            method=method,
            mask=dict(mask),
            objectives=list(self.objectives),
            scores={name: float(value) for name, value in point.scores.items()},
            learning_rate=candidate.learning_rate,
            search=search,
            **options,
        )
