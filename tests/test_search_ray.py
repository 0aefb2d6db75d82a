"""Ray and the process pool give the same front as the serial search (real local Ray cluster, 2 CPUs)."""

from __future__ import annotations

import pytest

from peft_memcontrol.search import (
    GenomeSpace,
    MaskSearcher,
    ProcessPoolExecutor,
    RayExecutor,
    SearchConfig,
    SyntheticMaskProblem,
)


SPACE = GenomeSpace(units=tuple(f"unit.{i}" for i in range(8)), learning_rate_bounds=(1e-5, 1e-3))
CONFIG = SearchConfig(population_size=6, generations=2, seed=5)


def front(executor) -> list:
    problem = SyntheticMaskProblem(8, seed=1, failures={"11111111": "raise"})
    result = MaskSearcher(SPACE, problem, config=CONFIG, executor=executor, progress=False).run()
    return [(list(p.candidate.genome), p.scores) for p in result.front]


@pytest.fixture(scope="module")
def serial_front():
    return front("serial")


@pytest.mark.slow
def test_ray_gives_the_same_front_as_serial(serial_front):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert front(RayExecutor(num_cpus=1)) == serial_front
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_process_pool_gives_the_same_front_as_serial(serial_front):
    assert front(ProcessPoolExecutor(num_workers=2)) == serial_front
