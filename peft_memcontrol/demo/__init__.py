"""``memcontrol demo``: the paper's experiment in miniature on the embedded tiny pipeline, offline, with a report.

`run_demo` fine-tunes full, SVDiff, DiffFit, attention tuning, random word addition and Wen et al.'s filtering on
handwritten digits with a duplicated subset, searches an SVDiff mask with `MaskSearcher`, scores every model the
same way, transfers the mask to faces, and writes a report folder. `DemoConfig` holds its settings (``default`` and
``quick`` presets).
"""

from .config import PRESETS, DemoConfig
from .data import build_digits_dataset
from .evaluate import ModelScores, evaluate_model
from .runner import run_demo


__all__ = [
    "PRESETS",
    "DemoConfig",
    "ModelScores",
    "build_digits_dataset",
    "evaluate_model",
    "run_demo",
]
