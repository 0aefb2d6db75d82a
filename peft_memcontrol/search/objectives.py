"""Objectives of the inner loop: pluggable callables ``objective(context) -> float``, all minimized.

The search is reward-agnostic: any callable of an `EvaluationContext` is an objective (its ``__name__`` names it).
The built-in ones compute nothing themselves; they hand the trained model to the metrics package:

* ``noise_norm``: the memorization reward (Wen et al.; `peft_memcontrol.metrics.pipeline_memorization_reward`) on the
  memorization subset, max over each batch, averaged over batches. Higher = more memorization.
* ``fid``: FID between K held-out test images and K generations from their prompts. Lower = better quality.
* ``neg_amd``: minus the AMD of generations for the memorization prompts to the memorization images (AMD is low when
  generations copy training images, so ``-AMD`` is minimized by masks that memorize less).
* ``extraction``: images extracted by the extraction attack on the memorization prompts.
* ``val_loss``: the denoising loss on the held-out test set (no caption dropout). Lower = better fit.
* ``trainable_share``: trained parameters as a share of the UNet (`peft_memcontrol.trainable_share`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .genome import Candidate


@dataclass
class EvaluationContext:
    """Everything an objective may look at after one candidate's training.

    Attributes:
        candidate: the genome's candidate.
        peft_config: the `MemControlConfig` that was trained.
        trainer: the `MemControlTrainer` after training (its model still carries the adapter).
        training: the trainer's `TrainingResult`.
        memorization_dataset: the memorization subset, each sample once.
        test_dataset: held-out images and captions (``None`` when not given).
        trainable_share: trained parameters / UNet parameters.
        settings: the `InnerLoop` (generation and metric settings).
        cache: per-evaluation scratch space shared by objectives (pipeline, generations, features).
    """

    candidate: Candidate
    peft_config: Any
    trainer: Any
    training: Any
    memorization_dataset: Any
    test_dataset: Any
    trainable_share: float
    settings: Any
    cache: dict[str, Any] = field(default_factory=dict)

    def pipeline(self) -> Any:
        """The trained model as a text-to-image pipeline (adapter applied), built once per evaluation."""
        if "pipeline" not in self.cache:
            self.cache["pipeline"] = self.trainer.pipeline()
        return self.cache["pipeline"]

    def generate(self, prompts: Sequence[str], name: str) -> torch.Tensor:
        """One seeded generation per prompt, in the library's image convention; cached under ``name``."""
        if name not in self.cache:
            settings = self.settings
            pipe = self.pipeline()
            generator = torch.Generator(pipe.device).manual_seed(settings.seed)
            images = []
            for start in range(0, len(prompts), settings.generation_batch_size):
                output = pipe(
                    list(prompts[start : start + settings.generation_batch_size]),
                    num_inference_steps=settings.num_inference_steps,
                    guidance_scale=settings.guidance_scale,
                    generator=generator,
                    output_type="pt",
                )
                images.append(output.images.float().cpu())
            self.cache[name] = torch.cat(images)
        return self.cache[name]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, d) features in the settings' feature space (the extractor is loaded once per worker)."""
        from ..metrics import extract_features

        return extract_features(images, self.settings.feature_extractor())


def dataset_images(dataset: Any, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Images in [0, 1] (NCHW) and captions of a training-convention data set (pixel values in [-1, 1])."""
    indices = range(len(dataset)) if indices is None else indices
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([item["pixel_values"] for item in items]).float().add(1.0).div(2.0).clamp(0.0, 1.0)
    return images, [item["caption"] for item in items]


def _test_set(context: EvaluationContext, objective: str) -> Any:
    if context.test_dataset is None:
        raise ValueError(f"The {objective!r} objective needs held-out test data: pass test_data_dir to InnerLoop.")
    return context.test_dataset


@torch.no_grad()
def noise_norm(context: EvaluationContext) -> float:
    """Memorization reward on the memorization subset (batch max, averaged over batches)."""
    from ..metrics import pipeline_memorization_reward

    settings, dataset = context.settings, context.memorization_dataset
    pipe = context.pipeline()
    generator = torch.Generator(pipe.device).manual_seed(settings.seed)
    rewards = []
    for start in range(0, len(dataset), settings.generation_batch_size):
        indices = range(start, min(start + settings.generation_batch_size, len(dataset)))
        images, captions = dataset_images(dataset, indices)
        rewards.append(
            pipeline_memorization_reward(pipe, captions, images, reduction=settings.reduction, generator=generator)
        )
    return float(torch.stack(rewards).float().mean())


def fid(context: EvaluationContext) -> float:
    """FID between the first K test images and K generations from their prompts."""
    from ..metrics import frechet_distance

    test = _test_set(context, "fid")
    count = min(context.settings.num_fid_images, len(test))
    if count < 2:
        raise ValueError("FID needs at least 2 test images.")
    real, prompts = dataset_images(test, range(count))
    generated = context.generate(prompts, "test_generations")
    return float(frechet_distance(context.features(real), context.features(generated)))


def neg_amd(context: EvaluationContext) -> float:
    """Minus the AMD of generations for the memorization prompts to the memorization images."""
    from ..metrics import average_min_cosine_distance

    training, prompts = dataset_images(context.memorization_dataset)
    generated = context.generate(prompts, "memorization_generations")
    return -float(average_min_cosine_distance(context.features(generated), context.features(training)).amd)


def extraction(context: EvaluationContext) -> float:
    """Images extracted by the extraction attack on the memorization prompts."""
    from ..metrics import extraction_attack

    settings = context.settings
    training, prompts = dataset_images(context.memorization_dataset)
    result = extraction_attack(
        context.pipeline(),
        prompts,
        training,
        num_generations=settings.num_extraction_generations,
        batch_size=settings.generation_batch_size,
        seed=settings.seed,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
    )
    return float(result.num_extracted)


@torch.no_grad()
def val_loss(context: EvaluationContext) -> float:
    """Denoising loss on the held-out test set with the trainer's loss, seeded, without caption dropout."""
    from ..training import collate_image_captions

    trainer, test = context.trainer, _test_set(context, "val_loss")
    batch_size = trainer.config.train_batch_size
    dropout = trainer.config.caption_dropout_probability
    trainer.config.caption_dropout_probability = 0.0
    trainer.model.eval()
    try:
        losses, weights = [], []
        for batch_index, start in enumerate(range(0, len(test), batch_size)):
            items = [test[i] for i in range(start, min(start + batch_size, len(test)))]
            loss, _, _ = trainer.compute_loss(collate_image_captions(items), micro_step=10**6 + batch_index)
            losses.append(float(loss))
            weights.append(len(items))
    finally:
        trainer.config.caption_dropout_probability = dropout
    return sum(loss * weight for loss, weight in zip(losses, weights)) / sum(weights)


def trainable_share(context: EvaluationContext) -> float:
    """Trained parameters as a share of the UNet's parameters."""
    return context.trainable_share


Objective = Callable[[EvaluationContext], float]

BUILTIN_OBJECTIVES: dict[str, Objective] = {
    "noise_norm": noise_norm,
    "fid": fid,
    "neg_amd": neg_amd,
    "extraction": extraction,
    "val_loss": val_loss,
    "trainable_share": trainable_share,
}
"""Built-in objectives by name (see the module docstring)."""

MEMORIZATION_OBJECTIVES = ("noise_norm", "neg_amd", "extraction", "trainable_share")
QUALITY_OBJECTIVES = ("fid", "val_loss")


def resolve_objectives(objectives: Sequence[str | Objective]) -> list[tuple[str, Objective]]:
    """Names and callables of ``objectives`` (built-in names or callables named by ``__name__``); two or three."""
    resolved = []
    for objective in objectives:
        if isinstance(objective, str):
            if objective not in BUILTIN_OBJECTIVES:
                raise ValueError(f"Unknown objective {objective!r}; built in: {sorted(BUILTIN_OBJECTIVES)}.")
            resolved.append((objective, BUILTIN_OBJECTIVES[objective]))
        elif callable(objective):
            resolved.append((getattr(objective, "__name__", type(objective).__name__), objective))
        else:
            raise TypeError(f"An objective is a name or a callable, got {type(objective).__name__}.")
    if not 1 <= len(resolved) <= 3:
        raise ValueError(f"Search on one to three objectives (two is the method's setting), got {len(resolved)}.")
    return resolved
