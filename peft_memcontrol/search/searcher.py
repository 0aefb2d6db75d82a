"""`MaskSearcher`: DEAP NSGA-II over MemControl masks (plus a learning-rate gene), resumable and multi-fidelity.

The outer loop of the method (method.md, "Outer loop"): a population of genomes (`GenomeSpace`) is evaluated by an
evaluator (the inner loop, `InnerLoop`, or any callable), sorted by DEAP's non-dominated sorting and crowding
(``selNSGA2``), and varied with operators suited to each gene: uniform crossover and bit flips (or uniform integer
resets) for the unit genes, simulated binary crossover and polynomial mutation for the bounded learning-rate gene.

* **No genome is evaluated twice**: results are cached by (genome, budget); the cache is rebuilt from the journal.
* **Never lose work**: each finished evaluation is appended to ``journal.jsonl`` and each generation written to
  ``checkpoint.json`` (JSON, atomic). A killed search resumes where it stopped; serial runs resume to exactly the
  front an uninterrupted run reaches, because the random state is checkpointed and evaluations are deterministic.
* **Multi-fidelity** (not in the reference code): with ``fidelities=(0.25, 1.0)`` every offspring is first trained
  on a quarter of the budget and only the best ``promote_fraction`` (by non-dominated rank and crowding among the
  offspring) is promoted to the next budget: successive halving inside each generation. Only full-budget results
  enter the population and the front.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from deap import base, tools

from .evaluation import WORST_VALUE, Evaluator
from .executors import get_executor
from .genome import Candidate, Genome, GenomeSpace
from .journal import Journal, atomic_write_json, read_json
from .pareto import best_within, hypervolume, knee_point, non_dominated_indices


CHECKPOINT_NAME = "checkpoint.json"
JOURNAL_NAME = "journal.jsonl"
CHECKPOINT_FORMAT = "peft-memcontrol-search/1"


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

    @property
    def offspring(self) -> int:
        return self.num_offspring or self.population_size


@dataclass
class FrontPoint:
    """One mask of a Pareto front: its candidate, objective values by name, and its journal record."""

    candidate: Candidate
    scores: dict[str, float]
    record: dict[str, Any] = field(repr=False)


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
    """

    space: GenomeSpace
    objectives: list[str]
    front: list[FrontPoint]
    history: list[dict[str, float]]
    reference_point: list[float] | None
    records: list[dict[str, Any]]
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    search_info: dict[str, Any] = field(default_factory=dict)

    @property
    def hypervolume(self) -> float:
        return self.history[-1]["hypervolume"] if self.history else 0.0

    def front_values(self) -> list[list[float]]:
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

    def to_config(self, point: FrontPoint, **kwargs: Any):
        """The point's mask as a `MemControlConfig` that ``get_peft_model`` takes (scores and search recorded).

        ``kwargs`` override the search's `config_kwargs` (e.g. ``mask_semantics``, ``method_options``).
        """
        from ..tuners import MemControlConfig

        candidate = point.candidate
        if len(candidate.masks) != 1:
            raise ValueError(
                f"This mask mixes methods {sorted(candidate.masks)}; a MemControlConfig has one method. Apply one "
                "config per method (`candidate.masks`)."
            )
        method, mask = next(iter(candidate.masks.items()))
        search = {**self.search_info, "genome": list(candidate.genome), "layout": self.space.name}
        search.update({k: point.record.get(k) for k in ("generation",)})
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


def _fitness_class(num_objectives: int) -> type:
    """A DEAP fitness with ``num_objectives`` minimized objectives (built without DEAP's global ``creator``)."""
    return type(f"MinimizedFitness{num_objectives}", (base.Fitness,), {"weights": (-1.0,) * num_objectives})


class _Individual(list):
    """A genome with a DEAP fitness (what ``selNSGA2`` sorts)."""

    fitness: base.Fitness


@contextmanager
def _deap_random(rng: random.Random) -> Iterator[None]:
    """Run DEAP's operators (which draw from the global ``random``) on the search's private generator."""
    saved = random.getstate()
    random.setstate(rng.getstate())
    try:
        yield
    finally:
        rng.setstate(random.getstate())
        random.setstate(saved)


def _rng_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from_json(state: Sequence[Any]) -> random.Random:
    rng = random.Random()
    rng.setstate((state[0], tuple(state[1]), state[2]))
    return rng


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
    ) -> None:
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
        self._fitness_cls = _fitness_class(len(self.objectives))
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
        self.evaluations = 0
        self.cost = 0.0
        self.seconds = 0.0

    def _path(self, name: str) -> str | None:
        return os.path.join(self.output_dir, name) if self.output_dir is not None else None

    def _settings(self) -> dict[str, Any]:
        """What must not change between a search and its resumption (``generations`` may grow)."""
        config = asdict(self.config)
        config.pop("generations")
        config["fidelities"] = list(config["fidelities"])
        return {"space": self.space.to_dict(), "objectives": self.objectives, "config": config}

    def _save_checkpoint(self) -> None:
        path = self._path(CHECKPOINT_NAME)
        if path is None:
            return
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
                "settings": self._settings(),
            },
        )

    def _load(self) -> None:
        """Rebuild the cache from the journal and the generation state from the checkpoint."""
        for record in Journal.read(self._path(JOURNAL_NAME)):
            self._remember(record)
        path = self._path(CHECKPOINT_NAME)
        if not os.path.exists(path):
            return
        state = read_json(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a checkpoint of this searcher (format {state.get('format')!r}).")
        if state["settings"] != self._settings():
            raise ValueError(
                f"{path} was written by a search with other settings; resume with the same space, objectives and "
                "search config (only `generations` may change), or use a new output folder."
            )
        self.generation = state["generation"]
        self.population = [list(genome) for genome in state["population"]]
        self.rng = _rng_from_json(state["rng_state"])
        self.reference_point = state["reference_point"]
        self.history = state["history"]

    def _remember(self, record: dict[str, Any]) -> None:
        self.cache[(record["key"], float(record["budget"]))] = record
        self.records.append(record)
        if record["status"] != "infeasible":
            self.evaluations += 1
            self.cost += float(record["budget"])
            self.seconds += float(record.get("seconds", 0.0))

    # ------------------------------------------------------------------ evaluation
    def _evaluate(
        self, genomes: Sequence[Genome], budget: float, journal: Journal | None, generation: int, rung: int
    ) -> list[dict[str, Any]]:
        """Records of ``genomes`` at ``budget``: from the cache, or evaluated (each unique genome once)."""
        from tqdm.auto import tqdm

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
            executor = self._executor
            bar = tqdm(
                total=len(tasks),
                desc=f"generation {generation} candidates" + (f" (budget {budget:g})" if budget < 1 else ""),
                unit="candidate",
                leave=False,
                disable=not self.progress,
            )
            results = executor.map(self.evaluator, [(c.to_dict(), budget) for c in tasks], self.objectives)
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

    def _individuals(self, genomes: Sequence[Genome], records: Sequence[dict[str, Any]]) -> list[_Individual]:
        individuals = []
        for genome, record in zip(genomes, records):
            individual = _Individual(genome)
            individual.fitness = self._fitness_cls(tuple(record["values"]))
            individuals.append(individual)
        return individuals

    # ------------------------------------------------------------------ variation
    def _crowded_tournament(self, individuals: list[_Individual], k: int) -> list[_Individual]:
        """Binary tournaments on (non-dominated rank, crowding distance), as in NSGA-II; needs ``selNSGA2`` first."""
        rank = {}
        for level, front in enumerate(tools.sortNondominated(individuals, len(individuals))):
            for individual in front:
                rank[id(individual)] = level
        chosen = []
        for _ in range(k):
            a, b = random.sample(individuals, 2)
            key_a = (rank[id(a)], -a.fitness.crowding_dist)
            key_b = (rank[id(b)], -b.fitness.crowding_dist)
            chosen.append(a if key_a <= key_b else b)
        return chosen

    def _vary(self, population: list[_Individual]) -> list[Genome]:
        """Offspring genomes: crowded-tournament parents, crossover and mutation per gene type."""
        space, config = self.space, self.config
        n = space.num_unit_genes
        indpb = config.gene_mutation_probability or 1.0 / space.num_genes
        low, high = space.log_learning_rate_bounds
        count = config.offspring + config.offspring % 2
        with _deap_random(self.rng):
            parents = self._crowded_tournament(population, count)
            offspring = [list(parent) for parent in parents]
            for first, second in zip(offspring[::2], offspring[1::2]):
                if random.random() < config.crossover_probability:
                    units_a, units_b = first[:n], second[:n]
                    tools.cxUniform(units_a, units_b, 0.5)
                    first[:n], second[:n] = units_a, units_b
                    if space.has_learning_rate:
                        lr_a, lr_b = [first[n]], [second[n]]
                        tools.cxSimulatedBinaryBounded(lr_a, lr_b, config.crossover_eta, low, high)
                        first[n], second[n] = lr_a[0], lr_b[0]
            for child in offspring:
                if random.random() < config.mutation_probability:
                    units = child[:n]
                    if space.choices is None:
                        tools.mutFlipBit(units, indpb)
                    else:
                        tools.mutUniformInt(units, 0, space.unit_gene_max, indpb)
                    child[:n] = units
                    if space.has_learning_rate:
                        lr = [child[n]]
                        tools.mutPolynomialBounded(lr, config.mutation_eta, low, high, indpb)
                        child[n] = lr[0]
        return [space.canonical(child) for child in offspring[: config.offspring]]

    def _initial_population(self) -> list[Genome]:
        """Seeded masks (all on, all off, reference-style), then distinct random genomes up to the population size."""
        genomes = self.space.seed_genomes()[: self.config.population_size]
        keys = {self.space.key(genome) for genome in genomes}
        attempts = 0
        while len(genomes) < self.config.population_size and attempts < 100 * self.config.population_size:
            genome = self.space.random_genome(self.rng)
            attempts += 1
            if self.space.key(genome) not in keys:
                keys.add(self.space.key(genome))
                genomes.append(genome)
        return genomes

    def _promote(self, genomes: list[Genome], journal: Journal | None, generation: int) -> list[Genome]:
        """Successive halving over ``genomes``: evaluate at each fidelity, keep the best share for the next one."""
        unique = list({self.space.key(g): g for g in genomes}.values())
        for rung, fidelity in enumerate(self.config.fidelities[:-1]):
            records = self._evaluate(unique, fidelity, journal, generation, rung)
            keep = max(1, math.ceil(len(unique) * self.config.promote_fraction))
            individuals = self._individuals(unique, records)
            selected = tools.selNSGA2(individuals, keep)
            chosen = {self.space.key(list(ind)) for ind in selected}
            unique = [g for g in unique if self.space.key(g) in chosen]
        return unique

    # ------------------------------------------------------------------ the loop
    @property
    def _executor(self) -> Any:
        if not hasattr(self, "_executor_obj"):
            self._executor_obj = get_executor(self.executor)
        return self._executor_obj

    def run(self, resume: bool = True) -> SearchResult:
        """Run the search to ``config.generations`` (continuing a checkpointed one when ``resume``).

        With ``resume=False`` an output folder that already holds a journal is refused rather than overwritten.
        """
        from tqdm.auto import tqdm

        self._reset_state()
        journal = None
        if self.output_dir is not None:
            os.makedirs(self.output_dir, exist_ok=True)
            if not resume and os.path.exists(self._path(JOURNAL_NAME)):
                raise FileExistsError(
                    f"{self._path(JOURNAL_NAME)} exists: resume the search (resume=True, --resume) or choose another "
                    "output folder."
                )
            self._load()
            journal = Journal(self._path(JOURNAL_NAME))
        total = self.config.generations + 1
        bar = tqdm(total=total, initial=self.generation + 1, desc="generations", unit="gen", disable=not self.progress)
        try:
            if self.generation < 0:
                genomes = self._initial_population()
                records = self._evaluate(genomes, 1.0, journal, 0, len(self.config.fidelities) - 1)
                self.population = self._select(genomes, records)
                self._end_generation(0)
                bar.update(1)
            for generation in range(self.generation + 1, total):
                individuals = self._individuals(self.population, self._records(self.population))
                tools.selNSGA2(individuals, len(individuals))  # assigns crowding distances for the tournaments
                offspring = self._vary(individuals)
                offspring = self._promote(offspring, journal, generation)
                self._evaluate(offspring, 1.0, journal, generation, len(self.config.fidelities) - 1)
                present = {self.space.key(g) for g in self.population}
                union = self.population + [g for g in offspring if self.space.key(g) not in present]
                self.population = self._select(union, self._records(union))
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

    def _select(self, genomes: list[Genome], records: list[dict[str, Any]]) -> list[Genome]:
        unique = list({self.space.key(g): (g, r) for g, r in zip(genomes, records)}.values())
        individuals = self._individuals([g for g, _ in unique], [r for _, r in unique])
        return [list(ind) for ind in tools.selNSGA2(individuals, min(self.config.population_size, len(individuals)))]

    def _end_generation(self, generation: int) -> None:
        self.generation = generation
        values = [record["values"] for record in self._full_ok_records()]
        if self.reference_point is None and values:
            self.reference_point = _default_reference_point(values)
        volume = hypervolume(values, self.reference_point) if values and self.reference_point else 0.0
        self.history.append(
            {
                "generation": generation,
                "hypervolume": volume,
                "evaluations": self.evaluations,
                "cost": self.cost,
                "seconds": self.seconds,
            }
        )
        self._save_checkpoint()

    def _full_ok_records(self) -> list[dict[str, Any]]:
        return [r for (_, budget), r in self.cache.items() if budget == 1.0 and r["status"] == "ok"]

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
        from .. import __version__

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
                "evaluations": self.evaluations,
                "fidelities": list(self.config.fidelities),
                "peft_memcontrol": __version__,
            },
        )


def _default_reference_point(values: Sequence[Sequence[float]]) -> list[float]:
    """The worst value of each objective plus 10% of its range (or of its magnitude when the range is 0)."""
    columns = list(zip(*values))
    reference = []
    for column in columns:
        low, high = min(column), max(column)
        span = high - low if high > low else max(abs(high), 1.0)
        reference.append(high + 0.1 * span)
    return reference
