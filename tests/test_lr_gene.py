"""The learning-rate gene's operators: SBX crossover and polynomial mutation on ``log10(lr)``, within the bounds, with
a crossover step that scales with the parents' distance; and a seeded search over it that repeats and resumes exactly.

Each distribution is checked by brute force against a property the operator has only in log space: children centred
on the parents' geometric mean, SBX's median spread factor of 1, mutation symmetric in decades around the parent."""

from __future__ import annotations

import random
import shutil
import statistics

import pytest

from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig, SyntheticMaskProblem
from peft_memcontrol.search.operators import Individual, make_toolbox, private_random


UNITS = tuple(f"unit.{i}" for i in range(4))
DRAWS = 4000


def toolbox_for(bounds, **config):
    space = GenomeSpace(units=UNITS, learning_rate_bounds=bounds)
    return space, make_toolbox(space, SearchConfig(**config))


def crossed_learning_rates(toolbox, first_gene, second_gene, seed=0):
    """The children's log10 learning rates of ``DRAWS`` crossovers of two parents, in pairs."""
    pairs = []
    with private_random(random.Random(seed)):
        for _ in range(DRAWS):
            first, second = Individual([0, 1, 0, 1, first_gene]), Individual([1, 0, 1, 0, second_gene])
            toolbox.mate(first, second)
            pairs.append((first[-1], second[-1]))
    return pairs


def test_crossover_centres_children_on_the_parents_geometric_mean_and_spreads_them_by_their_distance():
    """SBX in log space (DEAP's crosses each gene with probability 1/2): of the crossed pairs, half land between the
    parents (spread factor below 1 with probability 1/2), and the children's log rates are centred on the mean of the
    parents' log rates, 1e-4 for 1e-5 and 1e-3. Crossing the rates themselves would centre them on 5e-4 (log10
    -3.3)."""
    space, toolbox = toolbox_for((1e-12, 1e2))  # bounds far away: their pull is below float precision
    for low_parent, high_parent in ((-5.0, -3.0), (-4.2, -4.0)):
        all_pairs = crossed_learning_rates(toolbox, low_parent, high_parent)
        pairs = [pair for pair in all_pairs if set(pair) != {low_parent, high_parent}]
        assert len(pairs) / DRAWS == pytest.approx(0.5, abs=0.03)
        spread_factors = [abs(a - b) / (high_parent - low_parent) for a, b in pairs]
        assert statistics.median(spread_factors) == pytest.approx(1.0, abs=0.05)
        between = sum(low_parent < gene < high_parent for pair in pairs for gene in pair) / (2 * len(pairs))
        assert between == pytest.approx(0.5, abs=0.03)
        centres = [(a + b) / 2 for a, b in pairs]
        assert statistics.median(centres) == pytest.approx((low_parent + high_parent) / 2, abs=1e-9)


def test_crossover_and_mutation_keep_the_learning_rate_within_the_bounds():
    space, toolbox = toolbox_for((1e-5, 1e-3), gene_mutation_probability=1.0, mutation_eta=1.0, crossover_eta=1.0)
    low, high = space.log_learning_rate_bounds
    children = []
    with private_random(random.Random(1)):
        for first_gene, second_gene in ((low, high), (low, low + 0.01), (high - 0.01, high)):
            for _ in range(DRAWS // 4):
                first, second = Individual([0, 0, 0, 0, first_gene]), Individual([1, 1, 1, 1, second_gene])
                toolbox.mate(first, second)
                toolbox.mutate(first)
                toolbox.mutate(second)
                children.extend([first[-1], second[-1]])
    assert all(low <= gene <= high for gene in children)
    assert min(children) < low + 0.05 and max(children) > high - 0.05  # the whole range is reachable


def test_mutation_moves_the_learning_rate_by_the_same_decades_anywhere_in_the_range_at_the_configured_rate():
    """A mutation from 2.5e-5 and one from 4e-4 (0.4 decade inside either bound of 1e-5..1e-3) move the rate by the
    same number of decades (0.064 median at eta 20); mutating the rate itself would move the first 0.22 decade and the
    second 0.03. Each gene mutates with probability ``gene_mutation_probability``."""
    space, toolbox = toolbox_for((1e-5, 1e-3), gene_mutation_probability=0.25)
    median_moves = []
    for parent in (-4.6, -3.4):
        with private_random(random.Random(2)):
            moves = [toolbox.mutate(Individual([0, 0, 0, 0, parent]))[0][-1] - parent for _ in range(DRAWS)]
        changed = [abs(move) for move in moves if move != 0.0]
        assert len(changed) / DRAWS == pytest.approx(0.25, abs=0.03)
        median_moves.append(statistics.median(changed))
    assert median_moves[0] == pytest.approx(median_moves[1], rel=0.1)
    assert median_moves[0] == pytest.approx(0.064, abs=0.01)


def test_a_seeded_search_over_the_learning_rate_repeats_and_resumes_exactly(tmp_path):
    space = GenomeSpace(units=tuple(f"unit.{i}" for i in range(8)), learning_rate_bounds=(1e-5, 1e-3))
    problem = SyntheticMaskProblem(8, seed=5, evaluation_noise=0.01, learning_rate_coupling=1.0)

    def run(folder, generations):
        config = SearchConfig(population_size=10, generations=generations, surrogate="none", seed=7)
        return MaskSearcher(space, problem, config=config, output_dir=folder, progress=False).run()

    first, again = run(tmp_path / "first", 4), run(tmp_path / "again", 4)
    assert [r["key"] for r in first.records] == [r["key"] for r in again.records]
    searched_rates = {record["genome"][-1] for record in first.records}
    assert len(searched_rates) > 10  # the gene is searched, not left at the seeds' midpoint
    run(tmp_path / "killed", 1)
    shutil.copy(tmp_path / "killed" / "checkpoint.json", tmp_path / "checkpoint_after_1.json")
    run(tmp_path / "killed", 2)
    shutil.copy(tmp_path / "checkpoint_after_1.json", tmp_path / "killed" / "checkpoint.json")
    resumed = run(tmp_path / "killed", 4)
    assert [r["key"] for r in resumed.records] == [r["key"] for r in first.records]
    assert resumed.front_values() == first.front_values()
