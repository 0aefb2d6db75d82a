"""Never lose work: every finished evaluation goes to a JSON-lines journal (flushed and synced), every generation to a
JSON checkpoint written atomically (temporary file, then ``os.replace``). No pickle anywhere: both files are readable,
diffable and safe to load.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any


JOURNAL_NAME = "journal.jsonl"
"""The journal's file name in a search's output folder."""


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that a reader (or a crash) sees either the old or the new file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class Journal:
    """An append-only JSON-lines file of evaluation records.

    Each `append` writes one line, flushes it and syncs it to disk, so a process killed at any moment leaves every
    finished evaluation on disk; at worst the last line is cut short, and `read` skips it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._repair()
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open for the search's life)

    def _repair(self) -> None:
        """Drop a line cut short by a kill, so that the next record starts on its own line."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and make sure it is on disk before returning."""
        self._handle.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def read(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
        """The records of a journal, skipping a last line cut short."""
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    return
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
