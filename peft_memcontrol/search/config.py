"""`SearchConfig`: the settings of the outer loop (population, variation rates, fidelities, surrogate, seed)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..constants import SURROGATES


RESUMABLE_FIELDS = ("generations", "max_evaluations")
"""Fields a resumed search may change: they say how long the search runs, not what it does."""

LATER_FIELDS = ("learning_rate_tolerance", "surrogate", "surrogate_pool", "group_move_share")
"""Fields added after journals were first written: left out of `SearchConfig.settings` while at their default, so
that the journal and checkpoint of an older search (which lack them) still compare equal and resume."""


def default_population_size(max_evaluations: int | None) -> int:
    """The population `memcontrol search` uses when ``--population_size`` is not given: 10 for a budget of at most 100
    evaluations, else 20 (`SearchConfig`'s default).

    From the benchmark of record (`benchmarks/results/search_efficiency.md`, 7 seeds, surrogate and group moves on):
    population 10 reaches a larger share of the true front than 20 at 20 and 50 evaluations on every problem (e.g.
    0.83 vs 0.79 at 20 on the knapsack, 0.90 vs 0.85 at 50 with the learning-rate gene, 0.99 vs 0.89 at 50 on the
    deceptive problem with units named by block) and the same at 100 (within 0.01).
    """
    return 10 if max_evaluations is not None and max_evaluations <= 100 else 20


@dataclass
class SearchConfig:
    """Settings of the outer loop.

    Args:
        population_size: individuals kept each generation (the reference ran 50).
        generations: generations of offspring after the first population (total full-budget evaluations are at
            most ``population_size + generations * num_offspring``).
        num_offspring: offspring per generation (default: ``population_size``).
        crossover_probability: probability that a pair of parents is crossed over.
        mutation_probability: probability that an offspring is mutated.
        gene_mutation_probability: per-gene mutation probability (default: 1 / number of genes).
        crossover_eta: distribution index of SBX crossover on the learning-rate gene.
        mutation_eta: distribution index of polynomial mutation on the learning-rate gene.
        fidelities: increasing budget fractions ending at 1.0; ``(1.0,)`` is plain NSGA-II, ``(0.25, 1.0)`` trains
            every offspring on a quarter of the budget and promotes the best to the full one.
        promote_fraction: share of the candidates promoted from one fidelity to the next.
        max_evaluations: stop once this many evaluations have run (cache hits and infeasible candidates are free);
            the last generation gets only as many offspring as evaluations remain. ``None``: ``generations`` alone
            decides. The number a user can afford (each evaluation is a fine-tuning run) is the natural knob.
        learning_rate_tolerance: learning rates within this relative distance (``|lr / lr' - 1|``; 0.025 = 2.5%) of
            an evaluated one for the same mask count as that candidate: such an offspring is drawn again instead of
            trained (0: only equal genes are the same candidate).
        surrogate: ``"gp"`` (default) screens many offspring with a Gaussian process fitted on the evaluations so far
            and sends only the most promising to the evaluator (`peft_memcontrol.search.surrogate`), once there are
            at least one successful evaluation per gene (`MIN_RECORDS_PER_GENE`); ``"none"``: plain NSGA-II.
        surrogate_pool: candidate offspring screened per offspring dispatched (with ``surrogate="gp"``).
        group_move_share: share of each generation's offspring made by a group move instead (a parent with every
            unit of one named group set to one value: `peft_memcontrol.search.operators.mutate_group`), rounded,
            dispatched without the surrogate's screening: a model fitted on masks that change one unit at a time
            predicts whole-group changes badly. Only for units whose names have groups (``down_blocks.1``, ...:
            `peft_memcontrol.search.operators.unit_groups`); 0: none.
        seed: seeds the search's private random generator (DEAP's operators draw from it).
        reference_point: hypervolume reference point; default: the worst value of each objective in the first
            population plus 10% of its range, fixed for the rest of the search.
    """

    population_size: int = 20
    generations: int = 10
    num_offspring: int | None = None
    crossover_probability: float = 0.9
    mutation_probability: float = 1.0
    gene_mutation_probability: float | None = None
    crossover_eta: float = 15.0
    mutation_eta: float = 20.0
    fidelities: tuple[float, ...] = (1.0,)
    promote_fraction: float = 0.5
    max_evaluations: int | None = None
    learning_rate_tolerance: float = 0.025
    surrogate: str = "gp"
    surrogate_pool: int = 20
    group_move_share: float = 0.2
    seed: int = 0
    reference_point: list[float] | None = None

    def __post_init__(self) -> None:
        self.fidelities = tuple(float(f) for f in self.fidelities)
        if self.population_size < 2:
            raise ValueError(f"population_size must be at least 2, got {self.population_size}.")
        if self.generations < 0:
            raise ValueError(f"generations must be >= 0, got {self.generations}.")
        if not self.fidelities or self.fidelities[-1] != 1.0 or list(self.fidelities) != sorted(set(self.fidelities)):
            raise ValueError(f"fidelities must increase strictly and end at 1.0, got {self.fidelities}.")
        if self.fidelities[0] <= 0:
            raise ValueError("fidelities must be positive.")
        if not 0 < self.promote_fraction <= 1:
            raise ValueError(f"promote_fraction must be in (0, 1], got {self.promote_fraction}.")
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise ValueError(f"max_evaluations must be at least 1 (or None), got {self.max_evaluations}.")
        if not 0 <= self.learning_rate_tolerance < math.inf:
            raise ValueError(
                f"learning_rate_tolerance must be a finite number >= 0 (0.025 = 2.5%), got {self.learning_rate_tolerance}."
            )
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {self.surrogate!r}.")
        if self.surrogate_pool < 1:
            raise ValueError(f"surrogate_pool must be at least 1, got {self.surrogate_pool}.")
        if not 0 <= self.group_move_share <= 1:
            raise ValueError(f"group_move_share must be in [0, 1], got {self.group_move_share}.")

    @property
    def offspring(self) -> int:
        """Offspring per generation: ``num_offspring``, or ``population_size`` when unset."""
        return self.num_offspring or self.population_size

    def settings(self) -> dict[str, Any]:
        """What must not change between a search and its resumption, as JSON data: every field but
        `RESUMABLE_FIELDS`, and `LATER_FIELDS` only when they differ from their default."""
        settings = asdict(self)
        for name in RESUMABLE_FIELDS:
            settings.pop(name)
        defaults = {field.name: field.default for field in fields(self)}
        for name in LATER_FIELDS:
            if settings[name] == defaults[name]:
                settings.pop(name)
        settings["fidelities"] = list(settings["fidelities"])
        return settings
