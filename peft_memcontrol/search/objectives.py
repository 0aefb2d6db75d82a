"""Objectives of the inner loop: pluggable callables ``objective(context) -> float``, all minimized.

The search is reward-agnostic: any callable of an `ObjectiveContext` is an objective (its ``__name__`` names it).
The built-in ones compute nothing themselves: they generate with `peft_memcontrol.evaluation.generate` and hand the
images to the metrics package.

* ``noise_norm``: the memorization reward (Wen et al.; `peft_memcontrol.metrics.pipeline_memorization_reward`) on the
  memorization subset, max over each batch, averaged over batches. Higher = more memorization. Its blind spot: it
  measures how much the memorized *prompt* steers the noise prediction, so a model that regenerates a training image
  whatever the prompt scores *lower*. Fully fine-tuning the tiny UNet on one face and its caption (60 steps) lowered
  that caption's score from 1.087 to 0.927 while generations for every prompt, the empty one included, converged on
  the face (in tests/test_objectives_memorization.py, 200 steps: 2.06 to 1.13, while ``copy_similarity`` rose from
  0.41 to 0.79). Pair it with ``copy_similarity``, or use that instead.
* ``copy_similarity``: how close generations come to the memorization images, whatever the prompt: seeded
  generations for the memorization prompts and for unrelated prompts (the empty prompt and, with a test set, the
  first held-out captions), each scored by its best cosine similarity to a memorization image in the feature space
  of ``settings.feature``, averaged over generations. Higher = more memorization.
* ``fid``: FID between K held-out test images and K generations from their prompts. Lower = better quality.
* ``kid``: KID on the same images: unbiased where FID on a few images is mostly bias (prefer it for K below a few
  hundred). Lower = better quality.
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

from ..constants import OBJECTIVE_NAMES
from ..evaluation import EvaluationSettings, FeatureBank, SplitImages, dataset_split, generate
from ..metrics import (
    ExtractionAttackConfig,
    average_min_cosine_distance,
    extraction_attack_on_images,
    frechet_distance,
    kernel_distance,
    nearest_neighbours,
    pipeline_memorization_reward,
)
from ..training import collate_image_captions
from .genome import Candidate


@dataclass
class ObjectiveContext:
    """Everything an objective may look at after one candidate's training.

    Attributes:
        candidate: the genome's candidate.
        peft_config: the `MemControlConfig` that was trained.
        trainer: the `MemControlTrainer` after training (its model still carries the adapter).
        training: the trainer's `TrainingResult` (``None`` when the base model is scored, `InnerLoop.score_base_model`).
        memorization: the memorization subset's images and captions, each sample once.
        test_dataset: held-out images and captions, a training-convention data set (``None`` when not given).
        trainable_share: trained parameters / UNet parameters.
        settings: how to generate and score (`EvaluationSettings`).
        features: the feature bank of ``settings.feature`` (fixed image sets are embedded once per worker).
        reduction: ``"max"`` or ``"mean"`` over a batch for ``noise_norm``.
        cache: per-candidate scratch space shared by objectives (pipeline, generations).
    """

    candidate: Candidate
    peft_config: Any
    trainer: Any
    training: Any
    memorization: SplitImages
    test_dataset: Any
    trainable_share: float
    settings: EvaluationSettings
    features: FeatureBank
    reduction: str = "max"
    cache: dict[str, Any] = field(default_factory=dict)

    def pipeline(self) -> Any:
        """The trained model as a text-to-image pipeline (adapter applied), built once per candidate."""
        if "pipeline" not in self.cache:
            self.cache["pipeline"] = self.trainer.pipeline()
        return self.cache["pipeline"]

    def generate(self, prompts: Sequence[str], name: str) -> torch.Tensor:
        """One seeded generation per prompt (`peft_memcontrol.evaluation.generate`); cached under ``name``."""
        if name not in self.cache:
            self.cache[name] = generate(self.pipeline(), prompts, self.settings)
        return self.cache[name]


def _test_set(context: ObjectiveContext, objective: str) -> Any:
    if context.test_dataset is None:
        raise ValueError(
            f"The {objective!r} objective needs held-out test data: set test_data_dir in the InnerLoop's data spec."
        )
    return context.test_dataset


@torch.no_grad()
def noise_norm(context: ObjectiveContext) -> float:
    """Memorization reward on the memorization subset (batch max, averaged over batches)."""
    memorization, batch_size = context.memorization, context.settings.batch_size
    pipe = context.pipeline()
    generator = torch.Generator(pipe.device).manual_seed(context.settings.seed)
    rewards = [
        pipeline_memorization_reward(
            pipe,
            memorization.captions[start : start + batch_size],
            memorization.images[start : start + batch_size],
            reduction=context.reduction,
            generator=generator,
        )
        for start in range(0, len(memorization.captions), batch_size)
    ]
    return float(torch.stack(rewards).float().mean())


def _test_features(context: ObjectiveContext, objective: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the first K test images and of K generations from their prompts (generated once per candidate)."""
    test = _test_set(context, objective)
    limit = context.settings.num_fid_images
    count = len(test) if limit is None else min(limit, len(test))
    if count < 2:
        raise ValueError(f"{objective} needs at least 2 test images.")
    real = dataset_split(test, range(count))
    generated = context.generate(real.captions, "test_generations")
    return context.features.fixed(real.images), context.features.embed(generated)


def fid(context: ObjectiveContext) -> float:
    """FID between the first K test images and K generations from their prompts."""
    return float(frechet_distance(*_test_features(context, "fid")))


def kid(context: ObjectiveContext) -> float:
    """KID (unbiased, the quality measure for small K) between the first K test images and K generations."""
    return float(kernel_distance(*_test_features(context, "kid")).mean)


def neg_amd(context: ObjectiveContext) -> float:
    """Minus the AMD of generations for the memorization prompts to the memorization images."""
    memorization = context.memorization
    generated = context.generate(memorization.captions, "memorization_generations")
    features = context.features
    return -float(average_min_cosine_distance(features.embed(generated), features.fixed(memorization.images)).amd)


def _unrelated_prompts(context: ObjectiveContext) -> list[str]:
    """Prompts that should not bring up the memorization images: the empty prompt, then (with a test set) the first
    held-out captions, as many as there are memorization prompts, so that both kinds weigh about equally."""
    prompts = [""]
    if context.test_dataset is not None:
        count = min(len(context.memorization.captions), len(context.test_dataset))
        prompts += dataset_split(context.test_dataset, range(count)).captions
    return prompts


def copy_similarity(context: ObjectiveContext) -> float:
    """Mean best cosine similarity of generations, for memorization and unrelated prompts, to the memorization images.

    Unlike ``noise_norm``, it does not need the prompt to matter: a model that regenerates a training image for every
    prompt (the empty one included) scores high. Each prompt group is one seeded `generate` call: the memorization
    prompts' generations are the ones ``neg_amd`` uses (cached), the unrelated ones cost at most one more than there are
    memorization prompts. A raw similarity in ``[-1, 1]``, compared between candidates; no copy threshold applies.
    """
    memorization, features = context.memorization, context.features
    generated = torch.cat(
        [
            context.generate(memorization.captions, "memorization_generations"),
            context.generate(_unrelated_prompts(context), "unrelated_generations"),
        ]
    )
    neighbours = nearest_neighbours(features.embed(generated), features.fixed(memorization.images))
    return float(neighbours.similarities.mean())


def extraction(context: ObjectiveContext) -> float:
    """Images extracted by the extraction attack on the memorization prompts (each prompt's own training image)."""
    settings, memorization = context.settings, context.memorization
    per_prompt = [
        generate(context.pipeline(), [prompt], settings, settings.num_generations) for prompt in memorization.captions
    ]
    result = extraction_attack_on_images(
        per_prompt,
        memorization.images,
        prompts=memorization.captions,
        config=ExtractionAttackConfig(threshold=settings.extraction_threshold, min_group_size=settings.min_group_size),
    )
    return float(result.num_extracted)


@torch.no_grad()
def val_loss(context: ObjectiveContext) -> float:
    """Denoising loss on the held-out test set with the trainer's loss, seeded, without caption dropout."""
    trainer, test = context.trainer, _test_set(context, "val_loss")
    batch_size = trainer.config.train_batch_size
    trainer.model.eval()
    losses, weights = [], []
    for batch_index, start in enumerate(range(0, len(test), batch_size)):
        items = [test[i] for i in range(start, min(start + batch_size, len(test)))]
        loss, _, _ = trainer.compute_loss(
            collate_image_captions(items), micro_step=10**6 + batch_index, caption_dropout_probability=0.0
        )
        losses.append(float(loss))
        weights.append(len(items))
    return sum(loss * weight for loss, weight in zip(losses, weights)) / sum(weights)


def trainable_share(context: ObjectiveContext) -> float:
    """Trained parameters as a share of the UNet's parameters."""
    return context.trainable_share


Objective = Callable[[ObjectiveContext], float]

BUILTIN_OBJECTIVES: dict[str, Objective] = {name: globals()[name] for name in OBJECTIVE_NAMES}
"""Built-in objectives by name (see the module docstring): each name of `OBJECTIVE_NAMES`, the command line's
choices, is the function of that name above."""


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
