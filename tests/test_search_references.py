"""A search measures the noise of one evaluation and says when its candidates differ by no more than that noise."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from peft_memcontrol.cli import main as cli_main
from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig, SyntheticMaskProblem, measure_references
from peft_memcontrol.search.references import REFERENCES_NAME


UNITS = tuple(f"unit.{i}" for i in range(6))


class CountingProblem(SyntheticMaskProblem):
    """The synthetic problem, counting its evaluations (replicates share the count)."""

    calls = 0

    def __call__(self, candidate, budget=1.0):
        CountingProblem.calls += 1
        return super().__call__(candidate, budget)


class ShrunkProblem(SyntheticMaskProblem):
    """The synthetic problem with every objective's differences between masks shrunk 20-fold, around 1."""

    def objective_grid(self, bits, log_learning_rates):
        return 1.0 + 0.05 * super().objective_grid(bits, log_learning_rates)


def _search(problem, tmp_path):
    space = GenomeSpace(units=UNITS, learning_rate_bounds=None)
    config = SearchConfig(population_size=6, generations=2, seed=0, surrogate="none")
    searcher = MaskSearcher(space, problem, config=config, output_dir=tmp_path / "search", progress=False)
    return searcher, searcher.run()


def test_noise_is_the_standard_deviation_of_the_knees_runs(tmp_path):
    problem = SyntheticMaskProblem(len(UNITS), seed=0, evaluation_noise=0.05)
    searcher, result = _search(problem, tmp_path)
    references = measure_references(searcher, runs=3)
    knee = result.knee().candidate
    runs = [problem(knee), problem.replicate(1)(knee), problem.replicate(2)(knee)]
    expected = np.array([[run[name] for name in result.objectives] for run in runs])
    assert references.candidate_key == knee.key and references.base_model is None
    np.testing.assert_allclose(references.runs, expected, rtol=0, atol=1e-12)
    noise = references.noise()
    for index, name in enumerate(result.objectives):
        assert noise[name] == pytest.approx(np.std(expected[:, index], ddof=1), rel=1e-12)
        assert noise[name] > 0
    # run 0 is the search's own evaluation; a replicate is another draw of the same problem
    assert problem.replicate(0)(knee) == problem(knee) != problem.replicate(1)(knee)


def test_candidates_within_the_noise_are_warned_about_and_separated_ones_are_not(tmp_path):
    separated = SyntheticMaskProblem(len(UNITS), seed=0, evaluation_noise=0.01)
    searcher, result = _search(separated, tmp_path / "separated")
    result.references = measure_references(searcher, runs=3)
    assert result.separation_warnings() == []

    # masks 5% apart (the relative-spread rule is silent), each run off by up to 50%: the noise rule must speak
    flat = ShrunkProblem(len(UNITS), seed=0, evaluation_noise=0.5)
    searcher, result = _search(flat, tmp_path / "flat")
    assert result.separation_warnings() == []
    result.references = measure_references(searcher, runs=3)
    candidates, runs = np.array(result.evaluated_values()), np.array(result.references.runs)
    expected = [
        name
        for index, name in enumerate(result.objectives)
        if np.std(candidates[:, index], ddof=1) < 2 * np.std(runs[:, index], ddof=1)
    ]
    warned = [name for name in result.objectives for w in result.separation_warnings() if f"{name!r} varies" in w]
    assert expected and warned == expected


def test_references_are_kept_and_measured_again_only_when_their_key_changes(tmp_path):
    problem = CountingProblem(len(UNITS), seed=0, evaluation_noise=0.05)
    searcher, _ = _search(problem, tmp_path)
    CountingProblem.calls = 0
    first = measure_references(searcher, runs=3)
    assert CountingProblem.calls == 2
    stored = json.loads((tmp_path / "search" / REFERENCES_NAME).read_text())
    assert stored["references"]["runs"] == first.runs
    again = measure_references(searcher, runs=3)
    assert CountingProblem.calls == 2 and again == first
    fewer = measure_references(searcher, runs=2)
    assert CountingProblem.calls == 3 and fewer.runs == first.runs[:2]


def test_cli_prints_the_noise_and_writes_it_into_the_front(tmp_path, capsys, caplog):
    folder = tmp_path / "search"
    args = ["search", "--synthetic", "6", "--generations", "1", "--no_progress", "--output_dir", str(folder)]
    with caplog.at_level(logging.WARNING):
        assert cli_main([*args, "--synthetic_evaluation_noise", "0.5", "--surrogate", "none"]) == 0
    printed = capsys.readouterr().out
    front = json.loads((folder / "front.json").read_text())
    noise = front["references"]["noise"]
    assert set(noise) == {"memorization", "quality"} and len(front["references"]["runs"]) == 3
    for name, value in noise.items():
        assert f"{name} {value:.3g}" in printed
    # a noise as large as the whole objective range cannot be separated from
    assert any("mostly run-to-run noise" in warning for warning in front["warnings"])
    assert any("mostly run-to-run noise" in record.getMessage() for record in caplog.records)

    # the chosen mask records where it sits on the front, why it was chosen, and the noise its scores carry
    search = json.loads((folder / "chosen" / "knee" / "adapter_config.json").read_text())["search"]
    keys = [point["key"] for point in front["front"]]
    assert search["chosen"] == "knee" and search["front_size"] == len(keys)
    assert keys[search["front_position"] - 1] == front["references"]["candidate_key"]
    assert search["noise"] == {**noise, "runs": 3}
    assert "knee" in (folder / "chosen" / "knee" / "README.md").read_text()

    with pytest.raises(SystemExit):
        cli_main([*args, "--noise_runs", "x"])
    assert cli_main([*args, "--noise_runs", "0"]) == 2
