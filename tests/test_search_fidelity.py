"""Proxy fidelity: Spearman's rho against scipy, the bootstrap interval against scipy's bootstrap and an enumerated skip
rate, and the whole measurement on a real `MaskSearcher` run whose inner loop is the synthetic problem's short
training, with its noiseless values as the full fine-tune."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig, SyntheticMaskProblem
from peft_memcontrol.search.fidelity import (
    DEFAULT_FULL_COUNTERPARTS,
    MIN_CANDIDATES_FOR_VERDICT,
    FidelityRow,
    FullCounterpart,
    RankCorrelation,
    average_ranks,
    measure_proxy_fidelity,
    rank_correlation,
    select_fidelity_candidates,
)
from peft_memcontrol.search.pareto import dominates


UNITS = tuple(f"unit.{i}" for i in range(10))
SAME = {"memorization": FullCounterpart("memorization", +1), "quality": FullCounterpart("quality", +1)}


class ShortTraining:
    """The synthetic problem as an inner loop: every evaluation is a quarter of the full training, so its scores carry
    the problem's low-budget error, fixed per mask; the noiseless values stand in for the full fine-tune."""

    objectives = SyntheticMaskProblem.objectives

    def __init__(self, problem: SyntheticMaskProblem) -> None:
        self.problem = problem

    def __call__(self, candidate, budget: float = 1.0) -> dict[str, float]:
        return self.problem(candidate, 0.25 * budget)


@pytest.fixture(scope="module")
def search():
    problem = SyntheticMaskProblem(10, seed=0, noise=0.3)
    config = SearchConfig(population_size=8, generations=3, seed=0, fidelities=(0.5, 1.0))
    space = GenomeSpace(units=UNITS, learning_rate_bounds=None)
    result = MaskSearcher(space, ShortTraining(problem), config=config, progress=False).run()
    return problem, result


def full_evaluation(problem, candidates):
    return [dict(zip(problem.objectives, problem.values(c.candidate.bits))) for c in candidates]


def test_average_ranks_and_rho_match_scipy():
    rng = np.random.default_rng(0)
    for n in (3, 7, 40):
        x, y = rng.integers(0, 4, n).astype(float), rng.normal(size=n)  # x has ties
        x[:2] = [0.0, 3.0]  # never constant
        np.testing.assert_allclose(average_ranks(x), stats.rankdata(x), rtol=0, atol=1e-12)
        result = rank_correlation(x, y, num_bootstrap=50)
        assert result.rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert result.n == n


def test_interval_matches_scipy_bootstrap_contains_rho_and_narrows_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (8, 30, 120):
        x = rng.uniform(size=n)
        y = x + rng.normal(scale=0.3, size=n)  # monotone plus noise
        result = rank_correlation(x, y, seed=2)
        assert result.low <= result.rho <= result.high
        widths.append(result.high - result.low)
        if n == 30:  # scipy draws other resamples: the ends agree to bootstrap noise
            theirs = stats.bootstrap(
                (x, y),
                lambda a, b: stats.spearmanr(a, b).statistic,
                paired=True,
                vectorized=False,
                n_resamples=2000,
                method="percentile",
                random_state=np.random.default_rng(3),
            ).confidence_interval
            assert result.low == pytest.approx(theirs.low, abs=0.05)
            assert result.high == pytest.approx(theirs.high, abs=0.05)
    assert widths[0] > widths[1] > widths[2]
    assert rank_correlation(x, y, seed=2) == rank_correlation(x, y, seed=2)


def test_interval_is_the_documented_percentile_bootstrap():
    # a second implementation of the documented procedure (same draws, scipy's rho, skipping constant resamples)
    x, y = [0.3, 1.2, 0.7, 2.5, 1.9], [1.0, 1.0, 0.0, 2.0, 2.0]  # ties in y: some resamples are constant there
    rng = np.random.default_rng(4)
    rhos = [
        stats.spearmanr(np.take(x, i), np.take(y, i)).statistic
        for i in rng.integers(0, 5, size=(500, 5))
        if np.ptp(np.take(x, i)) > 0 and np.ptp(np.take(y, i)) > 0
    ]
    result = rank_correlation(x, y, confidence=0.8, num_bootstrap=500, seed=4)
    assert result.skipped == 500 - len(rhos) > 0
    assert [result.low, result.high] == pytest.approx(np.quantile(rhos, [0.1, 0.9]), abs=1e-12)


def test_verdict_reads_the_interval_not_rho():
    counterpart = FullCounterpart("kid", +1)

    def verdict(rho, low, high):
        return FidelityRow("fid", counterpart, RankCorrelation(rho, low, high, 10, 0.95, 2000, 0)).verdict

    assert verdict(0.5, 0.1, 0.8) == "agrees"
    assert verdict(0.5, -0.1, 0.8) == "no evidence"
    assert verdict(0.4, 0.0, 0.8) == "no evidence"
    assert verdict(-0.5, -0.8, -0.1) == "opposite"
    assert verdict(-0.3, -0.8, 0.0) == "no evidence"


def test_constant_resamples_are_skipped_at_the_enumerated_rate():
    # x = (0, 0, 1): a resample of 3 indices is constant in x when it avoids index 2 (8/27) or is all 2s (1/27);
    # every resample constant in y (one index thrice) is among those, so 9/27 = 1/3 are skipped.
    num_bootstrap = 3000
    result = rank_correlation([0.0, 0.0, 1.0], [0.0, 1.0, 2.0], num_bootstrap=num_bootstrap)
    expected, sd = num_bootstrap / 3, (num_bootstrap * (1 / 3) * (2 / 3)) ** 0.5
    assert abs(result.skipped - expected) < 5 * sd
    assert result.rho == pytest.approx(stats.spearmanr([0, 0, 1], [0, 1, 2]).statistic)


@pytest.mark.parametrize(
    ("proxy", "full", "message"),
    [
        ([1.0, 2.0], [1.0, 2.0], "at least 3 pairs"),
        ([1.0, 2.0, 3.0], [1.0, 2.0], "equal length"),
        ([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0], "finite"),
        ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], "full values are all 5"),
    ],
)
def test_rank_correlation_refuses_what_has_no_rho(proxy, full, message):
    with pytest.raises(ValueError, match=message):
        rank_correlation(proxy, full)


def test_short_training_ranks_like_the_full_one_and_a_shuffled_pairing_does_not(search):
    problem, result = search
    candidates = select_fidelity_candidates(result, num_front=len(result.front), num_other=100)
    proxy = [c.scores for c in candidates]
    full = full_evaluation(problem, candidates)
    assert len({c.candidate.key for c in candidates}) == len(candidates) == 20

    fidelity = measure_proxy_fidelity(proxy, full, SAME)
    for name in problem.objectives:
        row = fidelity.row(name)
        expected = stats.spearmanr([p[name] for p in proxy], [f[name] for f in full]).statistic
        assert row.correlation.rho == pytest.approx(expected, abs=1e-12)
        assert row.correlation.rho > 0.8 and row.correlation.low > 0.5
        assert row.verdict == "agrees"
    table = fidelity.to_markdown()
    assert "| `memorization` | `memorization` | 20 | 0.86 |" in table
    assert "the proxy ranks candidates like the full fine-tune" in table

    shuffled = [full[i] for i in np.random.default_rng(0).permutation(len(full))]
    unrelated = measure_proxy_fidelity(proxy, shuffled, SAME)
    for row in unrelated.rows:
        assert row.correlation.low < 0 < row.correlation.high
        assert row.verdict == "no evidence"
        assert "no evidence that the proxy ranks candidates like the full fine-tune" in row.reading()


def test_the_sign_makes_a_positive_rho_mean_agreement(search):
    problem, result = search
    candidates = select_fidelity_candidates(result, num_front=len(result.front), num_other=100)
    proxy = [c.scores for c in candidates]
    # a full metric that is better high, like AMD: the negated noiseless quality
    full = [{"score": -f["quality"]} for f in full_evaluation(problem, candidates)]
    agrees = measure_proxy_fidelity(proxy, full, {"quality": FullCounterpart("score", -1)}).row("quality")
    same_as_positive = measure_proxy_fidelity(proxy, full_evaluation(problem, candidates), SAME).row("quality")
    assert agrees.correlation == same_as_positive.correlation
    assert agrees.counterpart.label == "-score"

    wrong_sign = measure_proxy_fidelity(proxy, full, {"quality": ("score", +1)})
    assert wrong_sign.row("quality").correlation.rho == pytest.approx(-agrees.correlation.rho)
    assert wrong_sign.row("quality").verdict == "opposite"
    assert "ranks them the opposite way" in wrong_sign.row("quality").reading()
    assert wrong_sign.unmatched == ["memorization"]


def test_default_counterparts_and_a_constant_full_metric():
    assert DEFAULT_FULL_COUNTERPARTS["neg_amd"] == ("amd", -1)
    proxy = [{"noise_norm": v, "neg_amd": -v, "fid": 10 * v} for v in (1.0, 2.0, 3.0, 4.0)]
    full = [{"extracted": 0, "amd": v, "kid": v, "replication": 0.0} for v in (0.1, 0.2, 0.3, 0.4)]
    fidelity = measure_proxy_fidelity(proxy, full)
    assert [row.objective for row in fidelity.rows] == ["noise_norm", "neg_amd", "fid"]
    assert fidelity.row("noise_norm").correlation is None
    assert fidelity.row("noise_norm").verdict == "undefined"
    assert "extracted is 0 for all 4 candidates" in fidelity.row("noise_norm").reading()
    assert "| `noise_norm` | `extracted` | 4 | n/a | constant |" in fidelity.to_markdown()
    # -AMD at proxy cost falls as the full AMD rises: agreement, rho exactly 1
    assert fidelity.row("neg_amd").correlation.rho == pytest.approx(1.0)
    assert fidelity.row("fid").correlation[:3] == pytest.approx((1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("counterparts", "full", "message"),
    [
        ({"fid": "kid"}, [{"kid": v} for v in (1.0, 2.0, 3.0)], "bare name 'kid'"),
        ({"fid": ("kid", 0)}, [{"kid": v} for v in (1.0, 2.0, 3.0)], "must be \\+1 or -1"),
        ({"fid": ("kid", 1)}, [{"kid": 1.0}, {"kid": 2.0}, {"fid": 3.0}], "candidate 2 have no 'kid'"),
        ({"fid": ("kid", 1)}, [{"kid": 1.0}, {"kid": 2.0}], "full scores for 2"),
        ({"val_loss": ("kid", 1)}, [{"kid": v} for v in (1.0, 2.0, 3.0)], "None of the objectives"),
    ],
)
def test_measure_refuses_ambiguous_or_missing_inputs(counterparts, full, message):
    proxy = [{"fid": v} for v in (3.0, 1.0, 2.0)]
    with pytest.raises(ValueError, match=message):
        measure_proxy_fidelity(proxy, full, counterparts)


def test_selection_takes_extremes_and_knee_then_distinct_others(search):
    _, result = search
    full_ok = {r["key"]: r for r in result.records if r["budget"] == 1.0 and r["status"] == "ok"}
    on_front = {  # brute force: not dominated by any other successful full-budget evaluation
        key for key, r in full_ok.items() if not any(dominates(o["values"], r["values"]) for o in full_ok.values())
    }
    assert len(on_front) >= 4 and len(full_ok) - len(on_front) >= 4
    assert len(result.records) > len(full_ok)  # the low-budget evaluations must be left out

    chosen = select_fidelity_candidates(result, num_front=3, num_other=2, seed=0)
    keys = [c.candidate.key for c in chosen]
    assert len(set(keys)) == 5
    assert all(c.record["status"] == "ok" and c.record["budget"] == 1.0 for c in chosen)
    assert [c.on_front for c in chosen] == [True, True, True, False, False]
    assert [key in on_front for key in keys] == [True, True, True, False, False]
    for index, name in enumerate(result.objectives):
        best = min(r["values"][index] for r in full_ok.values())
        assert any(c.scores[name] == best and c.role == f"lowest {name}" for c in chosen)
    assert chosen[2].role == "knee" and chosen[2].candidate.key == result.knee().candidate.key
    assert all(c.scores == dict(zip(result.objectives, full_ok[c.candidate.key]["values"])) for c in chosen)

    other_seed = select_fidelity_candidates(result, num_front=3, num_other=2, seed=1)
    assert [c.candidate.key for c in other_seed][:3] == keys[:3]
    assert {c.candidate.key for c in other_seed[3:]} | set(keys[3:]) <= set(full_ok) - on_front


def test_selection_warns_when_the_search_has_fewer(search, caplog):
    _, result = search
    chosen = select_fidelity_candidates(result, num_front=100, num_other=0)
    assert len(chosen) == len(result.front)
    assert "selected for the fidelity check instead of 100" in caplog.text
    with pytest.raises(ValueError, match=">= 0"):
        select_fidelity_candidates(result, num_front=-1)


def test_too_few_candidates_give_no_verdict():
    proxy = [{"fid": float(i)} for i in range(3)]
    full = [{"kid": float(i)} for i in range(3)]
    row = measure_proxy_fidelity(proxy, full).row("fid")
    assert row.correlation.rho == 1.0 and (row.correlation.low, row.correlation.high) == (1.0, 1.0)  # degenerate
    assert row.verdict == "too few" and "too few candidates to tell" in row.reading()
    enough = [{"fid": float(i)} for i in range(MIN_CANDIDATES_FOR_VERDICT)]
    full = [{"kid": float(i)} for i in range(MIN_CANDIDATES_FOR_VERDICT)]
    assert measure_proxy_fidelity(enough, full).row("fid").verdict == "agrees"
