"""Several evaluation runs in one table (`memcontrol report RUN...`), refused when their scores are not comparable.

Each run is a folder written by ``examples/evaluate_memorization.py`` (``results.json``). A table is only honest when
its rows were scored the same way: the same data, generation settings and feature space, and the same calibrated
thresholds (a copy threshold set on one data set means nothing on another). `combined_report` checks that and
refuses otherwise, naming every difference.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .pictures import load_prompt_records, nearest_picture
from .table import EVALUATION_COLUMNS, markdown_table


PER_RUN_SETTINGS = frozenset(
    {
        "pretrained_model_name_or_path",
        "revision",
        "variant",
        "adapter_dir",
        "label",
        "device",
        "mixed_precision",
        "generation_batch_size",
        "output_dir",
        "save_generations",
        "update_model_card",
        "disable_progress",
    }
)
"""Settings of ``evaluate_memorization.py`` that say which model is scored and where, not how: they may differ
between the rows of one table. Every other setting (data, generation, attack, feature space, seed) must be equal."""


class RunComparisonError(ValueError):
    """The runs were not scored the same way: their rows cannot share a table."""


def load_run(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``results.json`` of an evaluation run (JSON only), with the folder it came from under ``"folder"``."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: pass folders written by examples/evaluate_memorization.py.")
    try:
        with open(path, encoding="utf-8") as handle:
            run = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}).") from error
    missing = sorted({"label", "scores", "verdict", "calibration", "settings", "counts"} - set(run))
    if missing:
        raise ValueError(f"{path} lacks {missing}: it was not written by examples/evaluate_memorization.py.")
    scores = run["scores"] if isinstance(run["scores"], dict) else {}
    missing_scores = [key for key, _, _ in EVALUATION_COLUMNS[1:] if not _is_number(scores.get(key))]
    if missing_scores:
        raise ValueError(
            f"{path} has no numeric score for {missing_scores} (a hand-edited file, or one written by an older "
            "version): evaluate the model again with examples/evaluate_memorization.py."
        )
    return {**run, "folder": os.fspath(folder)}


def differences(runs: Sequence[dict[str, Any]]) -> list[str]:
    """What differs between the runs' scoring (settings outside `PER_RUN_SETTINGS`, counts, calibration), one
    sentence per field, naming the first run as the reference."""
    reference = runs[0]
    found = []
    for run in runs[1:]:
        for section in ("settings", "counts", "calibration"):
            keys = set(reference[section]) | set(run[section])
            for key in sorted(keys - (PER_RUN_SETTINGS if section == "settings" else set())):
                if reference[section].get(key) != run[section].get(key):
                    found.append(
                        f"{section}.{key}: {_short(reference[section].get(key))} in {reference['folder']}, "
                        f"{_short(run[section].get(key))} in {run['folder']}"
                    )
    return found


def combined_report(runs: Sequence[dict[str, Any]], allow_different_settings: bool = False) -> str:
    """One markdown table with a row per run, each run's verdict, and the calibration the rows share.

    Raises:
        RunComparisonError: when the runs were scored differently (`differences`), unless
            ``allow_different_settings``; the report then lists the differences above the table.
    """
    if not runs:
        raise ValueError("No runs to report.")
    labels = [run["label"] for run in runs]
    if len(set(labels)) < len(labels):
        raise ValueError(f"Two runs share a label ({labels}): evaluate them with --label to tell the rows apart.")
    found = differences(runs)
    if found and not allow_different_settings:
        raise RunComparisonError(
            "These runs were not scored the same way, so their rows cannot share a table: "
            + "; ".join(found[:10])
            + (f" (and {len(found) - 10} more)" if len(found) > 10 else "")
            + ". Evaluate every model with the same data and settings (only the model may differ), or pass "
            "--allow_different_settings to write the table with these differences listed above it."
        )
    lines = ["# Evaluation runs", ""]
    if found:
        lines += ["**These rows were scored differently; compare them with care:**", ""]
        lines += [f"- {difference}" for difference in found] + [""]
    rows = [{"method": run["label"], **run["scores"]} for run in runs]
    lines += [markdown_table(rows, EVALUATION_COLUMNS)]
    lines += [f"- **{run['label']}** ({run['folder']}): {run['verdict']}" for run in runs]
    lines += ["", "Calibration" + (" (of the first run)" if found else ", shared by every row") + ":"]
    lines += [f"- {line}" for line in _calibration_lines(runs[0]["calibration"])]
    return "\n".join(lines) + "\n"


def runs_picture(runs: Sequence[dict[str, Any]], path: str, num_prompts: int = 4) -> str:
    """`nearest_picture` of the runs (one column per run, by label) for the prompts the first run copies most
    closely; returns ``path``. The runs must have attacked the same prompts (`load_prompt_records` reads each run's
    images)."""
    records = {run["label"]: load_prompt_records(run["folder"], run.get("per_prompt") or []) for run in runs}
    return nearest_picture(records, path, num_prompts=num_prompts)


def _calibration_lines(calibration: dict[str, Any]) -> list[str]:
    """The report lines `EvaluationCalibration.to_dict` stored under ``"description"``."""
    return [str(line) for line in calibration.get("description", [])] or [json.dumps(calibration, sort_keys=True)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
