"""``memcontrol demo``: the paper's experiment in miniature on the embedded tiny pipeline, offline, with a report.

`run_demo` fine-tunes full, SVDiff, DiffFit, masked attention tuning, random word addition and Wen et al.'s filtering on
handwritten digits with a duplicated subset, searches an SVDiff mask with `MaskSearcher`, scores every model the
same way (`peft_memcontrol.evaluation.evaluate_model`), transfers the mask to faces, and writes a report folder.
`DemoConfig` holds its settings (``default`` and ``quick`` presets).
"""

from .config import PRESETS, DemoConfig
from .runner import run_demo


__all__ = [
    "PRESETS",
    "DemoConfig",
    "run_demo",
]
