"""A process-pool worker that dies is a transient failure.

A worker that dies in the middle of an evaluation (killed for memory) leaves a ``transient`` error record, the search
goes on with a new pool, and a resumed search evaluates that candidate again. (That workers die with a SIGKILLed
driver is checked at random kill points in tests/test_search_kill.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peft_memcontrol.search import (
    GenomeSpace,
    Journal,
    MaskSearcher,
    ProcessExecutor,
    SearchConfig,
    SyntheticMaskProblem,
)


UNITS = tuple(f"unit.{i}" for i in range(10))


class DiesOnce(SyntheticMaskProblem):
    """The closed-form problem, except that the first evaluation of the genome ``dies_on`` ends its worker process
    (as the kernel's out-of-memory killer would); a marker file makes it happen once across processes."""

    def __init__(self, marker: str, dies_on: list[int]) -> None:
        super().__init__(10)
        self.marker = marker
        self.dies_on = dies_on

    def __call__(self, candidate, budget: float = 1.0) -> dict[str, float]:
        if candidate.bits == self.dies_on and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return super().__call__(candidate, budget)


@pytest.mark.slow
def test_a_lost_worker_is_a_transient_failure_retried_on_resume(tmp_path):
    space = GenomeSpace(units=UNITS, learning_rate_bounds=None)
    config = SearchConfig(population_size=6, generations=1, seed=0)
    folder, marker = tmp_path / "search", str(tmp_path / "died")
    evaluator = DiesOnce(marker, [1] * 10)

    def run(executor):
        return MaskSearcher(
            space, evaluator, config=config, output_dir=folder, executor=executor, progress=False
        ).run()

    first = run(ProcessExecutor(num_workers=2))
    assert os.path.exists(marker)
    lost = [record for record in first.records if record["status"] == "error"]
    assert lost and all(record["error_kind"] == "transient" for record in lost)
    assert all("BrokenProcessPool" in record["error"] for record in lost)
    assert space.key([1] * 10) in {record["key"] for record in lost}
    # The search went on with a new pool: the next generation was evaluated.
    assert any(record["generation"] == 1 and record["status"] == "ok" for record in first.records)

    run("serial")
    latest = {record["key"]: record for record in Journal.read(folder / "journal.jsonl")}
    problem = SyntheticMaskProblem(10)
    for record in lost:
        retried = latest[record["key"]]
        assert retried["status"] == "ok"
        assert retried["values"] == list(problem.values(record["genome"]))
