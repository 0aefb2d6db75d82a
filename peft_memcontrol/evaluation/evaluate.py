"""`evaluate_model`: score one text-to-image model for quality and memorization, with `peft_memcontrol.metrics`.

* FID, KID (with its standard error; the estimator meaningful on tens of images) and MiFID between generations for
  the held-out prompts and the held-out images;
* the extraction attack on the memorized prompts (``num_generations`` seeded generations each; a generation counts
  when it reproduces any memorized image, as in Carlini et al., not only its own prompt's);
* AMD and replication rate of those generations against the training images (unique images);
* Wen et al.'s noise-norm score of the memorized prompts.

Replication's threshold and MiFID's tau are calibrated on the data itself (`calibrate_evaluation`: held-out images
against the training images, at ``settings.false_positive_rate``), and the attack's threshold is checked against the
autoencoder's reconstructions; the scores carry that calibration so that every report can print it. Every image set is
compared at the generations' size (data loaded at another size is resized, with a warning). All in the offline
EfficientNet-Lite0 feature space by default. Generations are seeded, so a model scores the same
on every run. The demo scores every model with it, and ``examples/evaluate_memorization.py`` is its command line for
one's own image folders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..metrics import ExtractionAttackConfig, evaluate_generations, extraction_attack_on_images, noise_norm_score
from .calibration import EvaluationCalibration, calibrate_evaluation
from .data import EvaluationData, SplitImages
from .features import feature_bank
from .generation import generate
from .settings import EvaluationSettings


@dataclass
class ModelScores:
    """One model's scores. ``prompt_records`` keep, per memorized prompt, the attack's representative generation
    and its distance to the training image (for the nearest-neighbour picture). With ``keep_generations``,
    `evaluate_model` also returns the images it scored: ``test_generations`` (one per held-out prompt, FID's) and
    ``attack_generations`` (``num_generations`` per memorized prompt; AMD's, replication's and the attack's), in
    ``[0, 1]``, NCHW. ``calibration`` is the threshold calibration the scores used."""

    fid: float
    kid: float
    kid_standard_error: float
    mifid: float
    amd: float
    replication_rate: float
    replication_p95: float
    num_flagged: int
    num_extracted: int
    noise_norm: float
    calibration: EvaluationCalibration | None = field(default=None, repr=False)
    prompt_records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    test_generations: torch.Tensor | None = field(default=None, repr=False)
    attack_generations: list[torch.Tensor] | None = field(default=None, repr=False)

    def table_values(self) -> dict[str, float]:
        """The scalar scores, by column name."""
        return {
            "fid": self.fid,
            "kid": self.kid,
            "kid_se": self.kid_standard_error,
            "amd": self.amd,
            "mifid": self.mifid,
            "extracted": self.num_extracted,
            "flagged": self.num_flagged,
            "replication": self.replication_rate,
            "replication_p95": self.replication_p95,
            "noise_norm": self.noise_norm,
        }


logger = logging.getLogger(__name__)


def _images_bar(description: str, total: int, progress: bool) -> tqdm:
    """A diffusers-style progress bar counting ``total`` images (hidden unless ``progress``)."""
    return tqdm(total=total, desc=description, unit="image", disable=not progress)


def _resize(split: SplitImages, size: torch.Size, name: str) -> SplitImages:
    """``split`` at the generations' ``size`` (bilinear, antialiased), with a warning when it had another size."""
    if split.images.shape[-2:] == size:
        return split
    logger.warning(
        "The %s images are %s px and the generations %s px: resizing them to the generations' size, so that every "
        "embedding and distance compares images of one size.",
        name,
        "x".join(map(str, split.images.shape[-2:])),
        "x".join(map(str, size)),
    )
    images = F.interpolate(split.images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return SplitImages(images.clamp(0, 1), split.captions)


@torch.no_grad()
def evaluate_model(
    pipeline: Any,
    data: EvaluationData,
    settings: EvaluationSettings,
    keep_generations: bool = False,
    calibration: EvaluationCalibration | None = None,
    progress: bool = False,
) -> ModelScores:
    """Score a text-to-image pipeline on ``data`` (see the module docstring).

    Args:
        pipeline: a diffusers text-to-image pipeline (Stable-Diffusion-style: ``encode_prompt``, ``unet``).
        data: held-out images and prompts (FID), the memorized subset (the attack's prompts and targets), and the
            training images (AMD's and replication's reference).
        settings: generation, feature space and attack settings.
        keep_generations: also return the scored generations in the `ModelScores`.
        calibration: the thresholds measured on ``data`` (`calibrate_evaluation`); computed here when ``None``.
            Pass one to score many models on the same data without recalibrating (it must have been measured at the
            generations' size).
        progress: show progress bars (generation, embedding, calibration), diffusers-style.
    """
    features = feature_bank(settings.feature, settings.feature_device)
    test_prompts = data.test.captions[: settings.num_fid_images]
    with _images_bar("Generating for the held-out prompts", len(test_prompts), progress) as bar:
        test_generations = generate(pipeline, test_prompts, settings, progress=bar)
    size = test_generations.shape[-2:]
    data = replace(
        data,
        test=_resize(data.test, size, "held-out"),
        memorization=_resize(data.memorization, size, "memorized"),
        training=_resize(data.training, size, "training"),
    )
    if calibration is None:
        calibration = calibrate_evaluation(pipeline, data, settings, features, progress=progress)
    elif calibration.image_size is not None and tuple(calibration.image_size) != tuple(size):
        raise ValueError(
            f"The calibration was measured on {'x'.join(map(str, calibration.image_size))} px images but the model "
            f"generates {'x'.join(map(str, size))} px images, and copy distances depend on the size: calibrate on the "
            "data at the generations' size (settings.image_size), or pass calibration=None to calibrate here."
        )
    test_images = data.test.images[: settings.num_fid_images]
    # Each memorized prompt has a seed of its own, so its generations do not depend on the prompts before it.
    attacked = data.memorization.captions
    with _images_bar("Generating for the attacked prompts", len(attacked) * settings.num_generations, progress) as bar:
        per_prompt = [
            generate(pipeline, [prompt], settings, settings.num_generations, seed=settings.seed + k, progress=bar)
            for k, prompt in enumerate(attacked)
        ]
    with _images_bar("Extraction attack", len(attacked) * settings.num_generations, progress) as bar:
        attack = extraction_attack_on_images(
            per_prompt,
            data.memorization.images,
            prompts=data.memorization.captions,
            config=ExtractionAttackConfig(
                threshold=settings.extraction_threshold,
                min_group_size=settings.min_group_size,
                verify="all",
            ),
        )
        bar.update(bar.total)
    training = features.fixed(data.training.images, progress=progress)
    test = features.fixed(test_images, progress=progress)
    quality = evaluate_generations(
        test_generations, training, test, feature=features.extractor, calibration=calibration.copy
    )
    copying = evaluate_generations(
        torch.cat(per_prompt), training, test, feature=features.extractor, calibration=calibration.copy
    )
    noise = noise_norm_score(
        pipeline,
        data.memorization.captions,
        num_generations=settings.noise_norm_generations,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        generator=torch.Generator(pipeline.device).manual_seed(settings.seed),
        height=settings.image_size,
        width=settings.image_size,
        progress=progress,
    )
    records = [
        {
            "prompt": record.prompt,
            "group_size": record.group_size,
            "distance": record.training_distance,
            "extracted": record.extracted,
            "generation": per_prompt[record.prompt_index][record.representative],
            "training": data.memorization.images[record.training_index],
        }
        for record in attack.records
    ]
    return ModelScores(
        fid=float(quality.fid),
        kid=float(quality.kid.mean),
        kid_standard_error=float(quality.kid.standard_error),
        mifid=float(quality.mifid),
        amd=float(copying.amd.amd),
        replication_rate=float(copying.replication.rate),
        replication_p95=float(copying.replication.percentile_95),
        num_flagged=attack.num_flagged,
        num_extracted=attack.num_extracted,
        noise_norm=float(noise.mean()),
        calibration=calibration,
        prompt_records=records,
        test_generations=test_generations if keep_generations else None,
        attack_generations=per_prompt if keep_generations else None,
    )
