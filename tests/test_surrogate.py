"""The surrogate: a Gaussian process on a Hamming x learning-rate kernel, checked against a direct solve and against
the function it models, and the batch it picks from candidate offspring."""

from __future__ import annotations

import itertools
import random

import numpy as np

from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig
from peft_memcontrol.search.surrogate import EncodedGenomes, GaussianProcess, can_screen, choose_offspring
from peft_memcontrol.search.synthetic import SyntheticMaskProblem


SPACE = GenomeSpace(units=tuple(f"unit.{i}" for i in range(10)))
PROBLEM = SyntheticMaskProblem(10, seed=0, learning_rate_coupling=1.0)


def genomes_and_values(count: int, seed: int):
    rng = random.Random(seed)
    genomes = [SPACE.random_genome(rng) for _ in range(count)]
    values = np.array([PROBLEM.values(g[:10], 10 ** g[10]) for g in genomes])
    return genomes, values


def test_prediction_equals_the_textbook_formula():
    genomes, values = genomes_and_values(30, seed=0)
    train = EncodedGenomes.of(SPACE, genomes)
    gp = GaussianProcess.fit(train, values[:, 1])
    test_genomes, _ = genomes_and_values(5, seed=1)
    test = EncodedGenomes.of(SPACE, test_genomes)

    def kernel(a, b):  # one pair at a time, from the genes
        hamming = np.mean(np.array(a[:10]) != np.array(b[:10]))
        low, high = SPACE.log_learning_rate_bounds
        step = (a[10] - b[10]) / (high - low)
        return np.exp(-gp.hamming_scale * hamming) * np.exp(-(step**2) / (2 * gp.learning_rate_scale**2))

    gram = np.array([[kernel(a, b) for b in genomes] for a in genomes])
    noise = (gp.cholesky @ gp.cholesky.T - gram)[0, 0]
    y = (values[:, 1] - gp.offset) / gp.scale
    inverse = np.linalg.inv(gram + noise * np.eye(len(genomes)))
    cross = np.array([[kernel(a, b) for b in genomes] for a in test_genomes])
    mean, std = gp.predict(test)
    np.testing.assert_allclose(mean, gp.offset + gp.scale * cross @ inverse @ y, rtol=1e-8, atol=1e-10)
    variance = 1.0 - np.einsum("ij,jk,ik->i", cross, inverse, cross)
    np.testing.assert_allclose(std, gp.scale * np.sqrt(np.clip(variance, 0, None)), rtol=1e-6, atol=1e-10)


def test_the_fit_ranks_unseen_masks_like_the_problem_and_knows_where_it_is_unsure():
    genomes, values = genomes_and_values(40, seed=2)
    held_out, truth = genomes_and_values(200, seed=3)
    for objective in range(2):
        gp = GaussianProcess.fit(EncodedGenomes.of(SPACE, genomes), values[:, objective])
        mean, std = gp.predict(EncodedGenomes.of(SPACE, held_out))
        ranks = [np.argsort(np.argsort(column)) for column in (mean, truth[:, objective])]
        assert np.corrcoef(*ranks)[0, 1] > 0.8
        _, seen_std = gp.predict(EncodedGenomes.of(SPACE, genomes))
        assert seen_std.mean() < 0.5 * std.mean()


def test_the_batch_is_distinct_deterministic_and_better_than_chance():
    genomes, values = genomes_and_values(25, seed=4)
    pool, truth = genomes_and_values(300, seed=5)
    chosen = choose_offspring(SPACE, genomes, values, pool, 10, random.Random(0))
    assert len(set(chosen)) == 10
    assert chosen == choose_offspring(SPACE, genomes, values, pool, 10, random.Random(0))
    # The chosen candidates are on the pool's (true) front far more often than ten random ones would be.
    on_front = [i for i, p in enumerate(truth) if not any(np.all(q <= p) and np.any(q < p) for q in truth)]
    expected_by_chance = 10 * len(on_front) / len(pool)
    assert len(set(chosen) & set(on_front)) >= 3 * expected_by_chance
    assert choose_offspring(SPACE, genomes, values, pool[:4], 10, random.Random(0)) == [0, 1, 2, 3]


def test_a_method_choice_genome_is_encoded_by_equality_of_choices():
    space = GenomeSpace(units=("a", "b", "c"), choices=("off", "svdiff", "difffit"), learning_rate_bounds=None)
    encoded = EncodedGenomes.of(space, [[0, 1, 2], [0, 2, 2], [1, 1, 2]])
    hamming, squared = encoded.distances(encoded)
    assert squared is None
    expected = [[sum(x != y for x, y in zip(a, b)) / 3 for b in encoded.units] for a in encoded.units]
    np.testing.assert_allclose(hamming, expected)
    assert list(itertools.chain(*expected))[1] == 1 / 3  # 1 vs 2 differs as much as 0 vs 2


class AtMostBitsOn:
    """A constraint: masks with at most ``limit`` units on (a stand-in for a trainable-share budget)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, candidate) -> bool:
        return sum(candidate.bits) <= self.limit


def test_the_surrogate_screens_only_offspring_that_meet_the_constraint():
    space = GenomeSpace(units=tuple(f"unit.{i}" for i in range(10)), learning_rate_bounds=None)
    config = SearchConfig(population_size=8, generations=6, seed=0)
    result = MaskSearcher(
        space, SyntheticMaskProblem(10, seed=1), config=config, constraint=AtMostBitsOn(4), progress=False
    ).run()
    records = result.records
    ok_before = {g: sum(r["status"] == "ok" for r in records if r["generation"] < g) for g in range(7)}
    screened = [r for r in records if r["generation"] >= 1 and can_screen(space, ok_before[r["generation"]])]
    # the first population, drawn before the surrogate, holds all-on (over the limit); screened generations send
    # only feasible masks, counted here from their bits
    assert any(sum(r["genome"]) > 4 for r in records if r["generation"] == 0)
    assert len(screened) >= 16 and all(sum(r["genome"]) <= 4 and r["status"] == "ok" for r in screened)
