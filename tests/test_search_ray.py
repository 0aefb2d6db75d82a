"""Ray and the process pool give the same front as the serial search (real local Ray clusters, 2 CPUs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

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


@pytest.fixture(scope="module")
def serial_front():
    return front("serial")


def memcontrol_search(output_dir, *flags: str, env: dict | None = None) -> dict:
    """Run ``memcontrol search`` on the 8-bit synthetic problem in a new process; return its front.json."""
    command = [sys.executable, "-m", "peft_memcontrol.cli", "search", "--synthetic", "8", "--population_size", "6"]
    command += ["--generations", "2", "--seed", "5", "--output_dir", str(output_dir), "--no_progress", *flags]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((output_dir / "front.json").read_text())["front"]


@pytest.fixture(scope="module")
def shell_cluster():
    """A Ray cluster started the way a user starts one: ``ray start --head`` (2 CPUs), stopped afterwards."""
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    assert ray_cli, "the ray command is missing: pip install -e '.[test]'"
    port = "6391"
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
def test_ray_gives_the_same_front_as_serial(serial_front, shell_cluster):
    """The Python API on the same cluster (one cluster for the module: starting a second local one beside it, or
    right after another was shut down, is slow and raced with its shutdown under load)."""
    import ray

    try:  # "auto" finds the head node's token, as `--ray_address auto` does
        assert front(RayExecutor(num_cpus=1, address="auto")) == serial_front
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_search_cli_on_a_cluster_started_with_ray_start(shell_cluster, tmp_path):
    """The guide's commands: `ray start --head`, then `memcontrol search --executor ray --ray_address ...`."""
    serial = memcontrol_search(tmp_path / "serial")
    on_head = memcontrol_search(tmp_path / "auto", "--executor", "ray", "--ray_address", "auto")
    assert on_head == serial
    with_token = {**os.environ, "RAY_AUTH_MODE": "token"}
    by_address = memcontrol_search(
        tmp_path / "address", "--executor", "ray", "--ray_address", shell_cluster, env=with_token
    )
    assert by_address == serial


@pytest.mark.slow
def test_connecting_without_the_token_names_the_fix(shell_cluster):
    code = f"from peft_memcontrol.search import RayExecutor; RayExecutor(address={shell_cluster!r})"
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert "ConnectionError: Could not connect to the Ray cluster at '127.0.0.1:6391'" in result.stderr
    assert "RAY_AUTH_MODE=token" in result.stderr
