"""Random search: the baseline NSGA-II must beat. The reference code's search (about 20 trials of a population of 50)
was random search in effect."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .candidate_run import Evaluator, run_candidate
from .genome import GenomeSpace
from .pareto import non_dominated_indices


def random_search(
    space: GenomeSpace,
    evaluator: Evaluator,
    num_evaluations: int,
    seed: int = 0,
    objectives: Sequence[str] | None = None,
) -> tuple[list[list[float]], list[dict]]:
    """Evaluate ``num_evaluations`` distinct uniformly random genomes at the full budget.

    Returns ``(front_values, records)``: the objective values of the non-dominated successful evaluations, and one
    record per evaluation (``key``, ``genome`` and the fields of `run_candidate`).
    """
    objectives = list(objectives or evaluator.objectives)
    rng = random.Random(seed)
    seen: set[str] = set()
    records = []
    attempts = 0
    while len(records) < num_evaluations and attempts < 100 * num_evaluations:
        attempts += 1
        candidate = space.decode(space.random_genome(rng))
        if candidate.key in seen:
            continue
        seen.add(candidate.key)
        record = {"key": candidate.key, "genome": list(candidate.genome)}
        record.update(run_candidate(evaluator, candidate, 1.0, objectives))
        records.append(record)
    values = [r["values"] for r in records if r["status"] == "ok"]
    return [values[i] for i in non_dominated_indices(values)], records
