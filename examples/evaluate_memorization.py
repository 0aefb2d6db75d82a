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

What it measures (lower is better for all but AMD):

* **FID** between one generation per held-out prompt and the held-out images (``--test_data_dir``), and **MiFID**
  (FID / AMD when that AMD is below 0.1);
* the **extraction attack** (Carlini et al. 2023 style) on the attacked prompts: ``--num_generations`` seeded
  generations per prompt; a prompt is *flagged* when ``--min_group_size`` of them lie within
  ``--extraction_threshold`` (tiled L2) of each other, *extracted* when that group's representative is also that
  close to an attacked training image;
* **AMD** (average minimum cosine distance of those generations to the training images; lower = closer copies) and
  the **replication** rate (share of generations with cosine similarity above 0.5 to a training image) with its 95th
  percentile;
* Wen et al.'s **noise-norm** score of the attacked prompts.

The attacked prompts are the rows of ``--memorization_data_dir`` when given (for example the duplicated subset a
model was trained on), else ``--num_attack_prompts`` training rows drawn with ``--seed``. Images are embedded in
``--feature`` (default ``efficientnet-lite0``, offline; ``inception`` is the standard FID space, and a Hugging Face
image model such as a chest X-ray encoder can be named instead).

``--adapter_dir`` is a training output of ``examples/train_text_to_image_memcontrol.py``: an adapter folder
(``adapter_config.json``, loaded with `peft_memcontrol.load_adapter`) or, for ``--method full``, a folder with
``unet/``. Without it the base model is scored. Outputs in ``--output_dir``: ``results.json`` (scores, settings,
model), ``results.md`` (a one-row table), and with ``--save_generations`` the scored generations as PNGs and as
exact float tensors in ``generations.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file

from peft_memcontrol import load_adapter
from peft_memcontrol.evaluation import (
    EvaluationData,
    EvaluationSettings,
    ModelScores,
    SplitImages,
    evaluate_model,
    load_split,
    markdown_table,
)
from peft_memcontrol.tiny_sd import tiny_pipeline_path


DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: (key of the results, header, format) of the markdown table.
TABLE_COLUMNS = [
    ("method", "model", "{}"),
    ("fid", "FID ↓", "{:.2f}"),
    ("mifid", "MiFID ↓", "{:.2f}"),
    ("amd", "AMD ↑", "{:.4f}"),
    ("extracted", "extracted ↓", "{:d}"),
    ("flagged", "flagged ↓", "{:d}"),
    ("replication", "replication ↓", "{:.2f}"),
    ("replication_p95", "replication p95 ↓", "{:.3f}"),
    ("noise_norm", "noise norm ↓", "{:.4f}"),
]


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

    data = parser.add_argument_group("data (diffusers image folders with metadata.jsonl)")
    data.add_argument("--train_data_dir", required=True, help="The training images (AMD / replication reference).")
    data.add_argument("--test_data_dir", required=True, help="Held-out images and prompts (FID).")
    data.add_argument("--memorization_data_dir", default=None, help="Prompts to attack; default: drawn from train.")
    data.add_argument("--num_attack_prompts", type=int, default=10, help="Without --memorization_data_dir.")
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
    scoring.add_argument("--seed", type=int, default=0)

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default="memorization-eval")
    output.add_argument("--save_generations", action="store_true", help="PNGs and generations.safetensors.")
    args = parser.parse_args(argv)
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


def load_data(args: argparse.Namespace, resolution: int) -> EvaluationData:
    """The `EvaluationData` of the three folders (see the module docstring for the attacked prompts).

    With ``--max_train_images``, the attacked images are added to the drawn reference set, so AMD and replication
    always see the images the attack looks for (a repeated image changes neither).
    """
    test = load_split(args.test_data_dir, resolution, max_images=args.num_fid_images, seed=args.seed)
    if args.memorization_data_dir:
        memorization = load_split(args.memorization_data_dir, resolution)
    else:
        memorization = load_split(args.train_data_dir, resolution, max_images=args.num_attack_prompts, seed=args.seed)
    training = load_split(args.train_data_dir, resolution, max_images=args.max_train_images, seed=args.seed + 1)
    if args.max_train_images is not None:
        training = SplitImages(
            torch.cat([memorization.images, training.images]), memorization.captions + training.captions
        )
    return EvaluationData(test=test, memorization=memorization, training=training)


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
    """Load, generate, score, write ``results.json`` and ``results.md``; returns the results."""
    args = parse_args(argv)
    pipeline = load_pipeline(args)
    resolution = args.resolution or native_resolution(pipeline)
    data = load_data(args, resolution)
    settings = EvaluationSettings(
        num_generations=args.num_generations,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        extraction_threshold=args.extraction_threshold,
        min_group_size=args.min_group_size,
        noise_norm_generations=args.noise_norm_generations,
        feature=args.feature,
        feature_device=pipeline.device,
        seed=args.seed,
        generation_batch_size=args.generation_batch_size,
        image_size=resolution,
    )
    scores = evaluate_model(pipeline, data, settings, keep_generations=args.save_generations)

    os.makedirs(args.output_dir, exist_ok=True)
    label = args.label or (os.path.basename(os.path.normpath(args.adapter_dir)) if args.adapter_dir else "base model")
    values = scores.table_values()
    results = {
        "label": label,
        "scores": values,
        "per_prompt": [
            {key: record[key] for key in ("prompt", "group_size", "distance", "extracted")}
            for record in scores.prompt_records
        ],
        "counts": {
            "test_images": len(data.test.captions),
            "attacked_prompts": len(data.memorization.captions),
            "reference_images": len(data.training.captions),
        },
        "settings": {**vars(args), "resolution": resolution},
    }
    if args.save_generations:
        results["generations"] = save_generations(scores, args.output_dir)
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    table = markdown_table([{"method": label, **values}], TABLE_COLUMNS)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    print(table, end="")
    print(f"Results in {args.output_dir}/results.json")
    return results


if __name__ == "__main__":
    main()
