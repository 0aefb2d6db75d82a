"""Where evaluations run: in this process, in a local process pool (one GPU per worker), or on a Ray cluster.

An executor takes a list of evaluation tasks and yields ``(index, record)`` pairs as they finish, in any order; the
searcher files each result by its index, so the order of completion never changes the search. Every executor runs
`run_candidate`, which turns a failing candidate into a record instead of an exception.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from .candidate_run import Evaluator, run_candidate


Task = tuple[dict[str, Any], float]
"""One evaluation: the candidate (as `Candidate.to_dict`) and its budget fraction."""


class SerialExecutor:
    """Evaluations one after another in this process (deterministic; what resumed searches are compared with)."""

    name = "serial"

    def map(
        self, evaluator: Evaluator, tasks: Sequence[Task], objectives: Sequence[str]
    ) -> Iterator[tuple[int, dict]]:
        for index, (candidate, budget) in enumerate(tasks):
            yield index, run_candidate(evaluator, candidate, budget, objectives)

    def close(self) -> None:
        pass


def _init_worker(devices: Any) -> None:
    """Pin a pool worker to one GPU (before it imports torch's CUDA state), taken from a shared queue."""
    if devices is None:
        return
    device = devices.get()
    os.environ["CUDA_VISIBLE_DEVICES"] = str(device)


class ProcessExecutor:
    """A local pool of ``num_workers`` spawned processes; with ``gpus`` each worker sees only its own GPU.

    Workers live for the whole search, so an evaluator that caches its base model per process (as `InnerLoop`
    does) loads it once per worker.

    Args:
        num_workers: processes (default: the number of ``gpus``, else 2).
        gpus: GPU indices to spread over the workers, one each (e.g. ``[0, 1, 2, 3]``); ``None`` for CPU workers.
    """

    name = "process"

    def __init__(self, num_workers: int | None = None, gpus: Sequence[int] | None = None) -> None:
        if gpus is not None and num_workers is not None and num_workers > len(gpus):
            raise ValueError(f"{num_workers} workers but only {len(gpus)} GPUs: one GPU per worker.")
        self.num_workers = num_workers or (len(gpus) if gpus else 2)
        context = multiprocessing.get_context("spawn")
        devices = None
        if gpus:
            devices = context.Queue()
            for gpu in list(gpus)[: self.num_workers]:
                devices.put(gpu)
        self._pool = ProcessPoolExecutor(
            max_workers=self.num_workers, mp_context=context, initializer=_init_worker, initargs=(devices,)
        )

    def map(
        self, evaluator: Evaluator, tasks: Sequence[Task], objectives: Sequence[str]
    ) -> Iterator[tuple[int, dict]]:
        futures = {
            self._pool.submit(run_candidate, evaluator, candidate, budget, list(objectives)): index
            for index, (candidate, budget) in enumerate(tasks)
        }
        for future in as_completed(futures):
            yield futures[future], future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Ray tasks, one per evaluation, each asking for ``num_gpus`` GPUs and ``num_cpus`` CPUs.

    Connects to a running cluster (``address="auto"`` on its head node, or ``"host:port"``) or starts a local one
    when none is given and Ray is not yet initialised. Ray reuses its worker processes, so an evaluator's per-process
    model cache survives across tasks. Needs the ``ray`` extra (``pip install "peft-memcontrol[ray]"``).
    """

    name = "ray"

    def __init__(self, num_gpus: float = 0, num_cpus: float = 1, address: str | None = None, **init_kwargs: Any):
        try:
            import ray
        except ImportError as error:
            raise ImportError('The Ray executor needs Ray: pip install "peft-memcontrol[ray]".') from error
        self._ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, **init_kwargs)
            except ConnectionError as error:
                raise ConnectionError(
                    f"Could not connect to the Ray cluster at {address!r}: {error}. Check that the cluster runs "
                    "(`ray status` on its head node). Clusters started with `ray start` use token authentication: "
                    "on the head node pass address='auto' (`--ray_address auto`), which finds the token; elsewhere "
                    "set RAY_AUTH_MODE=token and provide the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN)."
                ) from error
        self._remote = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_retries=0)(run_candidate)
        self._evaluator_ref: Any = None
        self._evaluator: Any = None

    def map(
        self, evaluator: Evaluator, tasks: Sequence[Task], objectives: Sequence[str]
    ) -> Iterator[tuple[int, dict]]:
        ray = self._ray
        if self._evaluator is not evaluator:
            self._evaluator, self._evaluator_ref = evaluator, ray.put(evaluator)
        pending = {
            self._remote.remote(self._evaluator_ref, candidate, budget, list(objectives)): index
            for index, (candidate, budget) in enumerate(tasks)
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)

    def close(self) -> None:
        """Leaves the cluster running (it may be shared); call ``ray.shutdown()`` yourself when done."""


def get_executor(name: str | Any = "serial", **kwargs: Any) -> Any:
    """An executor by name (``"serial"``, ``"process"``, ``"ray"``), or the given executor object."""
    if not isinstance(name, str):
        return name
    executors = {"serial": SerialExecutor, "process": ProcessExecutor, "ray": RayExecutor}
    if name not in executors:
        raise ValueError(f"Unknown executor {name!r}; choose one of {sorted(executors)}.")
    return executors[name](**kwargs)
