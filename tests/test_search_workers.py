"""Process-pool workers die with the search that started them, and a worker that dies is a transient failure.

A SIGKILLed driver runs no clean-up, so without help its workers live on, each holding a model (and a GPU). Here a
real driver process starts a real pool whose workers block in an evaluation; the driver is SIGKILLed and its
workers must be gone within seconds. A worker that dies in the middle of an evaluation (killed for memory) leaves a
``transient`` error record, the search goes on with a new pool, and a resumed search evaluates that candidate again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
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

DRIVER = textwrap.dedent(
    """
    import os, sys, time
    from peft_memcontrol.search import GenomeSpace, ProcessExecutor

    class Blocks:
        '''Writes its worker's pid into a folder, then blocks (an evaluation that takes long).'''

        def __init__(self, folder):
            self.folder = folder

        def __call__(self, candidate, budget):
            with open(os.path.join(self.folder, f"{os.getpid()}.pid"), "w") as handle:
                handle.write("started")
            time.sleep(300)
            return [0.0, 0.0]

    if __name__ == "__main__":
        space = GenomeSpace(units=[f"unit.{i}" for i in range(4)], learning_rate_bounds=None)
        tasks = [(space.decode([1, 0, 1, i % 2]).to_dict(), 1.0) for i in range(2)]
        executor = ProcessExecutor(num_workers=2)
        for _ in executor.map(Blocks(sys.argv[1]), tasks, ["a", "b"]):
            pass
    """
)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_driver_is_killed(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    driver = subprocess.Popen([sys.executable, str(script), str(pids_dir)], stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        assert wait_for(lambda: len(list(pids_dir.glob("*.pid"))) == 2, 120), "the workers did not start"
        workers = [int(path.stem) for path in pids_dir.glob("*.pid")]
        assert all(alive(pid) for pid in workers) and driver.pid not in workers
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert wait_for(lambda: not any(alive(pid) for pid in workers), 5), "workers outlived the killed driver"
    finally:
        for pid in [driver.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


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
