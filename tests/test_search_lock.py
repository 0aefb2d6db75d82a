"""One search at a time in an output folder: a second one is refused while the first runs, and a killed search
leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from peft_memcontrol.cli import main
from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig, SearchFolderBusyError, SyntheticMaskProblem
from peft_memcontrol.search.lock import LOCK_NAME


# Another process, written independently of the library (a bare flock on the lock file, no package import): it
# holds the lock and says so, or (with "try") exits 1 when it cannot take it.
HOLD = """
import fcntl, os, sys, time
handle = open(os.path.join(sys.argv[1], ".search.lock"), "a+")
try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(1)
if sys.argv[2] == "hold":
    handle.seek(0); handle.truncate(); handle.write(f"pid {os.getpid()}"); handle.flush()
    print("locked", flush=True)
    time.sleep(120)
"""


def searcher(folder) -> MaskSearcher:
    space = GenomeSpace(units=tuple(f"unit.{i}" for i in range(6)), learning_rate_bounds=None)
    return MaskSearcher(
        space,
        SyntheticMaskProblem(6, seed=0),
        config=SearchConfig(population_size=4, generations=1, seed=0),
        output_dir=str(folder),
        progress=False,
    )


def test_a_second_search_in_a_busy_folder_is_refused_and_a_killed_holder_frees_it(tmp_path, capsys):
    folder = tmp_path / "search"
    first = searcher(folder).run()  # a finished search: its journal is what a second run must not touch
    journal = (folder / "journal.jsonl").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "hold"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SearchFolderBusyError, match=f"pid {holder.pid}"):
            searcher(folder).run()
        args = ["search", "--synthetic", "6", "--population_size", "4", "--generations", "1", "--no_progress"]
        assert main([*args, "--output_dir", str(folder)]) == 2
        assert "in use by a running search" in capsys.readouterr().err
        assert (folder / "journal.jsonl").read_bytes() == journal
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the kernel released the killed holder's lock: the search resumes (nothing left to run) with the same front
    resumed = searcher(folder).run()
    assert resumed.front_values() == first.front_values()
    assert (folder / LOCK_NAME).is_file()


def test_the_lock_is_held_only_while_a_search_runs(tmp_path):
    folder = tmp_path / "search"
    probe = []

    def evaluate(candidate, budget):
        if not probe:  # from inside the search, another process must find the folder locked
            probe.append(subprocess.run([sys.executable, "-c", HOLD, str(folder), "try"]).returncode)
        return SyntheticMaskProblem(6, seed=0)(candidate, budget)

    space = GenomeSpace(units=tuple(f"unit.{i}" for i in range(6)), learning_rate_bounds=None)
    MaskSearcher(
        space,
        evaluate,
        objectives=SyntheticMaskProblem.objectives,
        config=SearchConfig(population_size=4, generations=0, seed=0),
        output_dir=str(folder),
        progress=False,
    ).run()
    assert probe == [1]  # locked while the search ran
    assert subprocess.run([sys.executable, "-c", HOLD, str(folder), "try"]).returncode == 0  # released after it
