"""Score one fine-tuned model the way the demo scores every model, with `peft_memcontrol.metrics` only.

* FID (and MiFID) between generations for the held-out prompts and the held-out images;
* the extraction attack on the memorized prompts (``num_generations`` seeded generations each; a generation counts
  when it reproduces any memorized image, as in Carlini et al., not only its own prompt's);
* AMD and replication rate of those generations against the training images (unique images);
* Wen et al.'s noise-norm score of the memorized prompts.

All in the offline EfficientNet-Lite0 feature space by default. Generations are seeded, so a model scores the same
on every run.

`evaluate_model` takes plain `EvaluationSettings` (the demo converts its `DemoConfig` with
`EvaluationSettings.from_demo_config`), and `load_split` reads any diffusers image folder, so the same scoring serves
models fine-tuned on one's own data: ``examples/evaluate_memorization.py`` is its command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..metrics import (
    DEFAULT_FEATURE,
    ExtractionAttackConfig,
    evaluate_generations,
    extract_features,
    extraction_attack_on_images,
    generate_images,
    get_feature_extractor,
    noise_norm_score,
)
from .config import DemoConfig


@dataclass
class EvaluationSettings:
    """How `evaluate_model` scores a model, independent of the demo.

    Attributes:
        num_generations: seeded generations per attacked (memorized) prompt; they feed the extraction attack, AMD,
            replication and MiFID's AMD (the reference code's attack used 50).
        num_inference_steps, guidance_scale: sampling of every generation.
        extraction_threshold: the attack's tiled-L2 threshold (RMS per tile, pixels in [0, 1]); set it per domain,
            above the VAE's own reconstruction error of the domain's images and below the distance between
            distinct images (see docs/demo.md, "How the setting was chosen").
        min_group_size: generations of one prompt that must lie within the threshold of each other to flag it.
        noise_norm_generations: starting noises per prompt of Wen et al.'s noise-norm score.
        feature: the feature space of FID, AMD, MiFID and replication (a name for
            `peft_memcontrol.metrics.get_feature_extractor`, or an extractor).
        seed: of every generation.
        generation_batch_size: images generated at once; ``None``: ``max(num_generations, 8)``, the demo's choice.
        image_size: height and width of the generations and of the noise-norm score's latents; ``None``: the
            pipeline's native size.
    """

    num_generations: int = 4
    num_inference_steps: int = 10
    guidance_scale: float = 4.0
    extraction_threshold: float = 0.3
    min_group_size: int = 2
    noise_norm_generations: int = 2
    feature: Any = DEFAULT_FEATURE
    seed: int = 0
    generation_batch_size: int | None = None
    image_size: int | None = None

    @classmethod
    def from_demo_config(cls, config: DemoConfig, domain: str) -> EvaluationSettings:
        """The demo's scoring of ``domain`` (its extraction threshold comes from ``config.extraction_thresholds``)."""
        return cls(
            num_generations=config.num_generations,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            extraction_threshold=config.extraction_thresholds[domain],
            min_group_size=config.min_group_size,
            noise_norm_generations=config.noise_norm_generations,
            feature=config.feature,
            seed=config.seed,
        )


@dataclass
class SplitImages:
    """Images (``[0, 1]``, NCHW) and captions of one data folder, each image once."""

    images: torch.Tensor
    captions: list[str]


@dataclass
class EvaluationData:
    """What every model is scored on: held-out images, the memorized subset, and the unique training images."""

    test: SplitImages
    memorization: SplitImages
    training: SplitImages
    domain: str = "digits"


@dataclass
class ModelScores:
    """One model's scores. ``prompt_records`` keep, per memorized prompt, the attack's representative generation
    and its distance to the training image (for the nearest-neighbour picture). With ``keep_generations``,
    `evaluate_model` also returns the images it scored: ``test_generations`` (one per held-out prompt, FID's) and
    ``attack_generations`` (``num_generations`` per memorized prompt; AMD's, replication's and the attack's), in
    ``[0, 1]``, NCHW."""

    fid: float
    mifid: float
    amd: float
    replication_rate: float
    replication_p95: float
    num_flagged: int
    num_extracted: int
    noise_norm: float
    prompt_records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    test_generations: torch.Tensor | None = field(default=None, repr=False)
    attack_generations: list[torch.Tensor] | None = field(default=None, repr=False)

    def table_values(self) -> dict[str, float]:
        """The scalar scores, by column name."""
        return {
            "fid": self.fid,
            "amd": self.amd,
            "mifid": self.mifid,
            "extracted": self.num_extracted,
            "flagged": self.num_flagged,
            "replication": self.replication_rate,
            "replication_p95": self.replication_p95,
            "noise_norm": self.noise_norm,
        }


def load_split(
    folder: str, resolution: int, unique: bool = True, max_images: int | None = None, seed: int = 0
) -> SplitImages:
    """Images and captions of an image folder; with ``unique``, each ``source_id`` only once.

    A row without ``source_id`` is its own source (keyed by ``file_name``): rows that share a caption, such as the
    many X-rays whose impression reads "No acute cardiopulmonary process.", are different images and all count.

    ``max_images`` keeps a seeded random subset of those rows (in folder order), chosen before any image is read,
    so a large folder never has to fit in memory.
    """
    from ..training import load_training_dataset

    dataset = load_training_dataset(train_data_dir=folder, resolution=resolution)
    seen, indices = set(), []
    for index, row in enumerate(dataset.metadata):
        key = ("source_id", row["source_id"]) if "source_id" in row else ("file_name", row.get("file_name", index))
        if unique and key in seen:
            continue
        seen.add(key)
        indices.append(index)
    if max_images is not None and len(indices) > max_images:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}.")
        chosen = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:max_images]
        indices = [indices[i] for i in sorted(chosen.tolist())]
    items = [dataset[i] for i in indices]
    images = torch.stack([item["pixel_values"] for item in items]).add(1.0).div(2.0).clamp(0.0, 1.0)
    return SplitImages(images, [item["caption"] for item in items])


def load_evaluation_data(dataset: Any, domain: str, resolution: int = 32) -> EvaluationData:
    """The three splits of a built demo data set (a `peft_memcontrol.pipelines.DemoDataset`)."""
    return EvaluationData(
        test=load_split(dataset.test_dir, resolution),
        memorization=load_split(dataset.memorization_dir, resolution),
        training=load_split(dataset.train_dir, resolution),
        domain=domain,
    )


@torch.no_grad()
def evaluate_model(
    pipeline: Any,
    data: EvaluationData,
    config: EvaluationSettings | DemoConfig,
    feature: Any = None,
    keep_generations: bool = False,
) -> ModelScores:
    """Score a text-to-image pipeline on ``data`` (see the module docstring).

    Args:
        pipeline: a diffusers text-to-image pipeline (Stable-Diffusion-style: ``encode_prompt``, ``unet``).
        data: held-out images and prompts (FID), the memorized subset (the attack's prompts and targets), and the
            training images (AMD's and replication's reference).
        config: `EvaluationSettings`, or a `DemoConfig` (scored with the demo's settings for ``data.domain``).
        feature: an already built feature extractor, to share one between models; default ``config.feature``.
        keep_generations: also return the scored generations in the `ModelScores`.
    """
    if isinstance(config, DemoConfig):
        config = EvaluationSettings.from_demo_config(config, data.domain)
    sampling = {"num_inference_steps": config.num_inference_steps, "guidance_scale": config.guidance_scale}
    if config.image_size is not None:
        sampling.update(height=config.image_size, width=config.image_size)
    batch = config.generation_batch_size or max(config.num_generations, 8)
    extractor = get_feature_extractor(feature if feature is not None else config.feature)

    generator = torch.Generator(pipeline.device).manual_seed(config.seed)
    test_generations = []
    for start in range(0, len(data.test.captions), batch):
        output = pipeline(data.test.captions[start : start + batch], generator=generator, output_type="pt", **sampling)
        test_generations.append(output.images.float().cpu())
    test_generations = torch.cat(test_generations)

    per_prompt = [
        generate_images(pipeline, prompt, config.num_generations, batch, seed=config.seed + k, **sampling).cpu()
        for k, prompt in enumerate(data.memorization.captions)
    ]
    attack = extraction_attack_on_images(
        per_prompt,
        data.memorization.images,
        prompts=data.memorization.captions,
        config=ExtractionAttackConfig(
            threshold=config.extraction_threshold,
            min_group_size=config.min_group_size,
            verify="all",
        ),
    )
    training, test = extract_features(data.training.images, extractor), extract_features(data.test.images, extractor)
    quality = evaluate_generations(test_generations, training, test, feature=extractor)
    copying = evaluate_generations(torch.cat(per_prompt), training, test, feature=extractor)
    noise = noise_norm_score(
        pipeline,
        data.memorization.captions,
        num_generations=config.noise_norm_generations,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        generator=torch.Generator(pipeline.device).manual_seed(config.seed),
        height=config.image_size,
        width=config.image_size,
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
        mifid=float(quality.mifid),
        amd=float(copying.amd.amd),
        replication_rate=float(copying.replication.rate),
        replication_p95=float(copying.replication.percentile_95),
        num_flagged=attack.num_flagged,
        num_extracted=attack.num_extracted,
        noise_norm=float(noise.mean()),
        prompt_records=records,
        test_generations=test_generations if keep_generations else None,
        attack_generations=per_prompt if keep_generations else None,
    )
