"""A resumed search evaluates again the candidates that failed through no fault of their own, and only those.

A failed evaluation's record says what kind of failure it was (``error_kind``): ``transient`` for out of memory, a
full disk, an I/O error or a lost GPU or worker, ``persistent`` otherwise. A resume retries the transient ones by
default (``retry_failed="transient"``), every ``error`` with ``"all"``, none with ``"none"``; diverged candidates and
old records without ``error_kind`` are not retried by default. The journal stays append-only: the retry's record
supersedes the failed one when the journal is read back, and the resumed search ends where an uninterrupted run
without the failure ends (same front, same hypervolume history), having evaluated nothing but the retried candidate
again.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from peft_memcontrol.search import GenomeSpace, Journal, MaskSearcher, SearchConfig, SyntheticMaskProblem
from peft_memcontrol.search.executors import error_kind, run_task


UNITS = tuple(f"unit.{i}" for i in range(10))
SPACE = GenomeSpace(units=UNITS, learning_rate_bounds=None)
POPULATION = 6


class FailsOnce:
    """The closed-form 10-bit problem, except that its call number ``fail_at`` raises ``error`` (once).

    ``settings()`` are the problem's: the failure is an accident of one run, not a setting of the evaluations, so a
    run that fails and the run that resumes it share a journal header. ``calls`` lists every evaluation asked for.
    """

    objectives = SyntheticMaskProblem.objectives

    def __init__(self, error: Exception | None = None, fail_at: int = 0, failures: dict[str, str] | None = None):
        self.problem = SyntheticMaskProblem(10, failures=failures)
        self.error = error
        self.fail_at = fail_at
        self.calls: list[tuple[str, float]] = []

    def settings(self) -> dict[str, object]:
        return self.problem.settings()

    def __call__(self, candidate, budget: float = 1.0) -> dict[str, float]:
        self.calls.append((candidate.key, budget))
        if self.error is not None and len(self.calls) - 1 == self.fail_at:
            raise self.error
        return self.problem(candidate, budget)


def search(folder, evaluator, generations: int, **kwargs) -> MaskSearcher:
    config = SearchConfig(population_size=POPULATION, generations=generations, seed=1)
    return MaskSearcher(SPACE, evaluator, config=config, output_dir=folder, progress=False, **kwargs)


def latest_records(folder) -> dict[tuple[str, float], tuple[str, list[float]]]:
    """(genome key, budget) -> (status, values) of the journal's records, a later record superseding an earlier."""
    return {
        (record["key"], record["budget"]): (record["status"], record["values"])
        for record in Journal.read(os.path.join(folder, "journal.jsonl"))
    }


def front(result) -> list[tuple[str, dict[str, float]]]:
    return [(point.candidate.key, point.scores) for point in result.front]


def uninterrupted(folder, generations: int):
    evaluator = FailsOnce()
    result = search(folder, evaluator, generations).run()
    return result, evaluator.calls


# ------------------------------------------------------------------ what counts as transient


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (MemoryError(), "transient"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "transient"),
        (RuntimeError("CUDA error: out of memory"), "transient"),
        (RuntimeError("CUDA error: unspecified launch failure"), "transient"),
        (OSError(errno.ENOSPC, "No space left on device"), "transient"),
        (OSError(errno.EIO, "Input/output error"), "transient"),
        (OSError(errno.ENOENT, "No such file or directory"), "persistent"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "persistent"),
        (ValueError("mask has 3 units, expected 10"), "persistent"),
        (KeyError("fid"), "persistent"),
    ],
)
def test_failures_are_classed_by_whether_a_retry_may_succeed(error, kind):
    assert error_kind(error) == kind

    def evaluator(candidate, budget):
        raise error

    candidate = SPACE.decode([1] * 10).to_dict()
    record = run_task(evaluator, candidate, 1.0, ["memorization", "quality"])
    assert record["status"] == "error" and record["error_kind"] == kind


def test_an_error_raised_from_a_transient_one_is_transient():
    try:
        try:
            raise MemoryError
        except MemoryError as memory:
            raise RuntimeError("training step 3 failed") from memory
    except RuntimeError as wrapped:
        assert error_kind(wrapped) == "transient"


def test_a_result_that_does_not_fit_the_objectives_is_a_persistent_error():
    candidate = SPACE.decode([1] * 10).to_dict()
    record = run_task(lambda candidate, budget: {"memorization": 0.5}, candidate, 1.0, ["memorization", "quality"])
    assert record["status"] == "error" and record["error_kind"] == "persistent"
    ok = run_task(lambda candidate, budget: [0.5, 0.5], candidate, 1.0, ["memorization", "quality"])
    assert ok["status"] == "ok" and "error_kind" not in ok


# ------------------------------------------------------------------ retrying on resume


def test_a_transient_failure_in_the_first_generation_is_retried_and_the_search_ends_as_without_it(tmp_path):
    expected, expected_calls = uninterrupted(tmp_path / "uninterrupted", generations=3)
    assert len(expected_calls) > 2 * POPULATION  # later generations evaluate new candidates

    # Out of memory on the very first evaluation; the search is stopped after its first generation.
    folder = tmp_path / "failed"
    failing = FailsOnce(MemoryError("CUDA host allocation failed"), fail_at=0)
    first = search(folder, failing, generations=0).run()
    failed_key = expected_calls[0][0]
    assert [r for r in first.records if r["status"] == "error"] == [
        next(r for r in first.records if r["key"] == failed_key)
    ]
    assert first.records[0]["error_kind"] == "transient"
    assert failing.calls == expected_calls[:POPULATION]

    resumed_evaluator = FailsOnce()
    resumed = search(folder, resumed_evaluator, generations=3).run()
    # Only the failed candidate is evaluated again; every later generation's evaluations are the uninterrupted run's.
    assert resumed_evaluator.calls == [expected_calls[0], *expected_calls[POPULATION:]]
    assert front(resumed) == front(expected)
    assert [h["hypervolume"] for h in resumed.history] == [h["hypervolume"] for h in expected.history]
    assert resumed.reference_point == expected.reference_point
    # The failed attempt was run (and paid for): one evaluation more in every generation's count.
    assert [h["evaluations"] for h in resumed.history] == [h["evaluations"] + 1 for h in expected.history]
    assert resumed.search_info["evaluations"] == len(expected_calls) + 1
    # Append-only: the failed record stays, the retry's record supersedes it.
    statuses = [(r["key"], r["status"]) for r in Journal.read(folder / "journal.jsonl") if r["key"] == failed_key]
    assert statuses == [(failed_key, "error"), (failed_key, "ok")]
    assert latest_records(folder) == latest_records(tmp_path / "uninterrupted")


def test_a_transient_failure_in_the_last_generation_of_a_finished_search_is_retried(tmp_path):
    expected, expected_calls = uninterrupted(tmp_path / "uninterrupted", generations=2)
    folder = tmp_path / "failed"
    last = len(expected_calls) - 1
    first = search(folder, FailsOnce(OSError(errno.ENOSPC, "No space left on device"), fail_at=last), 2).run()
    assert [r["status"] for r in first.records].count("error") == 1

    resumed_evaluator = FailsOnce()
    resumed = search(folder, resumed_evaluator, generations=2).run()
    assert resumed_evaluator.calls == [expected_calls[last]]
    assert front(resumed) == front(expected)
    assert [h["hypervolume"] for h in resumed.history] == [h["hypervolume"] for h in expected.history]
    assert resumed.history[-1]["evaluations"] == expected.history[-1]["evaluations"] + 1
    assert latest_records(folder) == latest_records(tmp_path / "uninterrupted")
    # A second resume has nothing left to retry.
    again = FailsOnce()
    search(folder, again, generations=2).run()
    assert again.calls == []


def first_generation_failing(folder, error: Exception, failures: dict[str, str] | None = None) -> str:
    """A one-generation search whose first evaluation raises ``error``; returns that candidate's key."""
    evaluator = FailsOnce(error, fail_at=0, failures=failures)
    search(folder, evaluator, generations=0).run()
    return evaluator.calls[0][0]


@pytest.mark.parametrize(
    ("error", "retry_failed", "retried"),
    [
        (MemoryError(), "transient", True),
        (MemoryError(), "none", False),
        (RuntimeError("bug in an objective"), "transient", False),
        (RuntimeError("bug in an objective"), "all", True),
    ],
)
def test_retry_failed_chooses_which_errors_are_evaluated_again(tmp_path, error, retry_failed, retried):
    key = first_generation_failing(tmp_path, error)
    resumed = FailsOnce()
    search(tmp_path, resumed, generations=0, retry_failed=retry_failed).run()
    assert resumed.calls == ([(key, 1.0)] if retried else [])
    assert latest_records(tmp_path)[(key, 1.0)][0] == ("ok" if retried else "error")


def test_diverged_candidates_are_never_retried(tmp_path):
    failures = {"0" * 10: "nan"}
    first = FailsOnce(failures=failures)
    search(tmp_path, first, generations=0).run()
    assert latest_records(tmp_path)[(SPACE.key([0] * 10), 1.0)][0] == "diverged"
    resumed = FailsOnce(failures=failures)
    search(tmp_path, resumed, generations=0, retry_failed="all").run()
    assert resumed.calls == []


def test_records_of_older_journals_without_error_kind_are_not_transient(tmp_path):
    key = first_generation_failing(tmp_path, MemoryError())
    path = tmp_path / "journal.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sum("error_kind" in line for line in lines) == 1
    path.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "error_kind"}) + "\n" for line in lines))

    resumed = FailsOnce()
    search(tmp_path, resumed, generations=0).run()
    assert resumed.calls == []
    search(tmp_path, resumed, generations=0, retry_failed="all").run()
    assert resumed.calls == [(key, 1.0)]


def test_retry_failed_must_be_a_known_policy(tmp_path):
    with pytest.raises(ValueError, match="retry_failed must be one of"):
        search(tmp_path, FailsOnce(), generations=0, retry_failed="always")
