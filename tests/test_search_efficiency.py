"""Every evaluation counts: offspring are new candidates (no genome evaluated twice, no learning rate within the
tolerance of one trained for the same mask), the budget in evaluations is kept exactly, an unmeetable share
constraint is refused before anything is trained, and the surrogate keeps resume exact."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest

from peft_memcontrol import MemControlConfig, trainable_share
from peft_memcontrol.search import (
    GenomeSpace,
    MaskSearcher,
    SearchConfig,
    SyntheticMaskProblem,
    TrainableShareConstraint,
)
from peft_memcontrol.search.config import LATER_FIELDS
from peft_memcontrol.search.genome import GenomeIndex
from peft_memcontrol.search.journal import JournalError
from peft_memcontrol.search.searcher import UnsatisfiableConstraintError


UNITS = tuple(f"unit.{i}" for i in range(10))
PROBLEM = SyntheticMaskProblem(10, seed=0)


def by_generation(records):
    counts = {}
    for record in records:
        counts[record["generation"]] = counts.get(record["generation"], 0) + 1
    return counts


def test_every_generation_trains_as_many_new_candidates_as_it_has_offspring():
    space = GenomeSpace(units=UNITS, learning_rate_bounds=None)
    config = SearchConfig(population_size=12, generations=8, seed=0)
    result = MaskSearcher(space, PROBLEM, config=config, progress=False).run()
    keys = [record["key"] for record in result.records]
    assert len(keys) == len(set(keys))
    # Without redraws this search trained 7-11 new masks of 12 per generation (the others were cache hits).
    assert by_generation(result.records) == dict.fromkeys(range(9), 12)


def test_learning_rates_within_the_tolerance_of_a_trained_one_are_not_trained_again():
    space = GenomeSpace(units=UNITS, learning_rate_bounds=(1e-5, 1e-3))
    config = SearchConfig(population_size=12, generations=10, seed=1)
    records = MaskSearcher(space, PROBLEM, config=config, progress=False).run().records
    close = [
        (a["key"], b["key"])
        for a, b in itertools.combinations(records, 2)
        if a["genome"][:10] == b["genome"][:10]
        and abs(math.log(a["learning_rate"] / b["learning_rate"])) <= math.log(1.025) + 1e-9
    ]
    assert close == []
    assert len(records) == 12 * 11


def test_genome_index_counts_learning_rates_within_the_relative_tolerance_as_the_same_candidate():
    space = GenomeSpace(units=UNITS, learning_rate_bounds=(1e-5, 1e-3))
    index = GenomeIndex(space, learning_rate_tolerance=0.025)
    index.add([1] * 10 + [-4.0])
    assert [1] * 10 + [round(math.log10(1.02e-4), 3)] in index  # 2% away
    assert [1] * 10 + [round(math.log10(0.98e-4), 3)] in index
    assert [1] * 10 + [round(math.log10(1.03e-4), 3)] not in index  # 3% away
    assert [0] + [1] * 9 + [-4.0] not in index  # another mask
    exact = GenomeIndex(space, learning_rate_tolerance=0.0)
    exact.add([1] * 10 + [-4.0])
    assert [1] * 10 + [-4.0] in exact and [1] * 10 + [-3.999] not in exact


def test_cheapest_genome_of_an_additive_cost_matches_enumeration():
    space = GenomeSpace(units=("a", "b", "c", "d"), choices=("off", "svdiff", "difffit"), learning_rate_bounds=None)
    table = {("a", 1): 0.3, ("a", 2): -0.2, ("b", 1): 0.1, ("b", 2): 0.4, ("c", 1): -0.5, ("c", 2): -0.1}

    def cost(candidate):
        return 1.0 + sum(table.get((unit, gene), 0.0) for unit, gene in zip(candidate.units, candidate.bits))

    best = min(itertools.product(range(3), repeat=4), key=lambda genes: cost(space.decode(list(genes))))
    assert space.cheapest(cost) == list(best) == [2, 0, 1, 0]


def test_a_share_constraint_no_mask_meets_is_refused_before_anything_is_trained(tmp_path):
    space = GenomeSpace.from_layout("sd15-reference-13", learning_rate_bounds=None)  # three units fixed on
    constraint = TrainableShareConstraint(0.001)
    # The smallest share: the fixed units alone, counted independently of the searcher.
    fixed_only = MemControlConfig(method="svdiff", mask={**dict.fromkeys(space.units, False), **space.fixed})
    smallest = trainable_share(constraint._model(), fixed_only)
    assert smallest > 0.001
    calls = []

    def evaluator(candidate, budget):
        calls.append(candidate.key)
        return [0.0, 0.0]

    searcher = MaskSearcher(
        space,
        evaluator,
        objectives=["memorization", "quality"],
        config=SearchConfig(population_size=4, generations=1),
        output_dir=tmp_path / "search",
        constraint=constraint,
        progress=False,
    )
    with pytest.raises(UnsatisfiableConstraintError) as error:
        searcher.run()
    message = str(error.value)
    assert f"{smallest:.6g}" in message and "max_share=0.001" in message and "--max_trainable_share" in message
    assert calls == [] and not (tmp_path / "search" / "journal.jsonl").exists()
    constraint.max_share = smallest  # the smallest share itself is allowed
    searcher._check_constraint_can_be_met()


def test_max_evaluations_is_kept_exactly_and_grows_on_resume(tmp_path):
    space = GenomeSpace(units=UNITS, learning_rate_bounds=None)
    first = SearchConfig(population_size=12, generations=20, max_evaluations=50, seed=2)
    result = MaskSearcher(space, PROBLEM, config=first, output_dir=tmp_path, progress=False).run()
    assert result.search_info["evaluations"] == 50
    assert by_generation(result.records) == {0: 12, 1: 12, 2: 12, 3: 12, 4: 2}
    more = SearchConfig(population_size=12, generations=20, max_evaluations=70, seed=2)
    result = MaskSearcher(space, PROBLEM, config=more, output_dir=tmp_path, progress=False).run()
    assert result.search_info["evaluations"] == 70


def test_resume_with_the_surrogate_replays_exactly_even_with_a_half_journaled_generation(tmp_path):
    """The surrogate and the redraws read only earlier generations: a checkpoint behind the journal (a kill after
    some of the next generation's evaluations) resumes to the uninterrupted run's records."""
    space = GenomeSpace(units=UNITS, learning_rate_bounds=(1e-5, 1e-3))
    problem = SyntheticMaskProblem(10, seed=3, evaluation_noise=0.01, learning_rate_coupling=1.0)

    def run(folder, generations):
        config = SearchConfig(population_size=12, generations=generations, seed=4)
        return MaskSearcher(space, problem, config=config, output_dir=folder, progress=False).run()

    uninterrupted = run(tmp_path / "whole", 5)
    assert any(record["generation"] >= 2 for record in uninterrupted.records)
    run(tmp_path / "killed", 2)
    shutil.copy(tmp_path / "killed" / "checkpoint.json", tmp_path / "checkpoint_after_2.json")
    run(tmp_path / "killed", 3)
    shutil.copy(tmp_path / "checkpoint_after_2.json", tmp_path / "killed" / "checkpoint.json")
    resumed = run(tmp_path / "killed", 5)
    assert [r["key"] for r in resumed.records] == [r["key"] for r in uninterrupted.records]
    assert resumed.front_values() == uninterrupted.front_values()


def test_new_config_fields_at_their_default_leave_old_journal_headers_unchanged(tmp_path):
    space = GenomeSpace(units=UNITS, learning_rate_bounds=None)
    MaskSearcher(
        space, PROBLEM, config=SearchConfig(population_size=4, generations=1), output_dir=tmp_path, progress=False
    ).run()
    header = json.loads((tmp_path / "journal.jsonl").read_text().splitlines()[0])
    assert not set(LATER_FIELDS) & set(header["config"]) and "max_evaluations" not in header["config"]
    plain = SearchConfig(population_size=4, generations=1, surrogate="none")
    with pytest.raises(JournalError, match="config.surrogate"):
        MaskSearcher(space, PROBLEM, config=plain, output_dir=tmp_path, progress=False).run()
