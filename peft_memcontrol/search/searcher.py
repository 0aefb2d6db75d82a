"""`MaskSearcher`: DEAP NSGA-II over MemControl masks (plus a learning-rate gene), resumable and multi-fidelity.

The outer loop of MemControl: a population of genomes (`GenomeSpace`) is evaluated by an evaluator (the inner loop,
`InnerLoop`, or any callable), selected by DEAP's non-dominated sorting and crowding (``selNSGA2``), and varied with
operators suited to each gene (`peft_memcontrol.search.operators`: uniform crossover and bit flips, or uniform integer
resets, for the unit genes; simulated binary crossover and polynomial mutation for the bounded learning-rate gene),
all registered on the searcher's DEAP toolbox.

* **No genome is evaluated twice**: results are cached by (genome, budget); the cache is rebuilt from the journal.
  Offspring equal to a genome evaluated before, or to another offspring of their generation, are drawn again before
  they are dispatched (up to `REDRAW_ROUNDS` rounds of variation), so that a generation trains new candidates only;
  a learning rate within ``learning_rate_tolerance`` of an evaluated one for the same mask counts as equal.
* **Few evaluations**: with ``surrogate="gp"`` (the default) a Gaussian process fitted on the evaluations so far
  screens many candidate offspring and only the most promising are trained (`peft_memcontrol.search.surrogate`);
  ``max_evaluations`` stops the search at the number of fine-tuning runs a user can afford.
* **Whole blocks**: when the units' names have groups (``down_blocks.1``, ...), a share of each generation's offspring
  (``group_move_share``) sets one whole group to one value, unscreened: bit flips and a surrogate fitted on them miss
  blocks that help only when all their units train (`peft_memcontrol.search.operators.mutate_group`).
* **Never lose work**: each finished evaluation is appended to ``journal.jsonl`` and each generation written to
  ``checkpoint.json`` (JSON, atomic). A killed search resumes where it stopped, to exactly the front an uninterrupted
  run reaches, because the random state is checkpointed, evaluations are deterministic and nothing depends on the
  order in which a process pool finishes them.
* **Retry what failed through no fault of the candidate**: a resumed search evaluates again the candidates whose
  evaluation failed with a transient error (out of memory, a full disk, a lost GPU or worker: the record's
  ``error_kind``), or every failed one with ``retry_failed="all"``. The new record is appended and supersedes the
  old one. When a retried candidate belongs to a finished generation, the search replays its generations from the
  journal (nothing else is evaluated again), so that the selection sees the new values as an uninterrupted run
  would have; evaluations of the old path stay in the journal and in the front.
* **Never mix settings**: the journal's first line records what its evaluations were made with (`MaskSearcher.header`:
  genome space, objectives, search config, the evaluator's and the constraint's ``settings()``, the package version).
  A search resumes a folder only when its own header is the same (``generations`` may grow); otherwise it refuses
  and names the fields that differ.
* **Multi-fidelity** (not in the reference code): with ``fidelities=(0.25, 1.0)`` every offspring is first trained
  on a quarter of the budget and only the best ``promote_fraction`` (by non-dominated rank and crowding among the
  offspring) is promoted to the next budget: successive halving inside each generation. Only full-budget results
  enter the population and the front.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

from deap import algorithms
from tqdm.auto import tqdm

from .._version import __version__
from .candidate_run import WORST_VALUE, Evaluator
from .checkpoint import CHECKPOINT_NAME, Checkpoint, search_settings
from .config import SearchConfig
from .executors import TRANSIENT, get_executor
from .genome import Candidate, Genome, GenomeIndex, GenomeSpace
from .journal import JOURNAL_NAME, Journal, JournalError, jsonable
from .lock import search_folder_lock
from .operators import Individual, as_individuals, fitness_class, make_toolbox, private_random
from .pareto import default_reference_point, hypervolume, non_dominated_indices
from .result import FrontPoint, SearchResult
from .surrogate import can_screen, choose_offspring


logger = logging.getLogger(__name__)

REDRAW_ROUNDS = 10
"""Rounds of variation a generation may draw (times ``surrogate_pool`` when screening) to find offspring that are new
candidates; when they run out, the generation dispatches the new ones it found."""

RETRY_FAILED = ("transient", "all", "none")
"""Which failed evaluations (``status`` ``"error"``) a resumed search runs again (`MaskSearcher`'s ``retry_failed``)."""


class UnsatisfiableConstraintError(ValueError):
    """No genome of the search's space meets its constraint (raised before the first evaluation)."""


class MaskSearcher:
    """Multi-objective NSGA-II search over MemControl masks; see the module docstring.

    Args:
        space: the genome (`GenomeSpace`: units, method or per-unit method choice, learning-rate range).
        evaluator: ``evaluator(candidate, budget) -> values``, all minimized (`InnerLoop` for real training; any
            picklable callable, e.g. `SyntheticMaskProblem`).
        objectives: objective names in order; default ``evaluator.objectives``.
        config: `SearchConfig`.
        output_dir: where the journal, checkpoint and reports go; ``None`` keeps everything in memory.
        executor: ``"serial"``, ``"process"``, ``"ray"``, or an executor object (`SerialExecutor`, ...).
        constraint: optional ``constraint(candidate) -> bool``; infeasible candidates are recorded with the worst
            values and never trained (e.g. `TrainableShareConstraint`).
        progress: show tqdm bars per generation and per candidate.
        retry_failed: which failed evaluations a resumed search runs again: ``"transient"`` (default) those that
            failed through no fault of the candidate (``error_kind`` ``"transient"``: out of memory, a full disk, a
            lost GPU or worker process), ``"all"`` every ``error`` record (e.g. after fixing a bug in an objective),
            ``"none"`` none. Diverged (non-finite) and infeasible candidates are never run again: their result is
            the candidate's own. Records of older journals without ``error_kind`` count as not transient.

    The evaluator and the constraint may define ``settings() -> dict`` (JSON data): everything that changes their
    results (`InnerLoop.settings`, `TrainableShareConstraint.settings`). It goes into the journal's header, and a
    search with other settings refuses to resume the folder. Without it only their type is recorded and compared,
    and a resume warns that their settings are not checked.

    Attributes:
        toolbox: the DEAP toolbox of selection and variation operators (`peft_memcontrol.search.operators`);
            register another ``select``, ``select_parents``, ``mate`` or ``mutate`` on it to swap one.
    """

    def __init__(
        self,
        space: GenomeSpace,
        evaluator: Evaluator,
        objectives: Sequence[str] | None = None,
        config: SearchConfig | None = None,
        output_dir: str | os.PathLike | None = None,
        executor: str | Any = "serial",
        constraint: Callable[[Candidate], bool] | None = None,
        progress: bool = True,
        retry_failed: str = "transient",
    ) -> None:
        if retry_failed not in RETRY_FAILED:
            raise ValueError(f"retry_failed must be one of {RETRY_FAILED}, got {retry_failed!r}.")
        self.space = space
        self.evaluator = evaluator
        names = objectives if objectives is not None else getattr(evaluator, "objectives", None)
        if not names:
            raise ValueError("Name the objectives (objectives=[...]) or give the evaluator an `objectives` list.")
        self.objectives = [getattr(name, "__name__", name) for name in names]
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"Objective names must be distinct, got {self.objectives}.")
        self.config = config or SearchConfig()
        self.output_dir = os.fspath(output_dir) if output_dir is not None else None
        self.executor = executor
        self.constraint = constraint
        self.progress = progress
        self.retry_failed = retry_failed
        self.toolbox = make_toolbox(space, self.config)
        self._fitness = fitness_class(len(self.objectives))
        check_space = getattr(evaluator, "check_space", None)
        if check_space is not None:
            check_space(space)
        self._reset_state()

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.cache: dict[tuple[str, float], dict[str, Any]] = {}
        self.records: list[dict[str, Any]] = []
        self.population: list[Genome] = []
        self.generation = -1
        self.history: list[dict[str, float]] = []
        self.reference_point = list(self.config.reference_point) if self.config.reference_point else None
        self._header: dict[str, Any] | None = None

    def _path(self, name: str) -> str | None:
        return os.path.join(self.output_dir, name) if self.output_dir is not None else None

    def _settings(self) -> dict[str, Any]:
        return search_settings(self.space, self.objectives, self.config)

    def _save_checkpoint(self) -> None:
        path = self._path(CHECKPOINT_NAME)
        if path is None:
            return
        checkpoint = Checkpoint(
            generation=self.generation,
            population=self.population,
            rng=self.rng,
            reference_point=self.reference_point,
            history=self.history,
            **self._spent(),
        )
        checkpoint.save(path, self._settings())

    def header(self) -> dict[str, Any]:
        """What the journal's first line records: the settings that decide every evaluation in it, as JSON data.

        The genome space, objectives and search config (`search_settings`: all but ``generations``), the
        evaluator's and the constraint's ``settings()`` (or only their type when they have none), and the version
        of peft-memcontrol. Made once per run (an `InnerLoop`'s settings hash every image of its folders): the
        references and the proxy-fidelity check that follow a run key their stored results by the header its
        evaluations were made under.
        """
        if self._header is None:
            header = {
                **self._settings(),
                "evaluator": _settings_of(self.evaluator),
                "constraint": None if self.constraint is None else _settings_of(self.constraint),
                "peft_memcontrol": __version__,
            }
            self._header = json.loads(json.dumps(header, allow_nan=False))
        return copy.deepcopy(self._header)

    def _check_header(self, header: dict[str, Any]) -> None:
        """Refuse a journal written with other settings than ``header`` (this search's), naming the fields that
        differ."""
        path = self._path(JOURNAL_NAME)
        written = Journal.read_header(path)
        if written is None:
            if os.path.exists(self._path(CHECKPOINT_NAME)):
                raise JournalError(
                    f"{self._path(CHECKPOINT_NAME)} has no journal beside it ({path}), so its evaluations are lost: "
                    f"{_AFRESH}"
                )
            return
        differences = _differences(written, header)
        if differences:
            raise JournalError(
                f"{path} was written by a search with other settings, so its evaluations cannot be reused: "
                + "; ".join(differences)
                + f". Resume with the journal's settings (only `generations` may change), or {_AFRESH}"
            )
        for name in ("evaluator", "constraint"):
            if written[name] is not None and "settings" not in written[name]:
                logger.warning(
                    "The %s %s has no settings() method: %s is resumed without checking that its evaluations were "
                    "made with the same %s settings.",
                    name,
                    written[name]["type"],
                    path,
                    name,
                )

    def _load(self, header: dict[str, Any]) -> None:
        """Rebuild the cache from the journal (less the failures to retry), and the generation state from the
        checkpoint, unless a retried evaluation belongs to a generation it holds: then the search replays from its
        first generation."""
        self._check_header(header)
        for record in Journal.read(self._path(JOURNAL_NAME), num_values=len(self.objectives)):
            self._remember(record)
        retried = [record for record in self.cache.values() if self._retries(record)]
        for record in retried:
            del self.cache[(record["key"], float(record["budget"]))]
        if retried:
            logger.warning(
                "Evaluating again %d candidate(s) whose evaluation failed (retry_failed=%r), first: genome %s, %s",
                len(retried),
                self.retry_failed,
                retried[0]["key"],
                retried[0].get("error"),
            )
        path = self._path(CHECKPOINT_NAME)
        if not os.path.exists(path):
            return
        checkpoint = Checkpoint.load(path, self._settings())
        if any(record["generation"] <= checkpoint.generation for record in retried):
            return  # replay: the generations from the first one on must select with the new values
        self.generation = checkpoint.generation
        self.population = checkpoint.population
        self.rng = checkpoint.rng
        self.reference_point = checkpoint.reference_point
        self.history = checkpoint.history

    def _remember(self, record: dict[str, Any]) -> None:
        """File a record; a later record of the same genome and budget (a retry) supersedes an earlier one."""
        self.cache[(record["key"], float(record["budget"]))] = record
        self.records.append(record)

    def _retries(self, record: dict[str, Any]) -> bool:
        """Whether a resumed search evaluates the candidate of this (latest) record again (``retry_failed``)."""
        if record["status"] != "error" or self.retry_failed == "none":
            return False
        return self.retry_failed == "all" or record.get("error_kind") == TRANSIENT

    def _spent(self, generation: int | None = None) -> dict[str, Any]:
        """Evaluations run (failed attempts that were retried included; cache hits and infeasible candidates not),
        their summed budget fractions and seconds: all of them, or those of generations up to ``generation``."""
        records = [
            record
            for record in self.records
            if record["status"] != "infeasible" and (generation is None or record["generation"] <= generation)
        ]
        return {
            "evaluations": len(records),
            "cost": sum(float(record["budget"]) for record in records),
            "seconds": sum(float(record.get("seconds", 0.0)) for record in records),
        }

    # ------------------------------------------------------------------ evaluation
    def _evaluate(
        self, genomes: Sequence[Genome], budget: float, journal: Journal | None, generation: int, rung: int
    ) -> list[dict[str, Any]]:
        """Records of ``genomes`` at ``budget``: from the cache, or evaluated (each unique genome once)."""
        candidates: dict[str, Candidate] = {}
        for genome in genomes:
            candidate = self.space.decode(genome)
            if (candidate.key, budget) not in self.cache:
                candidates.setdefault(candidate.key, candidate)
        tasks = []
        for candidate in candidates.values():
            if self.constraint is not None and not self.constraint(candidate):
                self._finish(candidate, budget, journal, generation, rung, self._infeasible())
            else:
                tasks.append(candidate)
        if tasks:
            bar = tqdm(
                total=len(tasks),
                desc=f"generation {generation} candidates" + (f" (budget {budget:g})" if budget < 1 else ""),
                unit="candidate",
                leave=False,
                disable=not self.progress,
            )
            results = self._executor.map(self.evaluator, [(c.to_dict(), budget) for c in tasks], self.objectives)
            for index, result in results:
                self._finish(tasks[index], budget, journal, generation, rung, result)
                bar.update(1)
            bar.close()
        return [self.cache[(self.space.key(genome), budget)] for genome in genomes]

    def _infeasible(self) -> dict[str, Any]:
        return {
            "values": [WORST_VALUE] * len(self.objectives),
            "status": "infeasible",
            "error": "violates the search's constraint",
            "seconds": 0.0,
        }

    def _finish(
        self,
        candidate: Candidate,
        budget: float,
        journal: Journal | None,
        generation: int,
        rung: int,
        result: dict[str, Any],
    ) -> None:
        record = {
            "key": candidate.key,
            "genome": list(candidate.genome),
            "learning_rate": candidate.learning_rate,
            "budget": budget,
            "generation": generation,
            "rung": rung,
            **result,
        }
        if journal is not None:
            journal.append(record)
        self._remember(record)

    def _individuals(self, genomes: Sequence[Genome], records: Sequence[dict[str, Any]]) -> list[Individual]:
        return as_individuals(genomes, [record["values"] for record in records], self._fitness)

    # ------------------------------------------------------------------ selection and variation
    def _select(self, individuals: list[Individual], k: int) -> list[Individual]:
        """The toolbox's ``select`` on the search's own random generator."""
        with private_random(self.rng):
            return self.toolbox.select(individuals, k)

    def _vary(self, population: list[Individual]) -> list[Genome]:
        """One round of offspring genomes: the toolbox's parent tournaments, then its crossover and mutation (DEAP's
        ``varAnd``)."""
        config = self.config
        count = config.offspring + config.offspring % 2  # crossover takes the parents in pairs
        with private_random(self.rng):
            parents = self.toolbox.select_parents(population, count)
            offspring = algorithms.varAnd(
                parents, self.toolbox, config.crossover_probability, config.mutation_probability
            )
        return [self.space.canonical(child) for child in offspring[: config.offspring]]

    def _offspring(self, population: list[Individual], generation: int) -> list[Genome]:
        """This generation's offspring, new candidates only: none equal to a genome evaluated in an earlier generation
        or to another offspring (learning rates within ``learning_rate_tolerance`` count as equal). With a surrogate
        and enough evaluations, ``surrogate_pool`` times more are drawn and the most promising kept.

        A share of them (``group_move_share``) comes from group moves and is not screened.

        Reads only the records of earlier generations, in key order: a resumed search draws the same offspring."""
        count = self._offspring_count(generation)
        earlier = sorted(
            (record for record in self.cache.values() if record["generation"] < generation),
            key=lambda record: (record["key"], float(record["budget"])),
        )
        seen = GenomeIndex(self.space, self.config.learning_rate_tolerance)
        for record in earlier:
            seen.add(record["genome"])
        training = [record for record in earlier if record["status"] == "ok" and float(record["budget"]) == 1.0]
        grouped = self._new_children(self._group_moves, population, seen, self._group_move_count(count), REDRAW_ROUNDS)
        count -= len(grouped)
        screen = self.config.surrogate != "none" and can_screen(self.space, len(training))
        pool = self.config.surrogate_pool if screen else 1
        children = self._new_children(self._vary, population, seen, count * pool, REDRAW_ROUNDS * pool)
        if screen:
            feasible, infeasible = self._split_by_constraint(children)
            genomes, values = [r["genome"] for r in training], [r["values"] for r in training]
            chosen = choose_offspring(self.space, genomes, values, feasible, min(count, len(feasible)), self.rng)
            children = [feasible[index] for index in chosen] + infeasible[: count - len(chosen)]
        return grouped + children

    def _new_children(
        self,
        vary: Callable[[list[Individual]], list[Genome]],
        population: list[Individual],
        seen: GenomeIndex,
        wanted: int,
        rounds: int,
    ) -> list[Genome]:
        """Up to ``wanted`` children from at most ``rounds`` calls of ``vary``, none in ``seen`` (they are added)."""
        children: list[Genome] = []
        for _ in range(rounds):
            if len(children) == wanted:
                break
            for child in vary(population):
                if child not in seen and len(children) < wanted:
                    seen.add(child)
                    children.append(child)
        return children

    def _group_move_count(self, count: int) -> int:
        """How many of ``count`` offspring come from group moves: ``group_move_share`` of them, rounded (none when
        the units have no groups)."""
        if not hasattr(self.toolbox, "mutate_group"):
            return 0
        return round(self.config.group_move_share * count)

    def _group_moves(self, population: list[Individual]) -> list[Genome]:
        """One round of group-move offspring (as many as a generation has offspring): the toolbox's parent
        tournaments, then its ``mutate_group`` on a copy of each parent (no crossover: the move is the whole change)."""
        with private_random(self.rng):
            parents = self.toolbox.select_parents(population, self.config.offspring)
            children = [self.toolbox.mutate_group(self.toolbox.clone(parent))[0] for parent in parents]
        return [self.space.canonical(child) for child in children]

    def _split_by_constraint(self, genomes: list[Genome]) -> tuple[list[Genome], list[Genome]]:
        """``genomes`` that meet the search's constraint, and those that do not (the surrogate screens only the first:
        an infeasible offspring trains nothing and takes a place of the generation)."""
        if self.constraint is None:
            return genomes, []
        meets = [self.constraint(self.space.decode(genome)) for genome in genomes]
        return [g for g, ok in zip(genomes, meets) if ok], [g for g, ok in zip(genomes, meets) if not ok]

    def _offspring_count(self, generation: int) -> int:
        """Offspring per generation, or fewer in the generation that reaches ``max_evaluations``."""
        if self.config.max_evaluations is None:
            return self.config.offspring
        return min(self.config.offspring, self._evaluations_left(generation))

    def _evaluations_left(self, generation: int) -> int | float:
        """Evaluations ``max_evaluations`` leaves after the generations before ``generation`` (infinite without)."""
        if self.config.max_evaluations is None:
            return math.inf
        return max(0, self.config.max_evaluations - self._spent(generation - 1)["evaluations"])

    def _initial_population(self) -> list[Genome]:
        """Seeded masks (all on, all off, reference-style), then distinct random genomes up to the population size
        (or ``max_evaluations``, when smaller)."""
        size = min(self.config.population_size, self._evaluations_left(0))
        genomes = self.space.seed_genomes()[:size]
        seen = GenomeIndex(self.space, self.config.learning_rate_tolerance)
        for genome in genomes:
            seen.add(genome)
        attempts = 0
        while len(genomes) < size and attempts < 100 * self.config.population_size:
            genome = self.space.random_genome(self.rng)
            attempts += 1
            if genome not in seen:
                seen.add(genome)
                genomes.append(genome)
        return genomes

    def _check_constraint_can_be_met(self) -> None:
        """Refuse, before the first evaluation, a share constraint that no genome meets, naming the smallest share.

        Applies to constraints with a ``share(candidate)`` method and a ``max_share`` (`TrainableShareConstraint`): a
        trainable share adds up over units, so the genome of least share is found unit by unit
        (`GenomeSpace.cheapest`) and the constraint is asked about it."""
        share = getattr(self.constraint, "share", None)
        max_share = getattr(self.constraint, "max_share", None)
        if share is None or max_share is None:
            return
        cheapest = self.space.decode(self.space.cheapest(share))
        if not self.constraint(cheapest):
            raise UnsatisfiableConstraintError(
                f"No mask of this genome meets the trainable-share constraint (max_share={max_share:g}): the smallest "
                f"achievable share is {share(cheapest):.6g} (unit genes {cheapest.bits}). Allow at least that share "
                "(--max_trainable_share), or search other units (a genome without the fixed units, another method)."
            )

    def _promote(self, genomes: list[Genome], journal: Journal | None, generation: int) -> list[Genome]:
        """Successive halving over ``genomes``: evaluate at each fidelity, keep the best share for the next one."""
        unique = list({self.space.key(g): g for g in genomes}.values())
        for rung, fidelity in enumerate(self.config.fidelities[:-1]):
            records = self._evaluate(unique, fidelity, journal, generation, rung)
            keep = max(1, math.ceil(len(unique) * self.config.promote_fraction))
            selected = self._select(self._individuals(unique, records), keep)
            chosen = {self.space.key(list(ind)) for ind in selected}
            unique = [g for g in unique if self.space.key(g) in chosen]
        return unique

    def _survivors(self, genomes: list[Genome]) -> list[Genome]:
        """The next population: the toolbox's ``select`` over the distinct ``genomes`` at the full budget."""
        unique = list({self.space.key(g): g for g in genomes}.values())
        individuals = self._individuals(unique, self._records(unique))
        return [list(ind) for ind in self._select(individuals, min(self.config.population_size, len(individuals)))]

    # ------------------------------------------------------------------ the loop
    @property
    def _executor(self) -> Any:
        if not hasattr(self, "_executor_obj"):
            self._executor_obj = get_executor(self.executor)
        return self._executor_obj

    def run(self, resume: bool = True) -> SearchResult:
        """Run the search to ``config.generations`` (continuing a checkpointed one when ``resume``).

        With ``resume=False`` an output folder that already holds a journal is refused rather than overwritten. The
        folder is locked while the search runs: a second search in it is refused (`SearchFolderBusyError`).
        """
        if self.output_dir is None:
            return self._run(resume)
        os.makedirs(self.output_dir, exist_ok=True)
        with search_folder_lock(self.output_dir):
            return self._run(resume)

    def _run(self, resume: bool) -> SearchResult:
        self._reset_state()
        if self.constraint is not None:
            self._check_constraint_can_be_met()  # before the journal: a refused search leaves no files behind
        journal = None
        if self.output_dir is not None:
            if not resume and os.path.exists(self._path(JOURNAL_NAME)):
                raise FileExistsError(
                    f"{self._path(JOURNAL_NAME)} exists: resume the search (resume=True; `memcontrol search` without "
                    f"--no_resume), or {_AFRESH}"
                )
            header = self.header()
            self._load(header)
            journal = Journal(self._path(JOURNAL_NAME), header=header)
        total = self.config.generations + 1
        bar = tqdm(total=total, initial=self.generation + 1, desc="generations", unit="gen", disable=not self.progress)
        try:
            if self.generation < 0:
                genomes = self._initial_population()
                self._evaluate(genomes, 1.0, journal, 0, len(self.config.fidelities) - 1)
                self.population = self._survivors(genomes)
                self._end_generation(0)
                bar.update(1)
            for generation in range(self.generation + 1, total):
                if not self._evaluations_left(generation):
                    break
                individuals = self._individuals(self.population, self._records(self.population))
                self._select(individuals, len(individuals))  # assigns the crowding distances the tournaments read
                offspring = self._offspring(individuals, generation)
                offspring = self._promote(offspring, journal, generation)
                self._evaluate(offspring, 1.0, journal, generation, len(self.config.fidelities) - 1)
                present = {self.space.key(g) for g in self.population}
                union = self.population + [g for g in offspring if self.space.key(g) not in present]
                self.population = self._survivors(union)
                self._end_generation(generation)
                bar.update(1)
        finally:
            bar.close()
            if journal is not None:
                journal.close()
            if hasattr(self, "_executor_obj"):
                self._executor_obj.close()
                del self._executor_obj
        return self.result()

    def _records(self, genomes: Sequence[Genome]) -> list[dict[str, Any]]:
        return [self.cache[(self.space.key(genome), 1.0)] for genome in genomes]

    def _end_generation(self, generation: int) -> None:
        self.generation = generation
        # Up to this generation: a replay (after a retry) has later generations' records in its cache already.
        values = [record["values"] for record in self._full_ok_records() if record["generation"] <= generation]
        if self.reference_point is None and values:
            self.reference_point = default_reference_point(values)
        volume = hypervolume(values, self.reference_point) if values and self.reference_point else 0.0
        self.history.append(
            {
                "generation": generation,
                "hypervolume": volume,
                **self._spent(generation),
            }
        )
        self._save_checkpoint()

    def _full_ok_records(self) -> list[dict[str, Any]]:
        """The successful full-budget records in key order, not in the order they finished (a process pool finishes
        them in any order): of genomes with equal values the front keeps the first, which must not depend on it."""
        records = [r for (_, budget), r in self.cache.items() if budget == 1.0 and r["status"] == "ok"]
        return sorted(records, key=lambda record: record["key"])

    def result(self) -> SearchResult:
        """The current front and history (also usable on a search loaded but not run)."""
        records = self._full_ok_records()
        front_indices = non_dominated_indices([r["values"] for r in records])
        front = [
            FrontPoint(
                candidate=self.space.decode(records[i]["genome"]),
                scores=dict(zip(self.objectives, records[i]["values"])),
                record=records[i],
            )
            for i in front_indices
        ]
        front.sort(key=lambda point: ([point.scores[name] for name in self.objectives], point.candidate.key))
        return SearchResult(
            space=self.space,
            objectives=list(self.objectives),
            front=front,
            history=list(self.history),
            reference_point=self.reference_point,
            records=list(self.records),
            config_kwargs=dict(getattr(self.evaluator, "config_kwargs", {}) or {}),
            search_info={
                "seed": self.config.seed,
                "population_size": self.config.population_size,
                "generations": self.generation,
                "evaluations": self._spent()["evaluations"],
                "fidelities": list(self.config.fidelities),
                "peft_memcontrol": __version__,
            },
        )


_AFRESH = (
    "start afresh in another output folder (`output_dir`, `--output_dir` of `memcontrol search`) or delete "
    f"{JOURNAL_NAME} and {CHECKPOINT_NAME} in this one."
)


_ABSENT = object()
"""A header field one of two headers lacks (`_differences`)."""


def _settings_of(component: Any) -> dict[str, Any]:
    """An evaluator's or constraint's part of the journal header: its type, and its ``settings()`` when it has them."""
    named = component if hasattr(component, "__qualname__") else type(component)
    entry: dict[str, Any] = {"type": f"{named.__module__}.{named.__qualname__}"}
    settings = getattr(component, "settings", None)
    if callable(settings):
        entry["settings"] = jsonable(settings())
    return entry


def _differences(written: Any, current: Any, path: str = "") -> list[str]:
    """The fields (dotted paths) where two headers differ, each with its value in the journal and now."""
    if isinstance(written, dict) and isinstance(current, dict):
        return [
            difference
            for name in sorted(set(written) | set(current), key=str)
            for difference in _differences(
                written.get(name, _ABSENT), current.get(name, _ABSENT), f"{path}.{name}" if path else name
            )
        ]
    if written == current:
        return []
    return [f"{path or 'header'}: {_short(written)} in the journal, {_short(current)} now"]


def _short(value: Any, limit: int = 80) -> str:
    """A header value for a message: its JSON, cut at ``limit`` characters."""
    text = "absent" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
