"""SIGKILL a real search, serial or on a process pool, at random moments, resume it each time: nothing finished is
lost or done again.

The search (the closed-form problem with a learning-rate gene, a little sleep per evaluation to stand in for
training) runs in a driver process that is killed at seeded random points: after a random number of journal records,
plus a random part of one evaluation, so that kills land between evaluations, in the middle of one, and around the
checkpoint writes. After each kill no process the driver started may live on. After the last kill the search is run
to its end, and its journal must hold exactly the evaluations of an uninterrupted serial run: each once, with the same
values, and the same front and hypervolumes. The serial run is the reference for the process pool too: a pool
finishes evaluations in any order (its journal is compared as a set), and the search must not depend on that order,
so it must reach what the serial search reaches (a worker that dies mid-evaluation: ``test_search_workers.py``).

Drivers are forked from a forkserver that has imported the package once, so a killed run costs its evaluations (and
the pool's worker start-up), not an import of torch and diffusers.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from peft_memcontrol.search import (
    GenomeSpace,
    Journal,
    MaskSearcher,
    ProcessExecutor,
    SearchConfig,
    SerialExecutor,
    SyntheticMaskProblem,
)

from helpers.processes import alive, wait_for


DELAY = 0.05
"""Seconds per evaluation in the killed runs (the uninterrupted one does not sleep: the delay changes no score)."""

KILLS = 3

WORKERS = 2
"""Processes of the process pool."""

FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["peft_memcontrol.search"])  # imported once; each driver forks in milliseconds


def searcher(folder, executor: str, delay: float = 0.0) -> MaskSearcher:
    """The search under test, on ``executor``: ``"serial"`` or ``"process"`` (a pool of `WORKERS` processes)."""
    space = GenomeSpace(units=tuple(f"unit.{i}" for i in range(10)))
    config = SearchConfig(population_size=8, generations=5, seed=7)
    return MaskSearcher(
        space,
        SyntheticMaskProblem(10, delay=delay),
        config=config,
        output_dir=folder,
        executor=ProcessExecutor(num_workers=WORKERS) if executor == "process" else executor,
        progress=False,
    )


def drive(folder: str, executor: str) -> None:
    """The killed driver's work: the search with the evaluation delay."""
    searcher(folder, executor, delay=DELAY).run()


def records(folder) -> list[dict]:
    path = Path(folder) / "journal.jsonl"
    return list(Journal.read(path)) if path.exists() else []


def completed(folder) -> list[tuple[str, float, str, tuple[float, ...]]]:
    return sorted((r["key"], r["budget"], r["status"], tuple(r["values"])) for r in records(folder))


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and the ones they started (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while we read
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_at_random_point(folder, executor: str, rng: random.Random, total: int) -> int:
    """Start the search, SIGKILL it after a random number of new journal records plus a random part of an
    evaluation; check that every process it started ends with it. Returns the number of records it had then."""
    journal = Path(folder) / "journal.jsonl"
    before = len(records(folder))
    target = before + rng.randint(1, max(1, (total - before) // 2))
    process = FORKSERVER.Process(target=drive, args=(str(folder), executor))
    process.start()
    started = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.is_alive():
            if journal.exists() and journal.read_text().count("\n") - 1 >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, DELAY))
        started = descendants(process.pid)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    assert process.exitcode == -signal.SIGKILL, "the search ended before it was killed"
    assert len(started) == (WORKERS if executor == "process" else 0), f"the driver had child processes {started}"
    assert wait_for(lambda: not any(alive(pid) for pid in started), 10), "processes outlived the killed driver"
    return len(records(folder))


def killed_and_resumed_equals_uninterrupted(folder: Path, reference: Path, executor: str) -> None:
    """Kill a search on ``executor`` in ``folder`` `KILLS` times, resume it to the end, and compare it with an
    uninterrupted serial search in ``reference``."""
    expected = searcher(reference, "serial").run()
    expected_records = completed(reference)
    total = len(expected_records)
    assert len({(key, budget) for key, budget, _, _ in expected_records}) == total

    rng = random.Random(13)
    seen = []
    for _ in range(KILLS):
        seen.append(kill_at_random_point(folder, executor, rng, total))
        # Killed before the end, and every record on disk is one of the uninterrupted run's, once.
        assert seen[-1] < total
        assert len(set(completed(folder))) == len(completed(folder)) and set(completed(folder)) <= set(
            expected_records
        )
    assert seen == sorted(seen) and seen[-1] > seen[0]  # each run went on from the last

    resumed = searcher(folder, executor).run()
    assert completed(folder) == expected_records  # nothing lost, nothing evaluated twice
    assert [(p.candidate.key, p.scores) for p in resumed.front] == [
        (p.candidate.key, p.scores) for p in expected.front
    ]
    assert [h["hypervolume"] for h in resumed.history] == [h["hypervolume"] for h in expected.history]
    assert json.loads((folder / "checkpoint.json").read_text())["generation"] == 5


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_serial_search_killed_at_random_points_resumes_without_losing_or_redoing_work(tmp_path):
    killed_and_resumed_equals_uninterrupted(tmp_path / "killed", tmp_path / "uninterrupted", "serial")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_pool_search_killed_at_random_points_resumes_without_losing_or_redoing_work(tmp_path):
    killed_and_resumed_equals_uninterrupted(tmp_path / "killed", tmp_path / "uninterrupted", "process")


class IgnoresLearningRate(SyntheticMaskProblem):
    """The closed-form problem scored without the learning-rate gene (as an empty mask trains nothing at any rate):
    genomes that differ only in their learning rate tie."""

    def __call__(self, candidate, budget: float = 1.0) -> dict[str, float]:
        return super().__call__(dataclasses.replace(candidate, learning_rate=None), budget)


class FinishesLastFirst(SerialExecutor):
    """Evaluations that finish last to first, as a process pool may finish them."""

    def map(self, evaluator, tasks, objectives):
        return reversed(list(super().map(evaluator, tasks, objectives)))


def test_the_front_does_not_depend_on_the_order_evaluations_finish_in():
    space = GenomeSpace(units=tuple(f"unit.{i}" for i in range(4)))
    config = SearchConfig(population_size=6, generations=2, seed=7)
    results = [
        MaskSearcher(space, IgnoresLearningRate(4), config=config, executor=executor, progress=False).run()
        for executor in ("serial", FinishesLastFirst())
    ]
    serial, reversed_order = ([(p.candidate.key, p.scores) for p in result.front] for result in results)
    assert serial == reversed_order
    # Of equal points the front keeps the smallest key; the search met equal points, or this test proves nothing.
    ties = 0
    for point in results[0].front:
        equal = [r["key"] for r in results[0].records if r["status"] == "ok" and r["values"] == point.record["values"]]
        assert point.candidate.key == min(equal)
        ties += len(equal) > 1
    assert ties
