"""Score one fine-tuned model the way the demo scores every model, with `peft_memcontrol.metrics` only.

* FID (and MiFID) between generations for the held-out prompts and the held-out images;
* the extraction attack on the memorized prompts (``num_generations`` seeded generations each; a generation counts
  when it reproduces any memorized image, as in Carlini et al., not only its own prompt's);
* AMD and replication rate of those generations against the training images (unique images);
* Wen et al.'s noise-norm score of the memorized prompts.

All in the offline EfficientNet-Lite0 feature space by default. Generations are seeded, so a model scores the same
on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..metrics import (
    ExtractionAttackConfig,
    evaluate_generations,
    extraction_attack_on_images,
    generate_images,
    noise_norm_score,
)
from .config import DemoConfig


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
    and its distance to the training image (for the nearest-neighbour picture)."""

    fid: float
    mifid: float
    amd: float
    replication_rate: float
    replication_p95: float
    num_flagged: int
    num_extracted: int
    noise_norm: float
    prompt_records: list[dict[str, Any]] = field(default_factory=list, repr=False)

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


def load_split(folder: str, resolution: int, unique: bool = True) -> SplitImages:
    """Images and captions of an image folder; with ``unique``, each ``source_id`` (or caption) only once."""
    from ..training import load_training_dataset

    dataset = load_training_dataset(train_data_dir=folder, resolution=resolution)
    seen, indices = set(), []
    for index, (caption, row) in enumerate(zip(dataset.captions, dataset.metadata)):
        key = row.get("source_id", caption)
        if unique and key in seen:
            continue
        seen.add(key)
        indices.append(index)
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
def evaluate_model(pipeline: Any, data: EvaluationData, config: DemoConfig, feature: Any = None) -> ModelScores:
    """Score a text-to-image pipeline on ``data`` with the demo's settings (see the module docstring)."""
    sampling = {"num_inference_steps": config.num_inference_steps, "guidance_scale": config.guidance_scale}
    batch = max(config.num_generations, 8)
    feature = feature if feature is not None else config.feature

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
            threshold=config.extraction_thresholds[data.domain],
            min_group_size=config.min_group_size,
            verify="all",
        ),
    )
    quality = evaluate_generations(test_generations, data.training.images, data.test.images, feature=feature)
    copying = evaluate_generations(torch.cat(per_prompt), data.training.images, data.test.images, feature=feature)
    noise = noise_norm_score(
        pipeline,
        data.memorization.captions,
        num_generations=config.noise_norm_generations,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        generator=torch.Generator(pipeline.device).manual_seed(config.seed),
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
    )
