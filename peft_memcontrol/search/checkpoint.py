"""A search's generation state on disk: ``checkpoint.json``, rewritten atomically after every generation.

The journal (`Journal`) keeps every finished evaluation; the checkpoint keeps what the journal cannot give back: the
population, the state of the search's random generator, the hypervolume reference point and history. A killed search
resumes from both, and a serial run resumes to exactly the front an uninterrupted run reaches. The checkpoint also
records the settings it was written with (`search_settings`), and a search with other settings refuses it. A
damaged checkpoint is refused with its file named (`JournalError`) and the way out: deleting it, after which the search
replays its generations from the journal without evaluating anything again.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import SearchConfig
from .genome import Genome, GenomeSpace
from .journal import JournalError, atomic_write_json, read_json


CHECKPOINT_NAME = "checkpoint.json"
"""The checkpoint's file name in a search's output folder."""

CHECKPOINT_FORMAT = "peft-memcontrol-search/1"
"""The ``format`` a checkpoint records; a file with another one is refused."""


def search_settings(space: GenomeSpace, objectives: Sequence[str], config: SearchConfig) -> dict[str, Any]:
    """What must not change between a search and its resumption (`SearchConfig.settings`: ``generations`` and
    ``max_evaluations`` may grow)."""
    return {"space": space.to_dict(), "objectives": list(objectives), "config": config.settings()}


def _rng_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from_json(state: Sequence[Any]) -> random.Random:
    rng = random.Random()
    rng.setstate((state[0], tuple(state[1]), state[2]))
    return rng


@dataclass
class Checkpoint:
    """The state of a search after its last finished generation.

    Attributes:
        generation: the last finished generation.
        population: the genomes selected in it.
        rng: the search's random generator, as the generation left it.
        reference_point: the hypervolume reference point.
        history: one hypervolume entry per generation (`SearchResult.history`).
        evaluations: evaluations run so far; with ``cost`` and ``seconds`` written for readers of the file (a
            resumed search recounts all three from the journal, which may hold evaluations finished after the
            checkpoint).
        cost: sum of the budget fractions evaluated so far.
        seconds: evaluation time so far.
    """

    generation: int
    population: list[Genome]
    rng: random.Random
    reference_point: list[float] | None
    history: list[dict[str, float]]
    evaluations: int
    cost: float
    seconds: float

    def save(self, path: str | os.PathLike, settings: dict[str, Any]) -> None:
        """Write the checkpoint and ``settings`` (`search_settings`) to ``path`` atomically."""
        atomic_write_json(
            path,
            {
                "format": CHECKPOINT_FORMAT,
                "generation": self.generation,
                "population": self.population,
                "rng_state": _rng_to_json(self.rng),
                "reference_point": self.reference_point,
                "history": self.history,
                "evaluations": self.evaluations,
                "cost": self.cost,
                "seconds": self.seconds,
                "settings": settings,
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike, settings: dict[str, Any]) -> Checkpoint:
        """Read a checkpoint written with ``settings``; raises `JournalError` (a `ValueError`) for a damaged file,
        another format or other settings."""
        try:
            state = read_json(path)
        except JournalError as error:
            raise JournalError(f"{error}{_DELETE}") from error
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise JournalError(f"{path} is not a checkpoint of this searcher (format {found!r}).{_DELETE}")
        missing = [name for name in _CHECKPOINT_FIELDS if name not in state]
        if missing:
            raise JournalError(f"{path} lacks {missing}: it was damaged outside the search.{_DELETE}")
        if state["settings"] != settings:
            raise JournalError(
                f"{path} was written by a search with other settings; resume with the same space, objectives and "
                "search config (only `generations` may change), or use a new output folder."
            )
        return cls(
            generation=state["generation"],
            population=[list(genome) for genome in state["population"]],
            rng=_rng_from_json(state["rng_state"]),
            reference_point=state["reference_point"],
            history=state["history"],
            evaluations=state["evaluations"],
            cost=state["cost"],
            seconds=state["seconds"],
        )


_CHECKPOINT_FIELDS = (
    "generation",
    "population",
    "rng_state",
    "reference_point",
    "history",
    "evaluations",
    "cost",
    "seconds",
    "settings",
)

_DELETE = (
    " Delete it to resume from the journal alone: the generations are replayed without evaluating anything again."
)
