"""Ray gives the same front as the serial search (a real local Ray cluster started with `ray start`, 2 CPUs)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from peft_memcontrol.search import (
    GenomeSpace,
    MaskSearcher,
    RayExecutor,
    SearchConfig,
    SyntheticMaskProblem,
)


# pytest-xdist: run this module's tests in one worker (one local Ray cluster at a time).
pytestmark = pytest.mark.xdist_group("ray")


SPACE = GenomeSpace(units=tuple(f"unit.{i}" for i in range(8)), learning_rate_bounds=(1e-5, 1e-3))
CONFIG = SearchConfig(population_size=6, generations=2, seed=5)


def front(executor) -> list:
    problem = SyntheticMaskProblem(8, seed=1, failures={"11111111": "raise"})
    result = MaskSearcher(SPACE, problem, config=CONFIG, executor=executor, progress=False).run()
    return [(list(p.candidate.genome), p.scores) for p in result.front]


def memcontrol_search(output_dir, *flags: str, env: dict | None = None) -> dict:
    """Run ``memcontrol search`` on the 8-bit synthetic problem in a new process; return its front.json."""
    command = [sys.executable, "-m", "peft_memcontrol.cli", "search", "--synthetic", "8", "--population_size", "6"]
    command += ["--generations", "2", "--seed", "5", "--output_dir", str(output_dir), "--no_progress", *flags]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((output_dir / "front.json").read_text())["front"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def ray_start_cluster() -> Iterator[str]:
    """A Ray cluster started the way a user starts one: ``ray start --head`` (2 CPUs), stopped afterwards; yields its
    address. Inside one test, not a fixture: pytest-xdist may tear a module fixture down between two tests of the
    module, and a ``ray start`` seconds after ``ray stop`` on the same port failed ("Session name ... does not match
    persisted value")."""
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    assert ray_cli, "the ray command is missing: pip install -e '.[test]'"
    port = str(free_port())
    temp_dir = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must stay under 108 characters
    start = [ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", port, "--num-cpus", "2"]
    start += ["--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir]
    started = subprocess.run(start, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, f"ray start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_searches_on_a_cluster_started_with_ray_start(tmp_path):
    """The guide's commands (`ray start --head`, then `memcontrol search --executor ray --ray_address ...`) and the
    Python API give the serial search's front; connecting without the cluster's token names the fix."""
    import ray

    serial = memcontrol_search(tmp_path / "serial")
    with ray_start_cluster() as address:
        try:  # "auto" finds the head node's token, as `--ray_address auto` does
            assert front(RayExecutor(num_cpus=1, address="auto")) == front("serial")
        finally:
            ray.shutdown()
        assert memcontrol_search(tmp_path / "auto", "--executor", "ray", "--ray_address", "auto") == serial
        with_token = {**os.environ, "RAY_AUTH_MODE": "token"}
        by_address = memcontrol_search(
            tmp_path / "address", "--executor", "ray", "--ray_address", address, env=with_token
        )
        assert by_address == serial

        code = f"from peft_memcontrol.search import RayExecutor; RayExecutor(address={address!r})"
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert f"ConnectionError: Could not connect to the Ray cluster at '{address}'" in result.stderr
    assert "RAY_AUTH_MODE=token" in result.stderr
