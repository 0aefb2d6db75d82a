#!/usr/bin/env python
"""Score a fine-tuned text-to-image model for quality and memorization on your own image folders.

The same scoring as ``memcontrol demo`` (`peft_memcontrol.evaluation.evaluate_model`, with
`peft_memcontrol.metrics`), for any diffusers pipeline, adapter and data::

    python examples/evaluate_memorization.py \\
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --adapter_dir sd-memcontrol \\
        --train_data_dir mimic-cxr-sd/train --test_data_dir mimic-cxr-sd/test \\
        --num_fid_images 1000 --num_attack_prompts 100 --num_generations 50 \\
        --resolution 224 --mixed_precision fp16 --output_dir eval-memcontrol

Before any model is scored, the thresholds are measured on your data:

* the **copy threshold** (cosine similarity in ``--feature``'s space) is calibrated so that held-out images
  (``--test_data_dir``, never trained on) exceed it at ``--false_positive_rate``; its detection rate on near copies of
  training images (noise, blur, JPEG, shift, crop) is measured too. Replication, MiFID's tau and the duplicate search
  use it. The papers' constants (0.5, 0.1) were set for other feature spaces and are not applied;
* the **extraction threshold** is checked against the autoencoder's own reconstructions of the attacked images and
  the distance between distinct images: when it cannot tell a copy from a distinct image, the report says so.

What it measures (lower is better for all but AMD):

* **FID** between one generation per held-out prompt and the held-out images, and **MiFID** (FID / AMD when that AMD
  is below the calibrated tau);
* the **extraction attack** (Carlini et al. 2023 style) on the attacked prompts: ``--num_generations`` seeded
  generations per prompt; a prompt is *flagged* when ``--min_group_size`` of them lie within
  ``--extraction_threshold`` (tiled L2) of each other, *extracted* when that group's representative is also that
  close to an attacked training image;
* **AMD** (average minimum cosine distance of those generations to the training images; lower = closer copies) and
  the **replication** rate (share of generations above the calibrated copy threshold) with its 95th percentile of
  similarities;
* Wen et al.'s **noise-norm** score of the attacked prompts.

The attacked prompts are the rows of ``--memorization_data_dir`` when given. Otherwise the training rows are searched
for **duplicates** (equal pixels, or similarity above the copy threshold; users rarely know which rows are
duplicated, and those are the ones a model memorizes): one prompt of each duplicate group is attacked, largest groups
first, and random training rows (``--seed``) fill up to ``--num_attack_prompts``. The groups are listed in the report,
with a verdict in words and the calibration. Images are embedded in ``--feature`` (default ``efficientnet-lite0``,
offline; ``inception`` is the standard FID space, and a Hugging Face image model such as a chest X-ray encoder can be
named instead).

``--adapter_dir`` is a training output of ``examples/train_text_to_image_memcontrol.py``: an adapter folder
(``adapter_config.json``, loaded with `peft_memcontrol.load_adapter`) or, for ``--method full``, a folder with
``unet/``. Without it the base model is scored. Outputs in ``--output_dir``: ``results.json`` (scores, settings,
model), ``results.md`` (a one-row table), ``nearest.png`` (the attack's generations beside the training images they
come closest to; with matplotlib) and ``prompt_records.safetensors`` (those images, so that ``memcontrol report`` can
draw several runs side by side), and with ``--save_generations`` the scored generations as PNGs and as exact float
tensors in ``generations.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file

from peft_memcontrol import load_adapter
from peft_memcontrol.evaluation import (
    EVALUATION_COLUMNS,
    EvaluationData,
    EvaluationSettings,
    ModelScores,
    SplitImages,
    calibrate_evaluation,
    evaluate_model,
    feature_bank,
    load_split,
    markdown_table,
    memorization_verdict,
    nearest_picture,
    save_prompt_images,
)
from peft_memcontrol.metrics import (
    DuplicateGroup,
    calibrate_copy_detection,
    find_duplicate_groups,
)
from peft_memcontrol.tiny_sd import tiny_pipeline_path
from peft_memcontrol.tuners.model_card import update_model_card


DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (diffusers-style flag names)."""
    parser = argparse.ArgumentParser(
        description="Score a fine-tuned text-to-image model for quality and memorization."
    )
    model = parser.add_argument_group("model")
    model.add_argument("--pretrained_model_name_or_path", default=None, help="Default: the embedded tiny pipeline.")
    model.add_argument("--revision", default=None)
    model.add_argument("--variant", default=None)
    model.add_argument("--adapter_dir", default=None, help="Training output: adapter folder, or a folder with unet/.")
    model.add_argument("--label", default=None, help="Row name in results.md (default: the adapter folder's name).")
    model.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    model.add_argument("--mixed_precision", choices=tuple(DTYPES), default="no", help="Pipeline dtype.")

    data = parser.add_argument_group(
        "data (image folders with metadata.jsonl or metadata.csv, as datasets reads them)"
    )
    data.add_argument("--train_data_dir", required=True, help="The training images (AMD / replication reference).")
    data.add_argument("--test_data_dir", required=True, help="Held-out images and prompts (FID).")
    data.add_argument(
        "--memorization_data_dir", default=None, help="Prompts to attack; default: the duplicates found in train."
    )
    data.add_argument(
        "--num_attack_prompts",
        type=int,
        default=10,
        help="Without --memorization_data_dir: duplicate groups first (largest first), then random training rows.",
    )
    data.add_argument("--num_fid_images", type=int, default=None, help="Held-out rows used (default: all).")
    data.add_argument("--max_train_images", type=int, default=None, help="Cap the reference set (default: all).")
    data.add_argument("--resolution", type=int, default=None, help="Image size; default: the model's native size.")

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--num_generations", type=int, default=10, help="Generations per attacked prompt.")
    scoring.add_argument("--num_inference_steps", type=int, default=50)
    scoring.add_argument("--guidance_scale", type=float, default=4.0)
    scoring.add_argument("--extraction_threshold", type=float, default=0.15, help="Tiled L2 (RMS per tile, [0, 1]).")
    scoring.add_argument("--min_group_size", type=int, default=3)
    scoring.add_argument("--noise_norm_generations", type=int, default=4)
    scoring.add_argument("--feature", default="efficientnet-lite0", help="Feature space of FID / AMD / replication.")
    scoring.add_argument("--generation_batch_size", type=int, default=None)
    scoring.add_argument(
        "--false_positive_rate",
        type=float,
        default=0.01,
        help="Target rate at which unseen images are called copies; sets the calibrated copy threshold.",
    )
    scoring.add_argument("--seed", type=int, default=0)

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default="memorization-eval")
    output.add_argument("--save_generations", action="store_true", help="PNGs and generations.safetensors.")
    output.add_argument(
        "--update_model_card",
        action="store_true",
        help="Write the scores, the verdict and the copy threshold into --adapter_dir's model card (README.md; its "
        "other sections are kept).",
    )
    output.add_argument(
        "--disable_progress",
        action="store_true",
        help="Hide the progress bars of reading, embedding, calibration, generation and the attack.",
    )
    args = parser.parse_args(argv)
    if args.update_model_card and not args.adapter_dir:
        raise ValueError("--update_model_card writes into the evaluated model's card: give --adapter_dir.")
    for name in ("num_attack_prompts", "num_generations", "noise_norm_generations"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    return args


def load_pipeline(args: argparse.Namespace) -> Any:
    """The base pipeline on ``--device`` in ``--mixed_precision``, with ``--adapter_dir`` applied (not merged)."""
    path = args.pretrained_model_name_or_path or tiny_pipeline_path()
    dtype = DTYPES[args.mixed_precision]
    options: dict[str, Any] = {"torch_dtype": dtype, "revision": args.revision, "variant": args.variant}
    if "safety_checker" in DiffusionPipeline.load_config(path, revision=args.revision):
        # The safety checker blacks out images it flags: scores would then measure it, not the model.
        options.update(safety_checker=None, requires_safety_checker=False)
    pipeline = DiffusionPipeline.from_pretrained(path, **options)
    if args.adapter_dir:
        apply_trained_model(pipeline, args.adapter_dir, dtype)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def apply_trained_model(pipeline: Any, folder: str, dtype: torch.dtype) -> str:
    """Put a training output into ``pipeline``: an adapter (``adapter_config.json``) through
    `peft_memcontrol.load_adapter`, or a fully fine-tuned ``unet/``. Returns which of the two it was."""
    if os.path.isfile(os.path.join(folder, "adapter_config.json")):
        load_adapter(pipeline, folder)
        return "adapter"
    if os.path.isfile(os.path.join(folder, "unet", "config.json")):
        pipeline.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
        return "unet"
    raise FileNotFoundError(
        f"--adapter_dir {folder} holds neither adapter_config.json nor unet/config.json: pass the --output_dir of "
        "examples/train_text_to_image_memcontrol.py (a merged pipeline goes to --pretrained_model_name_or_path)."
    )


def native_resolution(pipeline: Any) -> int:
    """The pipeline's default image size: the UNet's sample size times the VAE's downsampling factor."""
    return int(pipeline.unet.config.sample_size * pipeline.vae_scale_factor)


@dataclass
class AttackPlan:
    """What is attacked: the duplicate groups found in the training rows, one prompt each, then random rows."""

    groups: list[DuplicateGroup]
    attacked_groups: list[DuplicateGroup]
    random_rows: list[int]


def plan_attack(training: SplitImages, groups: list[DuplicateGroup], num_prompts: int, seed: int) -> AttackPlan:
    """The rows to attack: the first row of each duplicate group (largest first) up to ``num_prompts``, then rows
    drawn with ``seed`` from the others, so that ``num_prompts`` are attacked when the data has that many."""
    attacked = groups[:num_prompts]
    in_groups = {index for group in groups for index in group.indices}
    others = [index for index in range(len(training.captions)) if index not in in_groups]
    count = min(num_prompts - len(attacked), len(others))
    order = torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))[:count]
    return AttackPlan(groups, attacked, sorted(others[i] for i in order.tolist()))


def select_rows(split: SplitImages, rows: Sequence[int]) -> SplitImages:
    """The given rows of a split, in that order."""
    names = [split.file_names[i] for i in rows] if split.file_names else None
    return SplitImages(split.images[list(rows)], [split.captions[i] for i in rows], names)


def load_data(args: argparse.Namespace, resolution: int) -> tuple[EvaluationData, AttackPlan | None, Any]:
    """The `EvaluationData` of the folders, the attack plan, and the copy calibration (see the module docstring).

    Every training row is read (``--max_train_images``: a seeded sample), duplicates included: the reference set of
    AMD and replication, and where duplicate groups are looked for. With ``--memorization_data_dir`` and
    ``--max_train_images``, the attacked images are added to the sample.
    """
    progress = not args.disable_progress
    test = load_split(
        args.test_data_dir, resolution, max_images=args.num_fid_images, seed=args.seed, progress=progress
    )
    training = load_split(
        args.train_data_dir,
        resolution,
        unique=False,
        max_images=args.max_train_images,
        seed=args.seed,
        progress=progress,
    )
    settings = evaluation_settings(args, resolution)
    features = feature_bank(settings.feature, settings.feature_device)
    embed = partial(features.fixed, progress=progress)
    copy = calibrate_copy_detection(training.images, test.images, embed, settings.false_positive_rate, seed=args.seed)
    if args.memorization_data_dir:
        memorization, plan = load_split(args.memorization_data_dir, resolution, progress=progress), None
        if args.max_train_images is not None:  # the sampled reference set must hold the images the attack looks for
            training = SplitImages(
                torch.cat([memorization.images, training.images]),
                memorization.captions + training.captions,
                (memorization.file_names or []) + (training.file_names or []),
            )
    else:
        groups = find_duplicate_groups(training.images, embed(training.images), copy.threshold)
        plan = plan_attack(training, groups, args.num_attack_prompts, args.seed)
        memorization = select_rows(training, [g.indices[0] for g in plan.attacked_groups] + plan.random_rows)
    return EvaluationData(test=test, memorization=memorization, training=training), plan, copy


def evaluation_settings(args: argparse.Namespace, resolution: int, device: Any = None) -> EvaluationSettings:
    """The `EvaluationSettings` of the command line."""
    return EvaluationSettings(
        num_generations=args.num_generations,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        extraction_threshold=args.extraction_threshold,
        min_group_size=args.min_group_size,
        noise_norm_generations=args.noise_norm_generations,
        feature=args.feature,
        feature_device=device,
        seed=args.seed,
        generation_batch_size=args.generation_batch_size,
        image_size=resolution,
        false_positive_rate=args.false_positive_rate,
    )


def describe_plan(plan: AttackPlan | None, training: SplitImages, num_attacked: int) -> list[str]:
    """Lines for the report: the duplicate groups found and what was attacked."""
    if plan is None:
        return [f"Attacked: the {num_attacked} rows of --memorization_data_dir."]
    lines = [
        f"Duplicate groups in the training rows: {len(plan.groups)} (exact pixels, or cosine similarity above the "
        "copy threshold)."
    ]
    for group in plan.groups[:20]:
        names = ", ".join(training.file_names[i] for i in group.indices[:6])
        more = f" and {group.size - 6} more" if group.size > 6 else ""
        kind = "exact copies" if group.exact else f"near copies (similarity >= {group.min_similarity:.3f})"
        lines.append(f"- {group.size} rows, {kind}: {names}{more}")
    if len(plan.groups) > 20:
        lines.append(f"- ... and {len(plan.groups) - 20} more groups")
    lines.append(
        f"Attacked: {len(plan.attacked_groups)} duplicate groups (one prompt each) and {len(plan.random_rows)} random "
        "rows."
    )
    return lines


def save_generations(scores: ModelScores, output_dir: str) -> str:
    """The scored generations: ``generations/test/<i>.png``, ``generations/attack/<prompt>_<k>.png`` and the exact
    float tensors in ``generations.safetensors`` (``test``: (N, 3, H, W); ``attack``: (P, G, 3, H, W))."""
    attack = torch.stack(scores.attack_generations)
    for name, images in (("test", scores.test_generations), ("attack", attack.flatten(0, 1))):
        folder = os.path.join(output_dir, "generations", name)
        os.makedirs(folder, exist_ok=True)
        for index, image in enumerate(images):
            stem = (
                f"{index:04d}" if name == "test" else f"{index // attack.shape[1]:04d}_{index % attack.shape[1]:03d}"
            )
            pixels = image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(os.path.join(folder, f"{stem}.png"))
    path = os.path.join(output_dir, "generations.safetensors")
    save_file({"test": scores.test_generations.contiguous(), "attack": attack.contiguous()}, path)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Load, calibrate, find duplicates, generate, score; write ``results.json`` and ``results.md``; returns the
    results."""
    args = parse_args(argv)
    pipeline = load_pipeline(args)
    resolution = args.resolution or native_resolution(pipeline)
    data, plan, copy = load_data(args, resolution)
    settings = evaluation_settings(args, resolution, pipeline.device)
    progress = not args.disable_progress
    calibration = calibrate_evaluation(pipeline, data, settings, copy=copy, progress=progress)
    scores = evaluate_model(
        pipeline, data, settings, keep_generations=args.save_generations, calibration=calibration, progress=progress
    )

    os.makedirs(args.output_dir, exist_ok=True)
    label = args.label or (os.path.basename(os.path.normpath(args.adapter_dir)) if args.adapter_dir else "base model")
    values = scores.table_values()
    num_attacked = len(data.memorization.captions)
    verdict = memorization_verdict(
        scores.num_extracted,
        scores.num_flagged,
        num_attacked,
        scores.replication_rate,
        num_attacked * args.num_generations,
        calibration,
    )
    plan_lines = describe_plan(plan, data.training, num_attacked)
    results = {
        "label": label,
        "scores": values,
        "verdict": verdict,
        "calibration": calibration.to_dict(),
        "duplicate_groups": [
            {
                "rows": group.indices,
                "file_names": [data.training.file_names[i] for i in group.indices],
                "exact": group.exact,
                "min_similarity": group.min_similarity,
            }
            for group in (plan.groups if plan else [])
        ],
        "per_prompt": [
            {key: record[key] for key in ("prompt", "group_size", "distance", "extracted")}
            for record in scores.prompt_records
        ],
        "counts": {
            "test_images": len(data.test.captions),
            "attacked_prompts": num_attacked,
            "attacked_duplicate_groups": len(plan.attacked_groups) if plan else 0,
            "reference_images": len(data.training.captions),
        },
        "settings": {**vars(args), "resolution": resolution},
    }
    if args.save_generations:
        results["generations"] = save_generations(scores, args.output_dir)
    picture = None
    if scores.prompt_records:
        results["prompt_images"] = save_prompt_images(scores.prompt_records, args.output_dir)
        try:
            picture = nearest_picture({label: scores.prompt_records}, os.path.join(args.output_dir, "nearest.png"))
        except ImportError as error:
            print(f"No nearest.png: {error}")
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    table = markdown_table([{"method": label, **values}], EVALUATION_COLUMNS)
    report = [table, verdict, "", *plan_lines, "", "Calibration:", *(f"- {line}" for line in calibration.describe())]
    if picture is not None:
        report += ["", "![the attack's generations beside their nearest training images](nearest.png)"]
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"Results in {args.output_dir}/results.json")
    if args.update_model_card:
        print(f"Scores added to {write_scores_to_card(args.adapter_dir, values, verdict, calibration)}")
    return results


def write_scores_to_card(adapter_dir: str, values: dict[str, Any], verdict: str, calibration: Any) -> str:
    """The evaluation section of the adapter's (or, for a full fine-tune, its ``unet/``'s) model card: every score
    of the table, the verdict and the copy threshold with its error rates; returns the card's path."""
    unet_card = os.path.join(adapter_dir, "unet", "README.md")
    folder = os.path.join(adapter_dir, "unet") if os.path.isfile(unet_card) else adapter_dir
    evaluation = {header: values[key] for key, header, _ in EVALUATION_COLUMNS[1:]}
    evaluation["verdict"] = verdict
    evaluation["calibration"] = "; ".join(calibration.describe())
    return update_model_card(folder, evaluation=evaluation)


if __name__ == "__main__":
    main()
