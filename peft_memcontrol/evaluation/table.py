"""Scores as a markdown table: the one layout of the demo's report and the evaluation script's ``results.md``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


Column = tuple[str, str, str]
"""(key of the row, header, format pattern)."""

EVALUATION_COLUMNS: list[Column] = [
    ("method", "model", "{}"),
    ("fid", "FID ↓", "{:.2f}"),
    ("kid", "KID ↓", "{:.4f}"),
    ("kid_se", "KID s.e.", "{:.4f}"),
    ("mifid", "MiFID ↓", "{:.2f}"),
    ("amd", "AMD ↑", "{:.4f}"),
    ("extracted", "extracted ↓", "{:d}"),
    ("flagged", "flagged ↓", "{:d}"),
    ("replication", "replication ↓", "{:.2f}"),
    ("replication_p95", "replication p95 ↓", "{:.3f}"),
    ("noise_norm", "noise norm ↓", "{:.4f}"),
]
"""The columns of ``examples/evaluate_memorization.py``'s ``results.md`` and of `memcontrol report`."""


def _format(value: Any, pattern: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if pattern == "{:d}":
        value = int(value)
    return pattern.format(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A markdown table of ``rows``; ``columns`` are (key, header, format). The ``method`` column is left-aligned,
    the others (numbers) right-aligned."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if key == "method" else "---:" for key, _, _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_format(row[key], pattern) for key, _, pattern in columns) + " |")
    return "\n".join(lines) + "\n"
