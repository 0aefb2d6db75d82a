#!/usr/bin/env python
"""Mask-search benchmarks, written as a Markdown table.

1. Cost per candidate of the inner loop on the tiny pipeline (the demo's search settings), with the base model, the
   SVD cache of its weights and the frozen encoders' outputs reused across candidates or not, in candidates per hour.
2. Multi-fidelity (successive halving inside generations) vs plain NSGA-II on the noisy 10-bit closed-form problem:
   cost (full-budget-evaluation equivalents) and evaluations until the front reaches a target share of the true
   front's hypervolume (found by enumeration).

    python benchmarks/bench_search.py --candidates 4 --steps 20 --seeds 10 --output benchmarks/results/search_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace

import torch
from _results import publish

from peft_memcontrol.sample_data import build_faces_dataset
from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig, SyntheticMaskProblem, hypervolume
from peft_memcontrol.search.inner_loop import SEARCH_EVALUATION, InnerLoop, ProxyDataSpec
from peft_memcontrol.search.pareto import non_dominated_indices
from peft_memcontrol.training import TrainingConfig


#: (label, reuse_base_model, cache_encodings) of the inner-loop cost benchmark, slowest first.
REUSE_SETTINGS = [
    ("reloaded per candidate (no reuse)", False, False),
    ("base model + SVD cache reused", True, False),
    ("base model + SVD cache + encodings reused", True, True),
]


def bench_candidate_cost(num_candidates: int, steps: int) -> list[tuple[str, float, float]]:
    """Seconds per candidate of the demo's inner loop (copy_similarity + fid, 8 FID images, 10 sampling steps, batch
    8) under each reuse setting. The settings that reuse are interleaved candidate by candidate so that load drifts hit
    both; the one without reuse runs last, on its own, because it clears the process's SVD cache."""
    space = GenomeSpace.from_layout("sd15-reference-13", learning_rate_bounds=(1e-3, 3e-2))
    genomes = [space.decode(g) for g in space.seed_genomes()][:num_candidates]
    times: dict[str, list[float]] = {label: [] for label, _, _ in REUSE_SETTINGS}
    with tempfile.TemporaryDirectory() as folder:
        data = build_faces_dataset(
            os.path.join(folder, "data"), num_test=8, num_memorization=3, memorization_repeats=10
        )
        loops = {}
        for label, reuse, cache in REUSE_SETTINGS:  # one data spec: the reusing loops share one loaded base model
            loops[label] = InnerLoop(
                ProxyDataSpec(
                    data.train_dir,
                    test_data_dir=data.test_dir,
                    fraction=0.1,
                    num_memorization=3,
                    repeats=10,
                ),
                objectives=["copy_similarity", "fid"],
                training=TrainingConfig(max_train_steps=steps, train_batch_size=8),
                evaluation=replace(SEARCH_EVALUATION, num_fid_images=8, num_inference_steps=10),
                reuse_base_model=reuse,
                cache_encodings=cache,
            )
        for label, loop in loops.items():
            if label != REUSE_SETTINGS[0][0]:
                loop(genomes[0], 1.0)  # warm-up: first load, imports, and the first candidate's encodings
        without_reuse = REUSE_SETTINGS[0][0]
        order = [label for label in loops if label != without_reuse]
        for labels in (order, [without_reuse]):
            for candidate in genomes:
                for label in labels:
                    start = time.perf_counter()
                    loops[label](candidate, 1.0)
                    times[label].append(time.perf_counter() - start)
    return [
        (label, statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        for label, values in times.items()
    ]


def cost_to_target(history: list[dict], target: float) -> tuple[float, float] | None:
    for entry in history:
        if entry["hypervolume"] >= target:
            return entry["cost"], entry["evaluations"]
    return None


def bench_multi_fidelity(seeds: int, share: float) -> list[tuple[str, str, str, str, int]]:
    problem = SyntheticMaskProblem(10, seed=0, noise=0.3)
    points = [problem.values(bits) for bits in itertools.product([0, 1], repeat=10)]
    reference = [1.1, 1.1]
    target = share * hypervolume([points[i] for i in non_dominated_indices(points)], reference)
    space = GenomeSpace(units=tuple(f"unit.{i}" for i in range(10)), learning_rate_bounds=None)
    variants = {
        "plain NSGA-II (pop 12, 12 offspring)": SearchConfig(population_size=12, generations=30),
        "multi-fidelity (pop 12, 24 offspring at 0.25, best 12 at 1.0)": SearchConfig(
            population_size=12, generations=30, num_offspring=24, fidelities=(0.25, 1.0), promote_fraction=0.5
        ),
        "multi-fidelity (pop 12, 48 offspring at 0.25, best 12 at 1.0)": SearchConfig(
            population_size=12, generations=30, num_offspring=48, fidelities=(0.25, 1.0), promote_fraction=0.25
        ),
    }
    rows = []
    for name, config in variants.items():
        costs, evaluations = [], []
        for seed in range(seeds):
            config.seed = seed
            config.reference_point = reference
            result = MaskSearcher(space, problem, config=config, progress=False).run()
            reached = cost_to_target(result.history, target)
            if reached is not None:
                costs.append(reached[0])
                evaluations.append(reached[1])
        rows.append(
            (
                name,
                f"{statistics.median(costs):.1f}" if costs else "-",
                f"{statistics.mean(costs):.1f}" if costs else "-",
                f"{statistics.median(evaluations):.0f}" if evaluations else "-",
                len(costs),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.97, help="Share of the true front's hypervolume.")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    lines = [
        "# Mask search benchmarks",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, one thread; "
        f"command: `python benchmarks/bench_search.py --candidates {args.candidates} --steps {args.steps} "
        f"--seeds {args.seeds} --target {args.target}`.",
        "",
        f"Date: {datetime.date.today().isoformat()}.",
        "",
        f"## Inner loop: cost per candidate (tiny pipeline, {args.steps} steps of batch 8, copy_similarity + fid on "
        "8 images, 10 sampling steps; settings interleaved)",
        "",
        "| setting | mean s / candidate | std | candidates per hour | vs no reuse |",
        "|---|---|---|---|---|",
    ]
    costs = bench_candidate_cost(args.candidates, args.steps)
    slowest = costs[0][1]
    for label, mean, std in costs:
        lines.append(f"| {label} | {mean:.2f} | {std:.2f} | {3600 / mean:.0f} | {slowest / mean:.2f}x |")
    lines += [
        "",
        f"## Multi-fidelity vs plain NSGA-II: cost to reach {100 * args.target:.0f}% of the true front's hypervolume",
        "",
        "Noisy 10-bit closed-form problem (`SyntheticMaskProblem(10, noise=0.3)`; a budget b gives errors of "
        "0.3 (1 - b) u, u in [-1, 1]); cost in full-budget-evaluation equivalents (sum of budget fractions).",
        "",
        "| variant | median cost | mean cost | median evaluations | seeds reaching target |",
        "|---|---|---|---|---|",
    ]
    for name, median, mean, evaluations, reached in bench_multi_fidelity(args.seeds, args.target):
        lines.append(f"| {name} | {median} | {mean} | {evaluations} | {reached}/{args.seeds} |")
    text = "\n".join(lines) + "\n"
    publish(text, args.output)


if __name__ == "__main__":
    main()
