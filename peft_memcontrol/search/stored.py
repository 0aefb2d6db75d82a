"""Measurements kept beside a search's journal (``references.json``, ``fidelity.json``), each valid only under the key
it was measured with.

A measurement made after a search (the noise of one evaluation, the proxy-fidelity check) is costly, so it is written
to the search's folder and read back by a later run. The file stores the key of the measurement (the search journal's
header and the measurement's own settings) beside the results; `read_stored` returns them only when that key equals
the caller's, so a result measured under other settings is measured again, never reused.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .journal import atomic_write_json


logger = logging.getLogger(__name__)


def as_stored(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists, keys strings): what a stored key is compared with."""
    return json.loads(json.dumps(value, allow_nan=False))


def read_stored(path: str | None, key: Any) -> dict[str, Any] | None:
    """The JSON object in ``path`` when its ``"key"`` equals ``key``; ``None`` when there is no file, when it cannot
    be read (with a warning) or when it was measured under another key (logged, naming the file)."""
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("%s cannot be read (%s); measuring again.", path, error)
        return None
    if not isinstance(stored, dict) or stored.get("key") != as_stored(key):
        logger.info("%s was measured under other settings; measuring again.", path)
        return None
    return stored


def write_stored(path: str, key: Any, **results: Any) -> None:
    """Write ``results`` with their ``key`` to ``path`` (atomically: a killed run leaves the old file or the new)."""
    atomic_write_json(path, {"key": as_stored(key), **results})
