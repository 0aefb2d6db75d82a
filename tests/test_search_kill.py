"""SIGKILL a real serial search at random moments, resume it each time: nothing finished is lost or done again.

The search (the closed-form problem with a learning-rate gene, a little sleep per evaluation to stand in for
training) runs in a subprocess that is killed at seeded random points: after a random number of journal records,
plus a random part of one evaluation, so that kills land between evaluations, in the middle of one, and around the
checkpoint writes. After the last kill the search is run to its end, and its journal must hold exactly the
evaluations of an uninterrupted run: each once, with the same values, and the same front.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peft_memcontrol.search import GenomeSpace, Journal, MaskSearcher, SearchConfig, SyntheticMaskProblem


DELAY = 0.05
"""Seconds per evaluation in the killed runs (the uninterrupted one does not sleep: the delay changes no score)."""

KILLS = 3


def searcher(folder, delay: float = 0.0) -> MaskSearcher:
    space = GenomeSpace(units=tuple(f"unit.{i}" for i in range(10)))
    config = SearchConfig(population_size=8, generations=5, seed=7)
    return MaskSearcher(space, SyntheticMaskProblem(10, delay=delay), config=config, output_dir=folder, progress=False)


DRIVER = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from {Path(__file__).stem} import DELAY, searcher
searcher(sys.argv[1], delay=DELAY).run()
"""


def records(folder) -> list[dict]:
    path = Path(folder) / "journal.jsonl"
    return list(Journal.read(path)) if path.exists() else []


def completed(folder) -> list[tuple[str, float, str, tuple[float, ...]]]:
    return sorted((r["key"], r["budget"], r["status"], tuple(r["values"])) for r in records(folder))


def kill_at_random_point(folder, rng: random.Random, total: int) -> int:
    """Start the search, SIGKILL it after a random number of new journal records plus a random part of an
    evaluation; returns the number of records it had then."""
    journal = Path(folder) / "journal.jsonl"
    before = len(records(folder))
    target = before + rng.randint(1, max(1, (total - before) // 2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", DRIVER, str(folder)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if journal.exists() and journal.read_text().count("\n") - 1 >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, DELAY))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return len(records(folder))


@pytest.mark.slow
def test_serial_search_killed_at_random_points_resumes_without_losing_or_redoing_work(tmp_path):
    expected = searcher(tmp_path / "uninterrupted").run()
    expected_records = completed(tmp_path / "uninterrupted")
    total = len(expected_records)
    assert len({(key, budget) for key, budget, _, _ in expected_records}) == total

    folder = tmp_path / "killed"
    rng = random.Random(13)
    seen = []
    for _ in range(KILLS):
        seen.append(kill_at_random_point(folder, rng, total))
        # Killed before the end, and every record on disk is one of the uninterrupted run's, once.
        assert seen[-1] < total
        assert len(set(completed(folder))) == len(completed(folder)) and set(completed(folder)) <= set(
            expected_records
        )
    assert seen == sorted(seen) and seen[-1] > seen[0]  # each run went on from the last

    resumed = searcher(folder).run()
    assert completed(folder) == expected_records  # nothing lost, nothing evaluated twice
    assert [(p.candidate.key, p.scores) for p in resumed.front] == [
        (p.candidate.key, p.scores) for p in expected.front
    ]
    assert [h["hypervolume"] for h in resumed.history] == [h["hypervolume"] for h in expected.history]
    assert json.loads((folder / "checkpoint.json").read_text())["generation"] == 5
