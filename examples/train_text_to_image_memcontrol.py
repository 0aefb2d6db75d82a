#!/usr/bin/env python
"""Fine-tune a text-to-image model (Stable Diffusion) with a MemControl mask, an adapter, or fully.

Launched like diffusers' training scripts, with the same flag names as ``train_text_to_image_lora.py``::

    accelerate launch examples/train_text_to_image_memcontrol.py \\
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --train_data_dir my_images --method svdiff --mask mask.json \\
        --resolution 512 --train_batch_size 8 --max_train_steps 3000 --learning_rate 1e-4 \\
        --mixed_precision fp16 --output_dir sd-memcontrol --validation_prompt "a photo of ..."

Without ``--pretrained_model_name_or_path`` it trains the package's embedded tiny pipeline (offline, CPU).
The adapter is saved with ``save_pretrained`` in ``--output_dir``; load it back with
``peft_memcontrol.load_adapter(pipeline, output_dir)`` or ``PeftModel.from_pretrained(unet, output_dir)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch


logger = logging.getLogger("train_text_to_image_memcontrol")

METHOD_CHOICES = ("svdiff", "difffit", "attention", "memcontrol", "lora", "full")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fine-tune a text-to-image UNet with a MemControl mask.")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--pretrained_model_name_or_path", default=None, help="Hub id or folder; default: tiny pipeline."
    )
    model.add_argument("--revision", default=None)
    model.add_argument("--variant", default=None)
    model.add_argument("--method", choices=METHOD_CHOICES, default="svdiff", help="Adapter, or 'full' fine-tuning.")
    model.add_argument("--mask", default=None, help="JSON file: {slot: bool}, or a search result with a 'mask' key.")
    model.add_argument("--mask_semantics", choices=("paper", "strict"), default=None)
    model.add_argument("--rank", type=int, default=4, help="LoRA rank (--method lora).")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="A Hugging Face data set (needs `datasets`).")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_data_dir", default=None, help="An image folder with metadata.jsonl.")
    data.add_argument("--train_csv", default=None, help="A CSV of image path and caption.")
    data.add_argument("--image_column", default=None)
    data.add_argument("--caption_column", default=None)
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--cache_dir", default=None)
    data.add_argument("--resolution", type=int, default=None, help="Default: the model's sample size x VAE factor.")
    data.add_argument("--center_crop", action="store_true")
    data.add_argument("--random_flip", action="store_true")
    data.add_argument("--proxy_fraction", type=float, default=None, help="Train on a proxy set: this data fraction...")
    data.add_argument("--proxy_num_memorization", type=int, default=10, help="...plus this many samples...")
    data.add_argument("--proxy_repeats", type=int, default=50, help="...each repeated this many times.")

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default="sd-model-memcontrol")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train_batch_size", type=int, default=8)
    train.add_argument("--max_train_steps", type=int, default=1000)
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--gradient_checkpointing", action="store_true")
    train.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="Default: the learning rate the search found, when --mask holds one; else 1e-4.",
    )
    train.add_argument("--scale_lr", action="store_true")
    train.add_argument("--lr_scheduler", default="constant")
    train.add_argument("--lr_warmup_steps", type=int, default=0)
    train.add_argument("--snr_gamma", type=float, default=None)
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--adam_weight_decay", type=float, default=1e-2)
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--prediction_type", choices=("epsilon", "v_prediction"), default=None)
    train.add_argument("--noise_offset", type=float, default=0.0)
    train.add_argument("--caption_dropout_probability", type=float, default=0.1)
    train.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    train.add_argument("--dataloader_num_workers", type=int, default=0)
    train.add_argument("--checkpointing_steps", type=int, default=500)
    train.add_argument("--checkpoints_total_limit", type=int, default=None)
    train.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest'.")
    train.add_argument("--report_to", default="tensorboard")
    train.add_argument("--logging_dir", default="logs")

    mitigation = parser.add_argument_group("mitigations")
    mitigation.add_argument("--random_word_addition", type=int, default=0, help="Insert this many random words.")
    mitigation.add_argument("--static_word_addition", action="store_true", help="Reference variant: once per sample.")
    mitigation.add_argument("--random_word_replacement", type=float, default=0.0, help="Per-word replacement prob.")
    mitigation.add_argument("--caption_word_repetition", type=int, default=0, help="Repeat this many caption words.")
    mitigation.add_argument("--noise_norm_threshold", default=None, help="A number, or 'auto' (batch's top 10%%).")

    output = parser.add_argument_group("validation and output")
    output.add_argument("--validation_prompt", default=None)
    output.add_argument("--num_validation_images", type=int, default=4)
    output.add_argument("--num_inference_steps", type=int, default=30)
    output.add_argument("--guidance_scale", type=float, default=7.5)
    output.add_argument("--save_merged_pipeline", action="store_true", help="Also save the merged full pipeline.")
    output.add_argument("--push_to_hub", action="store_true")
    output.add_argument("--hub_model_id", default=None)
    output.add_argument("--hub_token", default=None)
    args = parser.parse_args(argv)
    if args.hub_token is not None:
        raise ValueError("Pass the Hub token with `hf auth login`, not --hub_token (it would end up in logs).")
    if args.mask is not None and args.method in ("full", "lora"):
        raise ValueError(f"--mask selects slots of a MemControl method; --method {args.method} takes no mask.")
    # the mask file is read once, here, so that a bad file fails before any model is loaded
    args.mask_contents = read_mask(args.mask) if args.mask else (None, {})
    if args.learning_rate is None:
        args.learning_rate = args.mask_contents[1].get("learning_rate") or 1e-4
    return args


def read_mask(path: str) -> tuple[dict[str, bool], dict]:
    """Read a mask file: ``{slot: bool}``, or a search result / adapter config holding ``"mask"``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--mask {path} does not exist.")
    with open(path) as f:
        data = json.load(f)
    extra = {}
    if isinstance(data, dict) and "mask" in data:
        extra = {k: data[k] for k in ("method", "learning_rate", "mask_semantics") if k in data}
        data = data["mask"]
    if not isinstance(data, dict) or not all(isinstance(v, (bool, int)) for v in data.values()):
        raise ValueError(
            f"--mask {path}: expected a JSON object of slot name -> true/false, got {type(data).__name__}."
        )
    return {k: bool(v) for k, v in data.items()}, extra


def build_method(args: argparse.Namespace):
    """The ``method`` argument of the trainer: ``"full"`` or a PEFT config."""
    if args.method == "full":
        return "full"
    if args.method == "lora":
        from peft import LoraConfig

        return LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    import peft_memcontrol as pm

    options = {}
    mask, extra = args.mask_contents
    if args.mask_semantics or extra.get("mask_semantics"):
        options["mask_semantics"] = args.mask_semantics or extra["mask_semantics"]
    if args.method == "memcontrol":
        return pm.MemControlConfig(mask=mask, method=extra.get("method", "svdiff"), **options)
    config_cls = {"svdiff": pm.SVDiffConfig, "difffit": pm.DiffFitConfig, "attention": pm.MaskedAttentionConfig}
    return config_cls[args.method](mask=mask, **options)


def build_caption_transforms(args: argparse.Namespace) -> list:
    from peft_memcontrol.training import CaptionWordRepetition, RandomWordAddition, RandomWordReplacement

    transforms = []
    if args.random_word_addition:
        transforms.append(
            RandomWordAddition(num_words=args.random_word_addition, static=args.static_word_addition, seed=args.seed)
        )
    if args.random_word_replacement:
        transforms.append(RandomWordReplacement(probability=args.random_word_replacement))
    if args.caption_word_repetition:
        transforms.append(CaptionWordRepetition(num_words=args.caption_word_repetition))
    return transforms


def save_validation_images(trainer, args: argparse.Namespace) -> list[str]:
    """Generate ``--num_validation_images`` for ``--validation_prompt`` into ``output_dir/validation``."""
    pipe = trainer.pipeline()
    generator = torch.Generator().manual_seed(args.seed)
    images = pipe(
        [args.validation_prompt] * args.num_validation_images,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        generator=generator,
    ).images
    folder = os.path.join(args.output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(os.path.join(folder, f"image_{i}.png"))
        image.save(paths[-1])
    for tracker in trainer.accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            stacked = np.stack([np.asarray(image) for image in images])
            tracker.writer.add_images("validation", stacked, trainer.global_step, dataformats="NHWC")
    return paths


def main(argv: list[str] | None = None) -> None:
    from peft_memcontrol.pipelines import tiny_pipeline_path
    from peft_memcontrol.training import MemControlTrainer, TrainingConfig, build_proxy_set, load_training_dataset
    from peft_memcontrol.training.mitigations import parse_threshold

    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_path = args.pretrained_model_name_or_path or tiny_pipeline_path()

    resolution = args.resolution
    if resolution is None:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        unet_config = UNet2DConditionModel.load_config(model_path, subfolder="unet", revision=args.revision)
        vae_config = AutoencoderKL.load_config(model_path, subfolder="vae", revision=args.revision)
        resolution = unet_config["sample_size"] * 2 ** (len(vae_config["block_out_channels"]) - 1)
    dataset = load_training_dataset(
        train_data_dir=args.train_data_dir,
        dataset_name=args.dataset_name,
        train_csv=args.train_csv,
        image_column=args.image_column,
        caption_column=args.caption_column,
        dataset_config_name=args.dataset_config_name,
        cache_dir=args.cache_dir,
        resolution=resolution,
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        max_train_samples=args.max_train_samples,
    )
    if args.proxy_fraction is not None:
        dataset = build_proxy_set(
            dataset, args.proxy_fraction, args.proxy_num_memorization, repeats=args.proxy_repeats, seed=args.seed
        ).dataset

    config = TrainingConfig(
        output_dir=args.output_dir,
        max_train_steps=args.max_train_steps,
        train_batch_size=args.train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        scale_lr=args.scale_lr,
        lr_scheduler=args.lr_scheduler,
        lr_warmup_steps=args.lr_warmup_steps,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_weight_decay=args.adam_weight_decay,
        adam_epsilon=args.adam_epsilon,
        max_grad_norm=args.max_grad_norm,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        caption_dropout_probability=args.caption_dropout_probability,
        snr_gamma=args.snr_gamma,
        prediction_type=args.prediction_type,
        noise_offset=args.noise_offset,
        seed=args.seed,
        checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
        resume_from_checkpoint=args.resume_from_checkpoint,
        report_to=args.report_to,
        logging_dir=args.logging_dir,
        dataloader_num_workers=args.dataloader_num_workers,
        caption_transforms=build_caption_transforms(args),
        noise_norm_threshold=parse_threshold(args.noise_norm_threshold),
    )
    trainer = MemControlTrainer.from_pretrained(
        model_path, dataset, build_method(args), config, revision=args.revision, variant=args.variant
    )
    logger.info("%s", trainer.accelerator.state)
    result = trainer.train()
    trainer.save_adapter(args.output_dir)
    if trainer.accelerator.is_main_process:
        summary = {"global_step": result.global_step, "final_loss": result.losses[-1] if result.losses else None}
        summary["dropped_samples"] = result.dropped_samples
        with open(os.path.join(args.output_dir, "training_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        if args.validation_prompt:
            save_validation_images(trainer, args)
        if args.save_merged_pipeline:
            pipe = trainer.pipeline()
            unet = trainer.unwrapped_model
            if hasattr(unet, "merge_and_unload"):
                pipe.unet = unet.merge_and_unload()
            pipe.save_pretrained(os.path.join(args.output_dir, "merged_pipeline"))
        if args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
            repo_id = create_repo(repo_id, exist_ok=True).repo_id
            upload_folder(repo_id=repo_id, folder_path=args.output_dir, ignore_patterns=["checkpoint-*", "logs/*"])
    trainer.end()


if __name__ == "__main__":
    main()
