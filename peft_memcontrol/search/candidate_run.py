"""One candidate, run wherever an executor sends it: call the evaluator, time it, and turn any failure into a record.

An *evaluator* is any picklable callable ``evaluator(candidate, budget)`` returning the objective values (a mapping
by objective name, or a sequence in objective order), all to be minimized; ``budget`` in (0, 1] is the fraction of
the full inner-loop budget (multi-fidelity search asks for less than 1). A candidate whose evaluator raises, or
returns NaN or infinity (a diverged training), is recorded with the error and `WORST_VALUE` in every objective, so
that the search goes on and never prefers it.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .genome import Candidate


WORST_VALUE = 1e30
"""Objective value recorded for failed, diverged and infeasible candidates (finite, so that JSON stays strict)."""

Evaluator = Callable[[Candidate, float], "Mapping[str, float] | Sequence[float]"]


def _as_values(raw: Mapping[str, float] | Sequence[float], objectives: Sequence[str]) -> list[float]:
    if isinstance(raw, Mapping):
        missing = [name for name in objectives if name not in raw]
        if missing:
            raise KeyError(f"The evaluator returned no value for objective(s) {missing}; it returned {sorted(raw)}.")
        return [float(raw[name]) for name in objectives]
    values = [float(value) for value in raw]
    if len(values) != len(objectives):
        raise ValueError(f"The evaluator returned {len(values)} values for {len(objectives)} objectives.")
    return values


def run_candidate(
    evaluator: Evaluator,
    candidate: Candidate | Mapping[str, Any],
    budget: float,
    objectives: Sequence[str],
) -> dict[str, Any]:
    """Run ``evaluator`` on one candidate and return the fields of its journal record.

    The fields are ``values`` (in ``objectives`` order), ``status``, ``error`` and ``seconds``. A failing candidate
    never raises: the failure becomes ``status="error"`` (or ``"diverged"`` for non-finite values) with the exception
    in ``error``, the traceback in ``traceback`` and `WORST_VALUE` in every objective.
    """
    if not isinstance(candidate, Candidate):
        candidate = Candidate.from_dict(candidate)
    start = time.perf_counter()
    try:
        values = _as_values(evaluator(candidate, budget), objectives)
    except Exception as error:  # a failing candidate must not stop the search
        return {
            "values": [WORST_VALUE] * len(objectives),
            "status": "error",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=8),
            "seconds": time.perf_counter() - start,
        }
    seconds = time.perf_counter() - start
    if not all(math.isfinite(value) for value in values):
        return {
            "values": [WORST_VALUE] * len(objectives),
            "status": "diverged",
            "error": f"non-finite objective values {dict(zip(objectives, map(repr, values)))}",
            "seconds": seconds,
        }
    return {"values": values, "status": "ok", "error": None, "seconds": seconds}
