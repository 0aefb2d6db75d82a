#!/usr/bin/env python
"""Search efficiency of record: how much of the true front each search finds within 20, 50 and 100 unique
evaluations, on closed-form problems shaped like the real one (`peft_memcontrol.search.synthetic`).

Problems (fixed instances; true fronts by enumeration, the learning rate on its gene's grid):

* 16 bits with pairwise interactions and evaluation noise (the 16-slot masked-attention genome);
* 13 bits + a learning-rate gene whose optimum moves with the mask and whose rate raises memorization, with noise
  (the reference's 13-bit SVDiff genome);
* a 16-bit knapsack (correlated weights and values, quality collapses past a capacity);
* a 16-bit deceptive problem (trap functions on blocks of 4 bits), twice: units named without structure
  (``unit.0``, ...), and named by block (``block.0.unit.0``, ...) as a real UNet's units are
  (``down_blocks.1.attentions.0``), so that the search's group moves (`SearchConfig.group_move_share`) see the blocks.

The units of the other problems are named by block of 4 too (``block.b.unit.i``): a real genome always has names, so
the group moves are on there as well and the table shows what they cost where the blocks mean nothing.

Searches: `MaskSearcher` (population 20) in each surrogate mode, with the surrogate at population 10 (the default of
`memcontrol search` for budgets up to 100 evaluations), and so without group moves (``group_move_share=0``, the
default before them); Optuna's NSGAIISampler (population 20) and TPESampler (Optuna is an optional benchmark
dependency: ``pip install "peft-memcontrol[bench]"``) and random search. Each search runs until it has evaluated 100 distinct genomes (a genome proposed again is answered from a cache and costs nothing; the
noisy value the search sees is fixed per genome). Measure: the hypervolume of the true (noise-free) values of the
genomes evaluated so far, as a fraction of the true front's, with the reference point at the true front's nadir plus
10% of its range; median and interquartile range over the seeds.

    python benchmarks/bench_search_efficiency.py --seeds 7 --output benchmarks/results/search_efficiency.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import optuna
from _results import publish

from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig, hypervolume
from peft_memcontrol.search.baselines import random_search
from peft_memcontrol.search.config import SURROGATES
from peft_memcontrol.search.pareto import non_dominated_indices
from peft_memcontrol.search.synthetic import (
    ClosedFormProblem,
    DeceptiveMaskProblem,
    KnapsackMaskProblem,
    SyntheticMaskProblem,
    true_front,
)


CHECKPOINTS = (20, 50, 100)
"""Unique evaluations at which the fronts are measured."""

POPULATION = 20


BLOCK = 4
"""Units per named block (``block.b.unit.i``), the deceptive problem's trap block."""


def bit_space(num_bits: int, learning_rate: bool = False, named: bool = True) -> GenomeSpace:
    """Units ``block.b.unit.i`` (blocks of `BLOCK`), or ``unit.i`` when not ``named``."""
    units = tuple(f"block.{i // BLOCK}.unit.{i % BLOCK}" if named else f"unit.{i}" for i in range(num_bits))
    return GenomeSpace(units=units) if learning_rate else GenomeSpace(units=units, learning_rate_bounds=None)


PROBLEMS: dict[str, tuple[ClosedFormProblem, GenomeSpace]] = {
    "16 bits, interactions, noise": (SyntheticMaskProblem(16, seed=1, evaluation_noise=0.01), bit_space(16)),
    "13 bits + learning rate, noise": (
        SyntheticMaskProblem(13, seed=2, evaluation_noise=0.01, learning_rate_coupling=1.0),
        bit_space(13, learning_rate=True),
    ),
    "knapsack, 16 bits": (KnapsackMaskProblem(16, seed=3), bit_space(16)),
    "deceptive, 16 bits, units named by block": (DeceptiveMaskProblem(16, seed=4, block=BLOCK), bit_space(16)),
    "deceptive, 16 bits, units without names": (
        DeceptiveMaskProblem(16, seed=4, block=BLOCK),
        bit_space(16, named=False),
    ),
}


# ---------------------------------------------------------------------------------------------------- the searches
def run_mask_searcher(
    problem: ClosedFormProblem,
    space: GenomeSpace,
    seed: int,
    budget: int,
    surrogate: str,
    population: int = POPULATION,
    group_move_share: float = SearchConfig.group_move_share,
) -> list[list[float]]:
    config = SearchConfig(
        population_size=population,
        generations=budget,
        max_evaluations=budget,
        surrogate=surrogate,
        group_move_share=group_move_share,
        seed=seed,
    )
    result = MaskSearcher(space, problem, config=config, progress=False).run()
    return [record["genome"] for record in result.records]


def run_optuna(
    problem: ClosedFormProblem, space: GenomeSpace, budget: int, sampler: optuna.samplers.BaseSampler
) -> list[list[float]]:
    """Ask and tell until ``budget`` distinct genomes are evaluated; a genome asked again is told its cached values."""
    study = optuna.create_study(directions=["minimize"] * 2, sampler=sampler)
    cache: dict[str, list[float]] = {}
    genomes = []
    for _ in range(5 * budget):
        if len(genomes) == budget:
            break
        trial = study.ask()
        genome = [trial.suggest_categorical(f"unit.{i}", [0, 1]) for i in range(space.num_unit_genes)]
        if space.has_learning_rate:
            genome.append(trial.suggest_float("log10_learning_rate", *space.log_learning_rate_bounds))
        candidate = space.decode(genome)
        if candidate.key not in cache:
            cache[candidate.key] = list(problem(candidate).values())
            genomes.append(list(candidate.genome))
        study.tell(trial, cache[candidate.key])
    return genomes


def run_random(problem: ClosedFormProblem, space: GenomeSpace, seed: int, budget: int) -> list[list[float]]:
    return [record["genome"] for record in random_search(space, problem, budget, seed=seed)[1]]


SEARCHES: dict[str, Callable[[ClosedFormProblem, GenomeSpace, int, int], list[list[float]]]] = {
    **{
        f"MaskSearcher, surrogate={surrogate!r}": (
            lambda problem, space, seed, budget, surrogate=surrogate: run_mask_searcher(
                problem, space, seed, budget, surrogate
            )
        )
        for surrogate in SURROGATES
    },
    "MaskSearcher, surrogate='gp', population 10": lambda problem, space, seed, budget: run_mask_searcher(
        problem, space, seed, budget, "gp", population=10
    ),
    "MaskSearcher, surrogate='gp', population 10, no group moves": lambda problem, space, seed, budget: (
        run_mask_searcher(problem, space, seed, budget, "gp", population=10, group_move_share=0.0)
    ),
    "Optuna NSGAIISampler": lambda problem, space, seed, budget: run_optuna(
        problem, space, budget, optuna.samplers.NSGAIISampler(population_size=POPULATION, seed=seed)
    ),
    "Optuna TPESampler": lambda problem, space, seed, budget: run_optuna(
        problem, space, budget, optuna.samplers.TPESampler(seed=seed)
    ),
    "random search": run_random,
}


# ---------------------------------------------------------------------------------------------------- the measure
def reference_point(front: np.ndarray) -> np.ndarray:
    low, high = front.min(axis=0), front.max(axis=0)
    return high + 0.1 * (high - low)


def hypervolume_fractions(
    problem: ClosedFormProblem, genomes: list[list[float]], front: np.ndarray, budget_points: tuple[int, ...]
) -> list[float]:
    """Hypervolume of the true values of the first ``n`` genomes, over the true front's, for each ``n``."""
    reference = reference_point(front)
    total = hypervolume(front, reference)
    num_bits = problem.num_bits
    values = np.array(
        [problem.values(g[:num_bits], 10 ** g[num_bits] if len(g) > num_bits else None) for g in genomes]
    )
    fractions = []
    for n in budget_points:
        found = values[:n]
        fractions.append(hypervolume(found[non_dominated_indices(found)], reference) / total)
    return fractions


def run_task(task: tuple[str, str, int]) -> tuple[str, str, int, list[float], int, float]:
    problem_name, search_name, seed = task
    problem, space = PROBLEMS[problem_name]
    start = time.perf_counter()
    genomes = SEARCHES[search_name](problem, space, seed, max(CHECKPOINTS))
    seconds = time.perf_counter() - start
    keys = [space.key(genome) for genome in genomes]
    if len(set(keys)) != len(keys):
        raise AssertionError(f"{search_name} evaluated a genome twice on {problem_name}.")
    fractions = hypervolume_fractions(problem, genomes, TRUE_FRONTS[problem_name], CHECKPOINTS)
    return problem_name, search_name, seed, fractions, len(genomes), seconds


TRUE_FRONTS: dict[str, np.ndarray] = {}


def load_true_fronts() -> None:
    for name, (problem, space) in PROBLEMS.items():
        TRUE_FRONTS[name] = true_front(problem, space)


def summary(values: list[float]) -> str:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.3f} [{q1:.2f}, {q3:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (each runs single searches)")
    parser.add_argument("--searches", nargs="*", default=list(SEARCHES), help="subset of the searches to run")
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS), help="subset of the problems to run")
    parser.add_argument("--output", default=None, help="Markdown file to write (default: print only)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    load_true_fronts()
    tasks = [(p, s, seed) for p in args.problems for s in args.searches for seed in range(args.seeds)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=load_true_fronts) as pool:
            outcomes = list(pool.map(run_task, tasks))
    else:
        outcomes = [run_task(task) for task in tasks]
    results: dict[tuple[str, str], list[tuple[list[float], int, float]]] = {}
    for problem_name, search_name, _, fractions, count, seconds in outcomes:
        results.setdefault((problem_name, search_name), []).append((fractions, count, seconds))
    wall = time.perf_counter() - start

    lines = [
        "# Search efficiency: share of the true front's hypervolume within a budget of unique evaluations",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other work), numpy {np.__version__}, "
        f"optuna {optuna.__version__}; {args.jobs} worker process(es); {wall:.0f} s in all.",
        "",
        f"Date: {datetime.date.today().isoformat()}. Command: `python benchmarks/bench_search_efficiency.py "
        f"--seeds {args.seeds} --jobs {args.jobs}`.",
        "",
        "Each cell: median [25th, 75th percentile] over "
        f"{args.seeds} seeds of the hypervolume of the true values of the distinct genomes evaluated so far, as a "
        "fraction of the true front's (found by enumeration). Population 20 for the NSGA-II searches unless the row says otherwise.",
        "",
    ]
    for problem_name in args.problems:
        problem, space = PROBLEMS[problem_name]
        lines += [
            f"## {problem_name} ({len(TRUE_FRONTS[problem_name])} points on the true front)",
            "",
            "| search | " + " | ".join(f"{n} evaluations" for n in CHECKPOINTS) + " | s per search |",
            "|---|" + "---|" * (len(CHECKPOINTS) + 1),
        ]
        for search_name in args.searches:
            runs = results[(problem_name, search_name)]
            cells = [summary([fractions[i] for fractions, _, _ in runs]) for i in range(len(CHECKPOINTS))]
            short = [count for _, count, _ in runs if count < max(CHECKPOINTS)]
            note = f" ({len(short)} run(s) stopped short, the fewest at {min(short)} evaluations)" if short else ""
            seconds = statistics.median(s for _, _, s in runs)
            lines.append(f"| {search_name}{note} | " + " | ".join(cells) + f" | {seconds:.2f} |")
        lines.append("")
    text = "\n".join(lines)
    publish(text, args.output)


if __name__ == "__main__":
    main()
