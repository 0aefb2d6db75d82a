"""Scoring a text-to-image model for quality and memorization: the one meaning of "evaluate" in this project.

`evaluate_model` scores a pipeline on `EvaluationData` (held-out, memorized and training images, read with
`load_split`) under `EvaluationSettings`; `generate` is the one loop that turns prompts into seeded generations
(the search's objectives use it too); a `FeatureBank` embeds each fixed image set once per process;
`markdown_table` lays scores out; `nearest_picture` draws generations beside the training images they come
closest to. The metrics themselves live in `peft_memcontrol.metrics`.
"""

from .calibration import EvaluationCalibration, calibrate_evaluation, vae_reconstructions
from .data import EvaluationData, SplitImages, dataset_split, load_evaluation_data, load_split
from .evaluate import ModelScores, evaluate_model
from .features import FeatureBank, feature_bank
from .generation import generate
from .pictures import load_prompt_records, nearest_picture, save_prompt_images
from .report import RunComparisonError, combined_report, load_run, runs_picture
from .settings import EvaluationSettings
from .table import EVALUATION_COLUMNS, markdown_table
from .verdict import memorization_verdict


__all__ = [
    "EVALUATION_COLUMNS",
    "RunComparisonError",
    "combined_report",
    "load_run",
    "runs_picture",
    "load_prompt_records",
    "nearest_picture",
    "save_prompt_images",
    "EvaluationCalibration",
    "calibrate_evaluation",
    "vae_reconstructions",
    "EvaluationData",
    "EvaluationSettings",
    "FeatureBank",
    "ModelScores",
    "SplitImages",
    "dataset_split",
    "evaluate_model",
    "feature_bank",
    "generate",
    "load_evaluation_data",
    "load_split",
    "markdown_table",
    "memorization_verdict",
]
