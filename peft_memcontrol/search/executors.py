"""Where evaluations run: in this process, in a local process pool (one GPU per worker), or on a Ray cluster.

An executor takes a list of evaluation tasks and yields ``(index, record)`` pairs as they finish, in any order; the
searcher files each result by its index, so the order of completion never changes the search. Every executor runs
`run_task`: `run_candidate`, which turns a failing candidate into a record instead of an exception, plus the record's
``error_kind`` (`error_kind`), which tells a resumed search whether trying the candidate again may succeed.

Process-pool workers exit when the process that started them dies (`_exit_with_parent`), so a killed search leaves
no workers behind holding a model and a GPU.
"""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from .candidate_run import WORST_VALUE, Evaluator, run_candidate


Task = tuple[dict[str, Any], float]
"""One evaluation: the candidate (as `Candidate.to_dict`) and its budget fraction."""

TRANSIENT = "transient"
"""``error_kind`` of a failure that is not the candidate's: out of memory, a full disk, an I/O error, a lost GPU or
worker process. Trying the candidate again may succeed, so a resumed search does (``retry_failed="transient"``)."""

PERSISTENT = "persistent"
"""``error_kind`` of any other failure (a bug, a bad mask, a wrong objective): trying again would fail again."""

TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM})
"""`OSError` numbers of a full disk or quota, a failing device, and memory the system could not give."""

TRANSIENT_MESSAGES = ("out of memory", "uncorrectable ecc error", "unspecified launch failure", "busy or unavailable")
"""Fragments of the `RuntimeError` messages of PyTorch's out-of-memory errors and of a GPU that failed or was lost."""


def error_kind(error: BaseException) -> str:
    """`TRANSIENT` when ``error`` (or the error it was raised from) is not the candidate's fault, else `PERSISTENT`."""
    while error is not None:
        if isinstance(error, (MemoryError, torch.OutOfMemoryError, BrokenProcessPool)):
            return TRANSIENT
        if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
            return TRANSIENT
        if isinstance(error, RuntimeError) and any(text in str(error).lower() for text in TRANSIENT_MESSAGES):
            return TRANSIENT
        error = error.__cause__
    return PERSISTENT


def run_task(
    evaluator: Evaluator, candidate: Mapping[str, Any], budget: float, objectives: Sequence[str]
) -> dict[str, Any]:
    """`run_candidate`, with ``error_kind`` (`error_kind` of what the evaluator raised) in a failed record."""
    raised: list[Exception] = []

    def evaluate(candidate: Any, budget: float) -> Any:
        try:
            return evaluator(candidate, budget)
        except Exception as error:
            raised.append(error)
            raise

    record = run_candidate(evaluate, candidate, budget, objectives)
    if record["status"] == "error":
        # no exception from the evaluator: its result did not fit the objectives, which a retry does not change
        record["error_kind"] = error_kind(raised[0]) if raised else PERSISTENT
    return record


class SerialExecutor:
    """Evaluations one after another in this process (deterministic; what resumed searches are compared with)."""

    name = "serial"

    def map(
        self, evaluator: Evaluator, tasks: Sequence[Task], objectives: Sequence[str]
    ) -> Iterator[tuple[int, dict]]:
        for index, (candidate, budget) in enumerate(tasks):
            yield index, run_task(evaluator, candidate, budget, objectives)

    def close(self) -> None:
        pass


PR_SET_PDEATHSIG = 1
"""Linux ``prctl`` option: the signal the kernel sends a process when its parent dies."""

PARENT_POLL_SECONDS = 0.5
"""How often a worker without ``prctl`` checks that its parent still lives."""


def _exit_with_parent(parent: int) -> None:
    """End this process when the process ``parent`` dies, however it dies (a ``SIGKILL`` runs no clean-up).

    On Linux the kernel sends ``SIGTERM`` (``prctl(PR_SET_PDEATHSIG)``; it fires when the thread that started the
    pool ends, and the pool lives inside one `MaskSearcher.run`). Elsewhere a daemon thread compares ``os.getppid()``
    with ``parent`` every `PARENT_POLL_SECONDS` (an orphan is adopted by another process) and exits.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0:
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent,), name="exit-with-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _init_worker(parent: int, devices: Any) -> None:
    """Make a pool worker exit with ``parent`` (the search), and pin it to one GPU (before it imports torch's CUDA
    state), taken from a shared queue."""
    _exit_with_parent(parent)
    if devices is None:
        return
    device = devices.get()
    os.environ["CUDA_VISIBLE_DEVICES"] = str(device)


def _lost_worker_record(error: BrokenProcessPool, num_objectives: int) -> dict[str, Any]:
    """The record of a task whose worker process died (killed for memory, crashed): a `TRANSIENT` error."""
    return {
        "values": [WORST_VALUE] * num_objectives,
        "status": "error",
        "error": f"{type(error).__name__}: {error}",
        "error_kind": TRANSIENT,
        "seconds": 0.0,
    }


class ProcessExecutor:
    """A local pool of ``num_workers`` spawned processes; with ``gpus`` each worker sees only its own GPU.

    Workers live for the whole search, so an evaluator that caches its base model per process (as `InnerLoop`
    does) loads it once per worker, and they exit when the search's process dies. When a worker dies (killed for
    memory, crashed), the evaluations still running are recorded as `TRANSIENT` errors (a resumed search tries them
    again) and the pool is started afresh for the next ones.

    Args:
        num_workers: processes (default: the number of ``gpus``, else 2).
        gpus: GPU indices to spread over the workers, one each (e.g. ``[0, 1, 2, 3]``); ``None`` for CPU workers.
    """

    name = "process"

    def __init__(self, num_workers: int | None = None, gpus: Sequence[int] | None = None) -> None:
        if gpus is not None and num_workers is not None and num_workers > len(gpus):
            raise ValueError(f"{num_workers} workers but only {len(gpus)} GPUs: one GPU per worker.")
        self.num_workers = num_workers or (len(gpus) if gpus else 2)
        self.gpus = list(gpus)[: self.num_workers] if gpus else None
        self._pool = self._start_pool()

    def _start_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        devices = None
        if self.gpus:
            devices = context.Queue()
            for gpu in self.gpus:
                devices.put(gpu)
        return ProcessPoolExecutor(
            max_workers=self.num_workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(os.getpid(), devices),
        )

    def map(
        self, evaluator: Evaluator, tasks: Sequence[Task], objectives: Sequence[str]
    ) -> Iterator[tuple[int, dict]]:
        futures = {
            self._pool.submit(run_task, evaluator, candidate, budget, list(objectives)): index
            for index, (candidate, budget) in enumerate(tasks)
        }
        broken = False
        for future in as_completed(futures):
            try:
                record = future.result()
            except BrokenProcessPool as error:
                broken = True
                record = _lost_worker_record(error, len(objectives))
            yield futures[future], record
        if broken:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = self._start_pool()

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
        self._remote = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_retries=0)(run_task)
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
