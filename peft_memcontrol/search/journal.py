"""Never lose work: every finished evaluation goes to a JSON-lines journal (flushed and synced), every generation to a
JSON checkpoint written atomically (temporary file, then ``os.replace``). No pickle anywhere: both files are readable,
diffable and safe to load.

The journal's first line is a header (`JOURNAL_FORMAT`): the settings every evaluation in it was made with (genome
space, objectives, search config, the evaluator's and the constraint's settings, the package version). A resumed
search compares it with its own and refuses to reuse evaluations made with other settings.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from numbers import Real
from typing import Any


JOURNAL_NAME = "journal.jsonl"
"""The journal's file name in a search's output folder."""

JOURNAL_FORMAT = "peft-memcontrol-search-journal/1"
"""The ``journal`` field of a journal's header line; a journal whose first line lacks it is refused."""

RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "key": str,
    "genome": list,
    "budget": Real,
    "status": str,
    "values": list,
    "generation": int,
}
"""The fields every evaluation record must hold, and their types (`Journal.read` checks them). A failed record
(``status`` ``"error"``) also says whether the failure was the candidate's (``error_kind``: ``"transient"`` or
``"persistent"``, `peft_memcontrol.search.executors.error_kind`); older journals lack it."""


class JournalError(ValueError):
    """A search folder that cannot be resumed: a damaged journal or checkpoint, or one written by another search.

    The message names the file (and line) and the way out.
    """


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
    """The JSON content of ``path``; raises `JournalError` naming the file and the position when it is not JSON."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise JournalError(
                f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): it was damaged "
                "or cut short outside the search, which always writes it whole."
            ) from error


def jsonable(value: Any) -> Any:
    """``value`` as JSON data for a journal header: mappings and sequences element-wise, numbers, strings and
    ``None`` as they are, anything else (a module, a function, a device) by its name, so that settings compare by
    what they are rather than by their address in memory."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    named = value if hasattr(value, "__qualname__") else type(value)
    return f"{named.__module__}.{named.__qualname__}"


class Journal:
    """An append-only JSON-lines file: a header line (the search's settings), then one evaluation record a line.

    Each `append` writes one line, flushes it and syncs it to disk, so a process killed at any moment leaves every
    finished evaluation on disk; at worst the last line is cut short: `read` ignores it, and opening the journal
    again removes it. Any other line that is not a record is refused with its file and line number. The journal is
    never rewritten: evaluating a failed candidate again appends a record that supersedes the earlier one of the same
    genome and budget when the journal is read back.

    Args:
        path: the journal file (created if missing).
        header: written as the first line when the journal is new (or empty); ignored for a journal that has one
            (the searcher compares the two before opening it).
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any] | None = None) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._repair()
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open for the search's life)
        if header is not None and self._handle.tell() == 0:
            self.append({"journal": JOURNAL_FORMAT, **header})

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
    def _lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, JSON object) of each complete line; a last line cut short is left out."""
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith("\n"):
                    return
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as error:
                    raise JournalError(f"{path}, line {number}: not JSON ({error.msg}).") from error
                if not isinstance(data, dict):
                    raise JournalError(f"{path}, line {number}: a {type(data).__name__}, not a JSON object.")
                yield number, data

    @staticmethod
    def read_header(path: str | os.PathLike) -> dict[str, Any] | None:
        """The header of the journal at ``path`` without its ``journal`` field; ``None`` when there is no journal or
        no complete line yet. Raises `JournalError` for a journal that starts without a header (written before
        headers existed, or not by this searcher)."""
        for number, data in Journal._lines(path):
            if data.get("journal") != JOURNAL_FORMAT:
                raise JournalError(
                    f"{path}, line {number}: no header (expected {{'journal': {JOURNAL_FORMAT!r}, ...}}): the journal "
                    "was written by an older peft-memcontrol or another program, so the settings of its evaluations "
                    "are unknown and it cannot be resumed. Start afresh in another output folder (`output_dir`, "
                    "`--output_dir` of `memcontrol search`) or delete it."
                )
            return {name: value for name, value in data.items() if name != "journal"}
        return None

    @staticmethod
    def read(path: str | os.PathLike, num_values: int | None = None) -> Iterator[dict[str, Any]]:
        """The evaluation records of a journal (after its header), skipping a last line cut short.

        Raises `JournalError`, naming the file and the line, for a line that is not a record (`RECORD_FIELDS`), or
        whose ``values`` are not ``num_values`` numbers (when given).
        """
        for number, data in Journal._lines(path):
            if number == 1 and data.get("journal") == JOURNAL_FORMAT:
                continue
            problems = [
                f"{name!r} missing" if name not in data else f"{name!r} is not a {getattr(kind, '__name__', kind)}"
                for name, kind in RECORD_FIELDS.items()
                if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool)
            ]
            values = data.get("values")
            if num_values is not None and isinstance(values, list):
                numbers = [v for v in values if isinstance(v, Real) and not isinstance(v, bool)]
                if len(numbers) != num_values:
                    problems.append(f"'values' is not {num_values} numbers")
            if problems:
                raise JournalError(
                    f"{path}, line {number}: not an evaluation record ({', '.join(problems)}). Remove or mend that "
                    "line to resume (the evaluation it stood for is then run again)."
                )
            yield data
