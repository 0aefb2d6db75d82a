"""MaskSearcher on the closed-form 10-bit problem: true front by enumeration, hypervolume by a second method, NSGA-II
vs random search, caching, failures, kill-and-resume with a real SIGKILL, outputs, picking masks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from deap import tools
from peft import PeftConfig

from peft_memcontrol.cli import main
from peft_memcontrol.search import (
    WORST_VALUE,
    GenomeSpace,
    Journal,
    MaskSearcher,
    SearchConfig,
    SyntheticMaskProblem,
    hypervolume,
    knee_point,
)
from peft_memcontrol.search.baselines import random_search
from peft_memcontrol.search.report import write_mask_card
from peft_memcontrol.search.searcher import REDRAW_ROUNDS


UNITS = tuple(f"unit.{i}" for i in range(10))
REFERENCE = [1.1, 1.1]


def brute_force_front(points):
    """Non-dominated points by checking every pair (independent of the library's filter)."""
    front = []
    for p in points:
        dominated = any(all(q[k] <= p[k] for k in range(len(p))) and q != p for q in points)
        if not dominated and p not in front:
            front.append(p)
    return front


def grid_hypervolume(points, reference):
    """Hypervolume as the area (volume) of the union of boxes, by summing the cells of the coordinate grid."""
    points = [p for p in points if all(x < r for x, r in zip(p, reference))]
    axes = [sorted({p[k] for p in points} | {reference[k]}) for k in range(len(reference))]
    total = 0.0
    for cell in itertools.product(*[range(len(axis) - 1) for axis in axes]):
        low = [axes[k][i] for k, i in enumerate(cell)]
        if any(all(p[k] <= low[k] for k in range(len(p))) for p in points):
            total += float(np.prod([axes[k][i + 1] - axes[k][i] for k, i in enumerate(cell)]))
    return total


@pytest.fixture(scope="module")
def problem():
    problem = SyntheticMaskProblem(10, seed=0)
    points = [tuple(problem.values(bits)) for bits in itertools.product([0, 1], repeat=10)]
    front = brute_force_front(points)
    return problem, front, grid_hypervolume(front, REFERENCE)


def bit_space(**kwargs):
    return GenomeSpace(units=UNITS, learning_rate_bounds=None, **kwargs)


def test_hypervolume_matches_grid_computation():
    rng = np.random.default_rng(0)
    for dims in (2, 3):
        points = [tuple(p) for p in rng.random((12, dims))]
        front = brute_force_front(points)
        reference = [1.2] * dims
        assert hypervolume(front, reference) == pytest.approx(grid_hypervolume(front, reference), rel=1e-12)
    assert hypervolume([[0.0, 1.0], [1.0, 0.0]], [2.0, 2.0]) == pytest.approx(3.0)
    assert hypervolume([[3.0, 0.0]], [2.0, 2.0]) == 0.0


def test_nsga2_recovers_95_percent_of_true_front_and_beats_random_search(problem):
    evaluator, true_front, true_volume = problem
    assert len(true_front) > 20  # a front worth searching for
    ratios_nsga, ratios_random = [], []
    for seed in range(3):
        config = SearchConfig(population_size=12, generations=10, seed=seed, reference_point=REFERENCE)
        result = MaskSearcher(bit_space(), evaluator, config=config, progress=False).run()
        found = [tuple(v) for v in result.front_values()]
        for point, values in zip(result.front, found):  # the front reports the masks' true values
            assert values == evaluator.values(point.candidate.bits)
        assert len(set(found) & set(true_front)) >= 5  # true Pareto-optimal masks found exactly
        evaluations = result.history[-1]["evaluations"]
        assert evaluations <= 12 + 10 * 12  # the stated budget: at most 132 distinct evaluations
        ratio = grid_hypervolume(found, REFERENCE) / true_volume
        random_front, _ = random_search(bit_space(), evaluator, evaluations, seed=seed)
        ratios_nsga.append(ratio)
        ratios_random.append(grid_hypervolume([tuple(v) for v in random_front], REFERENCE) / true_volume)
        assert ratio >= 0.95, ratio
        assert ratio > ratios_random[-1]
    assert np.mean(ratios_nsga) > np.mean(ratios_random) + 0.03


def test_first_population_holds_seeds_and_no_genome_is_evaluated_twice(problem):
    evaluator = problem[0]
    calls = []

    def counting(candidate, budget):
        calls.append(candidate.key)
        return evaluator(candidate, budget)

    space = bit_space()
    config = SearchConfig(population_size=8, generations=6, seed=1)
    result = MaskSearcher(space, counting, objectives=evaluator.objectives, config=config, progress=False).run()
    assert len(calls) == len(set(calls)) == result.history[-1]["evaluations"]
    first = [r["genome"] for r in result.records if r["generation"] == 0]
    assert [1] * 10 in first and [0] * 10 in first
    assert len(first) == 8


def test_raising_and_diverging_candidates_are_recorded_and_the_search_goes_on(problem, tmp_path):
    failures = {"1" * 10: "raise", "0" * 10: "nan"}
    evaluator = SyntheticMaskProblem(10, seed=0, failures=failures)
    config = SearchConfig(population_size=8, generations=3, seed=0)
    result = MaskSearcher(bit_space(), evaluator, config=config, output_dir=tmp_path, progress=False).run()
    assert len(result.history) == 4
    journal = list(Journal.read(tmp_path / "journal.jsonl"))
    by_genome = {"".join(map(str, r["genome"])): r for r in journal}
    assert by_genome["1" * 10]["status"] == "error"
    assert "synthetic training failure" in by_genome["1" * 10]["error"]
    assert by_genome["0" * 10]["status"] == "diverged"
    assert by_genome["1" * 10]["values"] == [WORST_VALUE, WORST_VALUE]
    assert all(point.candidate.bits not in ([1] * 10, [0] * 10) for point in result.front)


def test_constraint_rejects_without_evaluating(problem):
    evaluator = problem[0]
    calls = []

    def counting(candidate, budget):
        calls.append(candidate.bits)
        return evaluator(candidate, budget)

    config = SearchConfig(population_size=8, generations=3, seed=0)
    result = MaskSearcher(
        bit_space(),
        counting,
        objectives=evaluator.objectives,
        config=config,
        constraint=lambda c: sum(c.bits) <= 4,
        progress=False,
    ).run()
    assert all(sum(bits) <= 4 for bits in calls)
    assert any(r["status"] == "infeasible" for r in result.records)
    assert all(sum(p.candidate.bits) <= 4 for p in result.front)


def test_resume_refuses_other_settings_and_restart_refuses_existing_folder(problem, tmp_path):
    evaluator = problem[0]
    MaskSearcher(
        bit_space(),
        evaluator,
        config=SearchConfig(population_size=6, generations=1),
        output_dir=tmp_path,
        progress=False,
    ).run()
    with pytest.raises(ValueError, match="other settings"):
        MaskSearcher(
            bit_space(),
            evaluator,
            config=SearchConfig(population_size=8, generations=1),
            output_dir=tmp_path,
            progress=False,
        ).run()
    with pytest.raises(FileExistsError):
        MaskSearcher(
            bit_space(),
            evaluator,
            config=SearchConfig(population_size=6, generations=1),
            output_dir=tmp_path,
            progress=False,
        ).run(resume=False)
    # More generations continue the same search.
    longer = MaskSearcher(
        bit_space(),
        evaluator,
        config=SearchConfig(population_size=6, generations=3),
        output_dir=tmp_path,
        progress=False,
    ).run()
    assert [h["generation"] for h in longer.history] == [0, 1, 2, 3]


def test_multi_fidelity_promotes_only_the_best_share():
    evaluator = SyntheticMaskProblem(10, seed=0, noise=0.3)
    config = SearchConfig(population_size=8, generations=4, num_offspring=16, fidelities=(0.25, 1.0), seed=0)
    result = MaskSearcher(bit_space(), evaluator, config=config, progress=False).run()
    for generation in range(1, 5):
        low = {r["key"] for r in result.records if r["generation"] <= generation and r["budget"] == 0.25}
        full = {r["key"] for r in result.records if r["generation"] == generation and r["budget"] == 1.0}
        assert full and full <= low  # every full-budget offspring went through the low budget first
        assert len(full) <= 8
    # Only full-budget results make the front, with their exact values.
    for point in result.front:
        assert list(point.scores.values()) == pytest.approx(list(evaluator.values(point.candidate.bits)))


def test_operators_are_swapped_on_the_searchers_toolbox(problem):
    """As in DEAP's NSGA-II example, a variation operator is whatever the toolbox has registered under its name."""
    evaluator = problem[0]
    config = SearchConfig(population_size=8, generations=3, seed=0, crossover_probability=0.0)
    searcher = MaskSearcher(bit_space(), evaluator, config=config, progress=False)
    mutated = []

    def keep(individual):
        mutated.append(list(individual))
        return (individual,)

    searcher.toolbox.register("mutate", keep)
    result = searcher.run()
    # every offspring went through the registered mutation; an identity mutation only copies parents, which are
    # redrawn REDRAW_ROUNDS times per generation
    assert len(mutated) == 3 * 8 * REDRAW_ROUNDS
    assert {r["generation"] for r in result.records} == {0}  # copies of parents only: nothing new to evaluate

    def keys_with(mutate=None):
        searcher = MaskSearcher(bit_space(), evaluator, config=config, progress=False)
        if mutate is not None:
            searcher.toolbox.register("mutate", mutate, indpb=0.5)
        return [r["key"] for r in searcher.run().records]

    swapped = keys_with(tools.mutFlipBit)
    assert swapped == keys_with(tools.mutFlipBit)  # a swapped DEAP operator still draws from the seeded generator
    assert swapped != keys_with()


def test_learning_rate_gene_stays_in_bounds_and_on_grid():
    space = GenomeSpace(units=UNITS, learning_rate_bounds=(1e-5, 1e-3))
    evaluator = SyntheticMaskProblem(10, seed=0)
    result = MaskSearcher(
        space, evaluator, config=SearchConfig(population_size=8, generations=4), progress=False
    ).run()
    for record in result.records:
        gene = record["genome"][-1]
        assert -5.0 <= gene <= -3.0 and round(gene, 3) == gene
        assert record["learning_rate"] == pytest.approx(10**gene)


def test_per_unit_method_choice_genome():
    space = GenomeSpace(units=UNITS[:4], choices=("off", "svdiff", "difffit"), learning_rate_bounds=None)
    candidate = space.decode([0, 1, 2, 1])
    assert candidate.masks == {
        "svdiff": {"unit.0": False, "unit.1": True, "unit.2": False, "unit.3": True},
        "difffit": {"unit.0": False, "unit.1": False, "unit.2": True, "unit.3": False},
    }
    assert [list(g) for g in space.seed_genomes()] == [[2] * 4, [1] * 4, [0] * 4]


def test_layout_genome_keeps_fixed_units_on():
    space = GenomeSpace.from_layout("sd15-reference-13")
    mask = space.decode([0] * 13 + [-4.0]).mask
    assert len(mask) == 16 and mask.selected() == [f"up_blocks.{b}.attentions.2" for b in (1, 2, 3)]
    assert space.encode(mask, 1e-4) == [0] * 13 + [-4.0]


def test_knee_and_bounded_choices():
    front = [[0.0, 1.0], [0.1, 0.4], [0.5, 0.3], [1.0, 0.0]]
    assert knee_point(front) == 1  # farthest from the line through (0, 1) and (1, 0)
    space = bit_space()
    evaluator = SyntheticMaskProblem(10, seed=0)
    result = MaskSearcher(
        space, evaluator, config=SearchConfig(population_size=10, generations=4), progress=False
    ).run()
    memo, quality = "memorization", "quality"
    picked = result.least_memorization(max_quality=0.5)
    feasible = [p for p in result.front if p.scores[quality] <= 0.5]
    assert picked.scores[memo] == min(p.scores[memo] for p in feasible)
    picked = result.best_quality(max_memorization=0.3)
    feasible = [p for p in result.front if p.scores[memo] <= 0.3]
    assert picked.scores[quality] == min(p.scores[quality] for p in feasible)
    assert result.best_quality(max_memorization=-1.0) is None


def test_cli_writes_front_plots_and_loadable_configs(tmp_path):
    assert (
        main(
            [
                "search",
                "--synthetic",
                "10",
                "--population_size",
                "6",
                "--generations",
                "2",
                "--output_dir",
                str(tmp_path),
                "--max_quality",
                "0.6",
                "--no_progress",
            ]
        )
        == 0
    )
    for name in (
        "journal.jsonl",
        "checkpoint.json",
        "front.csv",
        "front.json",
        "hypervolume.csv",
        "front.png",
        "hypervolume.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    front = json.loads((tmp_path / "front.json").read_text())
    config = PeftConfig.from_pretrained(str(tmp_path / "chosen" / "knee"))
    assert config.method == "svdiff" and config.objectives == ["memorization", "quality"]
    assert [config.scores[n] for n in config.objectives] in [[p[n] for n in config.objectives] for p in front["front"]]
    hv_rows = (tmp_path / "hypervolume.csv").read_text().strip().splitlines()
    assert len(hv_rows) == 1 + 3

    searcher = MaskSearcher(
        GenomeSpace(units=UNITS, learning_rate_bounds=(1e-5, 1e-3), name="synthetic"),
        SyntheticMaskProblem(10),
        config=SearchConfig(population_size=6, generations=2),
        output_dir=tmp_path,
        progress=False,
    )
    result = searcher.run()
    readme = write_mask_card(result, result.knee(), str(tmp_path / "card"))
    text = Path(readme).read_text()
    assert "Pareto front of the mask search" in text and text.count("\n| ") >= len(result.front)


@pytest.mark.parametrize("tolerance", [float("nan"), float("inf"), -0.1])
def test_learning_rate_tolerance_must_be_finite_and_not_negative(tolerance):
    with pytest.raises(ValueError, match="learning_rate_tolerance must be a finite number >= 0"):
        SearchConfig(learning_rate_tolerance=tolerance)
