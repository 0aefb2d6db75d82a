"""`check_proxy_fidelity`: after a search, fully fine-tune a sample of its masks and measure whether the inner loop
ranked them like the full fine-tune (``memcontrol search`` runs it by default).

The inner loop (`InnerLoop`) scores each candidate after ``K`` steps on a proxy set; a user cares about the model
fine-tuned on all of their data. The check picks front and non-front candidates (`select_fidelity_candidates`), fine-
tunes each one on every row of the training folder for ``train_steps`` steps (`FullFineTune`, from the base model,
with the search's training settings and the candidate's own mask and learning rate), and evaluates it with
`peft_memcontrol.evaluation.evaluate_model` on:

* the held-out folder (``test_data_dir``; every image, or the first ``num_fid_images``) for FID and KID, and as the
  null distribution of the copy threshold;
* the proxy set's memorized sample as the attacked prompts: the images the inner loop's memorization objectives attack,
  so that the proxy and the full scores differ by the training only, not by which images are attacked;
* every distinct training image (each ``source_id`` once, as `peft_memcontrol.evaluation.load_evaluation_data` reads
  them) as AMD's and replication's reference.

`measure_proxy_fidelity` then gives, per objective, Spearman's rho with its full counterpart and a bootstrap interval.
``fidelity.json`` (candidates with their inner-loop and full scores, the table's rows, the settings) and
``fidelity.md`` are written into the search's folder after every finished candidate: a killed check resumes, reusing
finished candidates only when the search journal's header and the full run's settings are the same
(`peft_memcontrol.search.stored`); under other settings every candidate is trained again. ``front.png`` is drawn
again with the fully fine-tuned candidates ringed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..evaluation import EvaluationData, load_split
from ..training import TrainingConfig
from .fidelity import (
    DEFAULT_FULL_COUNTERPARTS,
    FidelityCandidate,
    ProxyFidelity,
    measure_proxy_fidelity,
    select_fidelity_candidates,
)
from .full_run import FullFineTune
from .inner_loop import InnerLoop, run_settings
from .journal import jsonable
from .lock import search_folder_lock
from .report import draw_plots
from .result import FrontPoint, SearchResult
from .stored import read_stored, write_stored


if TYPE_CHECKING:
    from .searcher import MaskSearcher

logger = logging.getLogger(__name__)

FIDELITY_NAME = "fidelity.json"
FIDELITY_MARKDOWN = "fidelity.md"
NOT_MEASURED = "proxy fidelity not measured"

NO_HELD_OUT = "no held-out folder (--test_data_dir): the full evaluation's KID and copy-threshold calibration need one"

#: Fewest fully evaluated candidates a rank correlation is computed on (with 2 it is always +1 or -1).
MIN_CANDIDATES = 3


@dataclass
class FidelityCheck:
    """The outcome of `check_proxy_fidelity`.

    Attributes:
        candidates: per fully evaluated candidate: ``key``, ``role``, ``on_front``, ``method`` and ``mask`` (what was
            trained), ``learning_rate``, ``proxy`` (its inner-loop scores), ``status`` (``"ok"`` or ``"error"``),
            ``error``, ``full`` (the evaluation's `ModelScores.table_values`, ``None`` for a non-finite value),
            ``train_seconds`` and ``evaluation_seconds``.
        settings: how the candidates were chosen, trained and evaluated.
        fidelity: the rank correlations; ``None`` when not measured (``reason`` says why).
        reason: why nothing was measured, e.g. ``"the search found no mask"``.
    """

    candidates: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    fidelity: ProxyFidelity | None = None
    reason: str | None = None

    def summary_lines(self) -> list[str]:
        """What a terminal shows: one line per objective (rho, interval, verdict), or why nothing was measured."""
        if self.fidelity is None:
            return [f"{NOT_MEASURED}: {self.reason}"]
        return [f"proxy fidelity, {row.summary()}" for row in self.fidelity.rows]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: whether it was measured (or why not), the settings, the candidates and the table's rows."""
        return {
            "measured": self.fidelity is not None,
            "reason": self.reason,
            "settings": self.settings,
            "candidates": self.candidates,
            "rows": [] if self.fidelity is None else [row.to_dict() for row in self.fidelity.rows],
            "unmatched": [] if self.fidelity is None else self.fidelity.unmatched,
        }

    def to_markdown(self) -> str:
        """``fidelity.md``: the correlation table and readings (or why there are none), then the candidates."""
        lines = ["# Proxy fidelity", ""]
        if self.fidelity is None:
            lines += [f"{NOT_MEASURED[0].upper()}{NOT_MEASURED[1:]}: {self.reason}.", ""]
        else:
            lines += [self.fidelity.to_markdown()]
        if self.settings:
            lines += [_settings_sentence(self.settings), ""]
        if self.candidates:
            lines += _candidate_table(self.candidates)
        return "\n".join(lines).rstrip() + "\n"


def _settings_sentence(settings: dict[str, Any]) -> str:
    return (
        f"Each candidate was fine-tuned from the base model for {settings['train_steps']} steps on every row of the "
        f"training folder (its own mask and learning rate, the search's other training settings) and evaluated on "
        f"{settings['num_test_images']} held-out images (KID, FID, copy threshold), the "
        f"{settings['num_memorized_images']} images of the proxy set's memorized sample (the attacked prompts, as in "
        f"the inner loop) and {settings['num_training_images']} distinct training images (AMD, replication)."
    )


def _candidate_table(candidates: list[dict[str, Any]]) -> list[str]:
    """The candidates' inner-loop scores beside their objectives' full counterparts (every full score is in
    ``fidelity.json``)."""
    objectives = list(candidates[0]["proxy"])
    metrics = list(
        dict.fromkeys(DEFAULT_FULL_COUNTERPARTS[n].metric for n in objectives if n in DEFAULT_FULL_COUNTERPARTS)
    )
    header = [
        "candidate",
        "role",
        "learning rate",
        *(f"inner `{n}`" for n in objectives),
        *(f"full `{n}`" for n in metrics),
        "train s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for candidate in candidates:
        full = candidate["full"] or {}
        rate = candidate["learning_rate"]
        cells = [
            f"`{candidate['key']}`",
            candidate["role"],
            "-" if rate is None else f"{rate:.3g}",
            *(f"{candidate['proxy'][n]:.4g}" for n in objectives),
            *(_number(full.get(name)) for name in metrics),
            f"{candidate['train_seconds']:.0f}" if candidate["status"] == "ok" else f"failed: {candidate['error']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def write_fidelity(check: FidelityCheck, output_dir: str, key: Any = None) -> dict[str, str]:
    """``fidelity.json`` (with the ``key`` it was measured under) and ``fidelity.md`` in ``output_dir``."""
    paths = {name: os.path.join(output_dir, name) for name in (FIDELITY_NAME, FIDELITY_MARKDOWN)}
    write_stored(paths[FIDELITY_NAME], key, **check.to_dict())
    with open(paths[FIDELITY_MARKDOWN], "w", encoding="utf-8") as handle:
        handle.write(check.to_markdown())
    return paths


def full_fine_tune_of(loop: InnerLoop, num_fid_images: int | None = None) -> FullFineTune:
    """The full fine-tune the candidates of ``loop``'s search stand in for: its base model, the whole training folder,
    its evaluation settings with ``num_fid_images`` held-out prompts (``None``: every held-out image), scored on the
    data described in the module docstring.

    Raises:
        ValueError: when the loop has no held-out folder (KID and the copy threshold's calibration need one).
    """
    spec = loop.data
    if spec.test_data_dir is None:
        raise ValueError(f"The search has {NO_HELD_OUT}.")
    loaded = loop.load()
    resolution = loaded.proxy.dataset.resolution
    data = EvaluationData(
        test=load_split(spec.test_data_dir, resolution),
        memorization=loaded.memorization,
        training=load_split(spec.train_data_dir, resolution),
    )
    evaluation = replace(loop.evaluation, num_fid_images=num_fid_images)
    return FullFineTune(spec.train_data_dir, data, evaluation, resolution, spec.pretrained_model_name_or_path)


def full_settings(step: FullFineTune, training: TrainingConfig) -> dict[str, Any]:
    """What decides a candidate's full scores besides the search's own settings, as JSON data: the base model, folder
    and resolution, the training config without the fields that only say where and how visibly a run goes, the
    evaluation settings without ``feature_device``, and the sizes of the evaluation data."""
    return jsonable(
        {
            "pretrained_model_name_or_path": step.pretrained_model_name_or_path,
            "train_data_dir": step.train_data_dir,
            "resolution": step.resolution,
            **run_settings(training, step.evaluation),
            "num_test_images": len(step.data.test.captions),
            "num_memorized_images": len(step.data.memorization.captions),
            "num_training_images": len(step.data.training.captions),
        }
    )


def check_proxy_fidelity(
    searcher: MaskSearcher,
    result: SearchResult,
    train_steps: int,
    num_front: int = 3,
    num_other: int = 2,
    num_fid_images: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> FidelityCheck:
    """Fully fine-tune ``num_front`` front and ``num_other`` other candidates of ``result`` for ``train_steps`` steps
    each, evaluate them, and measure the inner loop's rank correlation with the full scores (module docstring).

    Nothing is trained, and the returned check says why, when both counts are 0, when the evaluator is not an
    `InnerLoop` (a synthetic problem has no full fine-tune), when the search found no mask, when it has no held-out
    folder, or when none of its objectives has a full counterpart (`DEFAULT_FULL_COUNTERPARTS`). A candidate whose
    full run fails is recorded with the error and left out of the correlation; with fewer than 3 finished ones there
    is no correlation. The files are written into ``searcher.output_dir`` (when it has one).
    """
    output_dir = searcher.output_dir
    if train_steps < 1:
        raise ValueError(f"train_steps must be at least 1, got {train_steps}.")
    reason = _reason_to_skip(searcher, result, num_front, num_other)
    if reason is not None:
        check = FidelityCheck(reason=reason)
        if output_dir:
            write_fidelity(check, output_dir)
        return check
    loop: InnerLoop = searcher.evaluator
    step = full_fine_tune_of(loop, num_fid_images)
    training = replace(loop.training, max_train_steps=train_steps, report_to=None, show_progress=False)
    full = full_settings(step, training)
    settings = {
        "num_front": num_front,
        "num_other": num_other,
        "seed": seed,
        "train_steps": train_steps,
        **{name: value for name, value in full.items() if name.startswith("num_")},
    }
    key = {"header": searcher.header(), "full": full}
    path = os.path.join(output_dir, FIDELITY_NAME) if output_dir else None
    stored = read_stored(path, key) or {}
    # failed runs are tried again: their failure may have been the machine's (memory, disk), not the candidate's
    finished = {c["key"]: c for c in stored.get("candidates", []) if c["status"] == "ok"}
    chosen = select_fidelity_candidates(result, num_front, num_other, seed=seed)
    check = FidelityCheck(settings=settings)
    with (
        search_folder_lock(output_dir) if output_dir else contextlib.nullcontext(),
        tqdm(total=len(chosen), desc="Proxy fidelity", unit="candidate", disable=not progress) as bar,
    ):
        for choice in chosen:
            done = finished.get(choice.candidate.key)
            if done is None:
                bar.set_postfix_str(f"fine-tuning {choice.candidate.key}")
                done = _run_full(step, training, result, choice)
            check.candidates.append({**done, "role": choice.role, "on_front": choice.on_front})
            if output_dir:
                write_fidelity(
                    replace(check, reason="the check was stopped before every candidate finished"), output_dir, key
                )
            bar.update(1)
    _measure(check, loop.objectives)
    if output_dir:
        write_fidelity(check, output_dir, key)
        draw_plots(result, output_dir, [c["proxy"] for c in check.candidates if c["status"] == "ok"])
    return check


def _reason_to_skip(searcher: MaskSearcher, result: SearchResult, num_front: int, num_other: int) -> str | None:
    """Why the check cannot be made for this search (before anything is trained), or ``None``."""
    if num_front < 0 or num_other < 0:
        raise ValueError(f"num_front and num_other must be >= 0, got {num_front} and {num_other}.")
    if num_front + num_other == 0:
        return "no candidate was to be fully fine-tuned (--fidelity_front and --fidelity_other are 0)"
    if not isinstance(searcher.evaluator, InnerLoop):
        return f"the search's evaluator ({type(searcher.evaluator).__name__}) has no full fine-tune to compare with"
    if not result.front:
        return "the search found no mask"
    if searcher.evaluator.data.test_data_dir is None:
        return f"the search has {NO_HELD_OUT}"
    if not any(name in DEFAULT_FULL_COUNTERPARTS for name in result.objectives):
        return (
            f"none of the objectives {result.objectives} has a full-evaluation counterpart (those that do: "
            f"{', '.join(DEFAULT_FULL_COUNTERPARTS)})"
        )
    return None


def _run_full(
    step: FullFineTune, training: TrainingConfig, result: SearchResult, choice: FidelityCandidate
) -> dict[str, Any]:
    """Fully fine-tune and evaluate one candidate; a failure is recorded, not raised (the others still count)."""
    candidate = choice.candidate
    rate = candidate.learning_rate if candidate.learning_rate is not None else training.learning_rate
    config = result.to_config(FrontPoint(candidate, choice.scores, choice.record))
    entry: dict[str, Any] = {
        "key": candidate.key,
        "method": config.method,
        "mask": dict(config.mask),
        "learning_rate": rate,
        "proxy": dict(choice.scores),
    }
    with tempfile.TemporaryDirectory(prefix="memcontrol-fidelity-") as folder:
        run_training = replace(training, learning_rate=rate, output_dir=os.path.join(folder, "run"))
        try:
            run = step.run(config, run_training)
        except Exception as error:  # one failed fine-tune must not discard the others
            logger.warning(
                "The full fine-tune of candidate %s failed: %s: %s", candidate.key, type(error).__name__, error
            )
            return {
                **entry,
                "status": "error",
                "error": f"{type(error).__name__}: {error}",
                "full": None,
                "train_seconds": 0.0,
                "evaluation_seconds": 0.0,
            }
    full = {name: value if math.isfinite(value) else None for name, value in run.scores.table_values().items()}
    return {
        **entry,
        "status": "ok",
        "error": None,
        "full": full,
        "train_seconds": run.train_seconds,
        "evaluation_seconds": run.evaluation_seconds,
    }


def _measure(check: FidelityCheck, objectives: list[str]) -> None:
    """Set ``check.fidelity`` from its finished candidates, or ``check.reason`` when fewer than 3 can be compared."""
    metrics = {DEFAULT_FULL_COUNTERPARTS[name].metric for name in objectives if name in DEFAULT_FULL_COUNTERPARTS}
    usable = [
        candidate
        for candidate in check.candidates
        if candidate["status"] == "ok" and all(candidate["full"].get(metric) is not None for metric in metrics)
    ]
    if len(usable) < MIN_CANDIDATES:
        check.reason = (
            f"{len(usable)} of {len(check.candidates)} fully evaluated candidates finished with finite scores; a rank "
            f"correlation needs at least {MIN_CANDIDATES} (raise --fidelity_front / --fidelity_other)"
        )
        return
    check.fidelity = measure_proxy_fidelity(
        [candidate["proxy"] for candidate in usable], [candidate["full"] for candidate in usable]
    )
