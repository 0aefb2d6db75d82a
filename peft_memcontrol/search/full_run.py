"""`FullFineTune`: fine-tune one method on a whole training folder and evaluate it, the way a user's final model is.

The search ranks masks by a short training on a proxy set (`peft_memcontrol.search.inner_loop.InnerLoop`); this is
what that training stands in for. ``memcontrol search``'s proxy-fidelity check (`peft_memcontrol.search.fidelity_check`)
and the demo's every row go through it: the model is loaded fresh, trained with `MemControlTrainer` (``"full"`` or a
PEFT config) and scored with `peft_memcontrol.evaluation.evaluate_model`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..evaluation import EvaluationCalibration, EvaluationData, EvaluationSettings, ModelScores, evaluate_model
from ..tiny_sd import tiny_pipeline_path
from ..training import EncodingCache, MemControlTrainer, TrainingConfig, load_training_dataset


@dataclass
class FullRun:
    """What one full fine-tuning gave: the evaluation's scores and how long training and evaluation took."""

    scores: ModelScores
    train_seconds: float
    evaluation_seconds: float


@dataclass
class FullFineTune:
    """Fully fine-tune a method on ``train_data_dir`` and evaluate the model on ``data``.

    Attributes:
        train_data_dir: the image folder trained on, every row of it.
        data: what the model is scored on (held-out, memorized and training images).
        evaluation: how it is scored.
        resolution: the training images' size.
        pretrained_model_name_or_path: the base model (a diffusers folder or Hub id); ``None``: the package's tiny
            pipeline.
        calibration: the evaluation's thresholds. ``None``: measured by the first `run` and kept for the later ones
            (they depend on the data, the feature space and the autoencoder only, so they serve every model).
        encodings: the frozen VAE's and text encoder's outputs, kept across runs on ``train_data_dir`` with the same
            seed (they draw the same batches: bit-identical to encoding again, minus the encoders' time); ``None``
            encodes every batch.
    """

    train_data_dir: str
    data: EvaluationData
    evaluation: EvaluationSettings
    resolution: int
    pretrained_model_name_or_path: str | None = None
    calibration: EvaluationCalibration | None = field(default=None, repr=False)
    encodings: EncodingCache | None = field(default=None, repr=False)

    def run(self, method: Any, training: TrainingConfig) -> FullRun:
        """Train ``method`` (``"full"`` or a ``peft.PeftConfig``) from the base model with ``training``, then score
        the model (adapter applied, not merged)."""
        dataset = load_training_dataset(train_data_dir=self.train_data_dir, resolution=self.resolution)
        model = self.pretrained_model_name_or_path or tiny_pipeline_path()
        trainer = MemControlTrainer.from_pretrained(model, dataset, method, training, encodings=self.encodings)
        start = time.perf_counter()
        trainer.train()
        trained = time.perf_counter()
        trainer.model.eval()
        scores = evaluate_model(trainer.pipeline(), self.data, self.evaluation, calibration=self.calibration)
        trainer.end()
        self.calibration = scores.calibration
        return FullRun(scores, trained - start, time.perf_counter() - trained)
