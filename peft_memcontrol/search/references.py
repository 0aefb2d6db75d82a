"""What a search's front is read against: the noise of one evaluation, and the base model's own scores.

A front only shows a trade-off when its candidates differ by more than one candidate's scores differ between two
training runs. `measure_references` measures that noise: it trains and scores the knee's mask again under other
seeds (the evaluator's ``replicate(run)``: `InnerLoop.replicate` moves the training and generation seeds; the proxy
set stays the same, so data noise is not in it), and scores the base model without fine-tuning (the evaluator's
``score_base_model``, where it has one). The results are kept in ``references.json`` beside the journal, reused by a
later call only when the journal header, the candidate and the number of runs are the same.

`SearchReferences.noise_warnings` then says, per objective, when the spread between candidates is within the noise:
with ``k`` runs the noise's standard deviation is itself uncertain (3 runs: within a factor of about 2.5 at 90%), so
the warning is a rule of thumb, stated with its numbers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .lock import search_folder_lock
from .stored import read_stored, write_stored


if TYPE_CHECKING:
    from .result import FrontPoint
    from .searcher import MaskSearcher

logger = logging.getLogger(__name__)

REFERENCES_NAME = "references.json"

NOISE_RATIO = 2.0
"""An objective separates the candidates when their standard deviation on it is at least this many times the noise's
(the standard deviation of one candidate's scores over repeated runs)."""


@dataclass
class SearchReferences:
    """Reference measurements of a search (see the module docstring).

    Attributes:
        objectives: objective names, in order.
        candidate_key: the key of the candidate run several times (the front's knee).
        runs: its objective values per run, the search's own evaluation first.
        base_model: the base model's objective values by name, or ``None`` when the evaluator cannot score it.
    """

    objectives: list[str]
    candidate_key: str
    runs: list[list[float]]
    base_model: dict[str, float] | None = None

    def noise(self) -> dict[str, float]:
        """Standard deviation of each objective over the runs (0 with a single run)."""
        columns = zip(*self.runs)
        return {
            name: statistics.stdev(column) if len(self.runs) > 1 else 0.0
            for name, column in zip(self.objectives, columns)
        }

    def noise_warnings(self, evaluated: list[list[float]]) -> list[str]:
        """One sentence per objective whose standard deviation over the ``evaluated`` candidates (objective values
        per candidate) is below `NOISE_RATIO` times its noise: on it the front's order is mostly run-to-run luck."""
        if len(self.runs) < 2 or len(evaluated) < 2:
            return []
        warnings = []
        for index, (name, noise) in enumerate(self.noise().items()):
            spread = statistics.stdev(values[index] for values in evaluated)
            if noise > 0 and spread < NOISE_RATIO * noise:
                warnings.append(
                    f"Objective {name!r} varies between the {len(evaluated)} candidates (s.d. {spread:.3g}) less than "
                    f"{NOISE_RATIO:g}x as much as between {len(self.runs)} training runs of one mask (s.d. {noise:.3g}, "
                    f"candidate {self.candidate_key}): the front's order on it is mostly run-to-run noise. Train "
                    "candidates longer, score them on more images, or choose another objective."
                )
        return warnings

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "noise": self.noise()}


def measure_references(searcher: MaskSearcher, runs: int = 3, base_model: bool = True) -> SearchReferences | None:
    """Run the front's knee ``runs - 1`` more times (other seeds) and score the base model, or read them back.

    Needs an evaluator with ``replicate(run)`` (`InnerLoop`, the synthetic problems); without one, or with ``runs < 2``
    and no base model to score, nothing is measured and ``None`` is returned. The evaluations run in this process,
    one after another (they are few); ``references.json`` in the search's folder keeps them.
    """
    result = searcher.result()
    replicate = getattr(searcher.evaluator, "replicate", None)
    score_base = getattr(searcher.evaluator, "score_base_model", None) if base_model else None
    if not result.front or (replicate is None and score_base is None):
        return None
    knee = result.knee()
    key = {"header": searcher.header(), "candidate": knee.candidate.key, "runs": runs, "base_model": base_model}
    path = os.path.join(searcher.output_dir, REFERENCES_NAME) if searcher.output_dir else None
    stored = read_stored(path, key)
    if stored is not None:
        return SearchReferences(**stored["references"])
    with search_folder_lock(searcher.output_dir) if searcher.output_dir else contextlib.nullcontext():
        references = _measure(searcher, knee, result.objectives, runs if replicate is not None else 1, score_base)
    if path is not None:
        write_stored(path, key, references=asdict(references))
    return references


def _measure(
    searcher: MaskSearcher, knee: FrontPoint, objectives: list[str], runs: int, score_base: Any
) -> SearchReferences:
    values = [[knee.scores[name] for name in objectives]]
    for run in range(1, runs):
        logger.info(
            "Training the knee's mask again (run %d of %d) to measure the noise of one evaluation.", run + 1, runs
        )
        scores = searcher.evaluator.replicate(run)(knee.candidate, 1.0)
        values.append([float(scores[name]) for name in objectives])
    base_scores = None
    if score_base is not None:
        logger.info("Scoring the base model (no fine-tuning) with the search's objectives.")
        base_scores = {name: float(value) for name, value in score_base(knee.candidate).items()}
    return SearchReferences(objectives, knee.candidate.key, values, base_scores)
