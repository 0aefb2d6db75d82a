"""`search_folder_lock`: one search at a time in an output folder.

Two searches writing one journal would interleave their records and checkpoints, and a resumed search would then
mix candidates of different runs. The lock is an exclusive ``flock`` on ``<output_dir>/.search.lock``, held while the
search runs; the operating system releases it when the process ends, however it ends, so a killed search leaves no
stale lock and resumes as before. POSIX only (Linux, macOS), like the rest of the process handling.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


LOCK_NAME = ".search.lock"


class SearchFolderBusyError(RuntimeError):
    """Another process is searching in the same output folder."""


@contextmanager
def search_folder_lock(output_dir: str) -> Iterator[None]:
    """Hold the folder's search lock for the ``with`` block; refuse at once when another process holds it."""
    path = os.path.join(output_dir, LOCK_NAME)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open for as long as the lock is held
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SearchFolderBusyError(
                f"{output_dir} is in use by a running search ({holder}). Wait for it to finish (it resumes from "
                "its journal if stopped), or search in another output folder."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock
