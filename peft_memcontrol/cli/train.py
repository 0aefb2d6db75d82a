"""The training of ``examples/train_text_to_image_memcontrol.py``, imported once its flags are parsed and checked.

The script parses its flags and refuses bad ones (flag values, missing ``--mask``/``--train_csv`` files, an image folder
without metadata) with torch-free modules only, so that ``--help`` and argument errors take a moment; this module
then reads the ``--mask`` file, settles the learning rate and the `TrainingConfig` (`prepare_run`), and trains
(`run_training`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.logging import get_logger
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import LoraConfig, PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from ..evaluation import dataset_split
from ..hub import push_adapter_to_hub
from ..metrics import calibrate_copy_detection, extract_features, find_duplicate_groups, get_feature_extractor
from ..slots import Mask
from ..tiny_sd import tiny_pipeline_path
from ..training import (
    CaptionWordRepetition,
    MemControlTrainer,
    MemorizationMonitor,
    RandomWordAddition,
    RandomWordReplacement,
    TrainingConfig,
    ValidationImages,
    build_proxy_set,
    config_from_args,
    load_training_dataset,
)
from ..training.trainer import training_banner
from ..tuners import METHODS, MemControlConfig
from ..tuners.model_card import search_provenance, update_model_card


# Named after the script, whose run it logs.
logger = get_logger("train_text_to_image_memcontrol", log_level="INFO")


@dataclass(frozen=True)
class MaskFile:
    """A ``--mask`` file: the mask, and what a search result or adapter config records beside it (``provenance``:
    the objectives, scores, learning rate and search facts of a searched mask, `search_provenance`)."""

    path: str
    mask: Mask
    method: str | None = None
    learning_rate: float | None = None
    mask_semantics: str | None = None
    provenance: dict[str, Any] | None = None


def read_mask_file(path: str) -> MaskFile:
    """Read ``--mask``: a ``{slot: bool}`` object, or a search result / adapter config holding ``"mask"``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--mask {path} does not exist.")
    with open(path) as f:
        text = f.read()
    try:
        mask = Mask.from_json(text)
    except ValueError as error:
        raise ValueError(f"--mask {path}: {error}") from error
    data = json.loads(text)
    settings = data if "mask" in data else {}
    return MaskFile(
        path=path,
        mask=mask,
        method=recorded_method(settings),
        learning_rate=settings.get("learning_rate"),
        mask_semantics=settings.get("mask_semantics"),
        provenance=search_provenance(settings),
    )


def recorded_method(settings: Mapping[str, Any]) -> str | None:
    """The method a mask file was searched or trained with: its ``"method"`` (a search result or `MemControlConfig`),
    else the method of its ``"peft_type"`` (a method's ``adapter_config.json``); ``None`` if it records neither."""
    if "method" in settings:
        return settings["method"]
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(settings.get("peft_type"))
    return next((name for name, (cls, _) in METHODS.items() if cls is config_cls), None)


def prepare_run(args: argparse.Namespace) -> argparse.Namespace:
    """Complete the launch script's checked flags with what needs the ``--mask`` file: ``args.mask_file``
    (`read_mask_file`, the method checked against it), ``args.learning_rate`` and ``args.learning_rate_source``
    (`choose_learning_rate`) and ``args.config``, the run's `TrainingConfig` with the mitigation flags' caption
    transforms. Returns ``args``."""
    args.mask_file = read_mask_file(args.mask) if args.mask else None
    if args.mask_file is not None:
        check_method_matches_mask(args.method, args.mask_file)
    args.learning_rate, args.learning_rate_source = choose_learning_rate(args.learning_rate, args.mask_file)
    args.config = config_from_args(TrainingConfig, args, caption_transforms=build_caption_transforms(args))
    return args


def choose_learning_rate(flag: float | None, mask_file: MaskFile | None) -> tuple[float, str]:
    """``--learning_rate``, else the one the ``--mask`` file records, else `TrainingConfig`'s, with where it came
    from (for the banner); refused unless it is a finite number above 0 (a recorded 0 is an error in the file, not a
    request for the default)."""
    if flag is not None:
        rate, source, origin = flag, "--learning_rate", "from --learning_rate"
    elif mask_file is not None and mask_file.learning_rate is not None:
        rate, source = mask_file.learning_rate, f"the learning_rate recorded in --mask {mask_file.path}"
        origin = f"from the searched mask file {mask_file.path}"
    else:
        return TrainingConfig.learning_rate, "the default"
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{source} is {rate!r}: a learning rate must be a finite number above 0.")
    return float(rate), origin


LORA_TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
"""The LoRA baseline's targets: the attention projections diffusers' ``train_text_to_image_lora.py`` adapts."""


def check_method_matches_mask(method: str, mask_file: MaskFile) -> None:
    """Refuse a ``--method`` other than the one ``mask_file`` records (``memcontrol`` takes the recorded one)."""
    if method != "memcontrol" and mask_file.method is not None and mask_file.method != method:
        raise ValueError(
            f"--method {method} disagrees with --mask {mask_file.path}, a mask for method {mask_file.method!r}: "
            f"pass --method {mask_file.method} (or --method memcontrol, which trains the method the file records)."
        )


def build_method(args: argparse.Namespace) -> str | PeftConfig:
    """The ``method`` argument of the trainer: ``"full"`` or a PEFT config."""
    if args.method == "full":
        return "full"
    if args.method == "lora":
        return LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=list(LORA_TARGET_MODULES))
    mask_file = args.mask_file
    options = {}
    mask_semantics = args.mask_semantics or (mask_file.mask_semantics if mask_file else None)
    if mask_semantics:
        options["mask_semantics"] = mask_semantics
    mask = mask_file.mask.to_dict() if mask_file else None
    if args.method == "memcontrol":
        if mask_file is not None and mask_file.method is not None:
            options["method"] = mask_file.method
        # The trained adapter's config keeps the search's scores, learning rate and facts beside its mask.
        provenance = (mask_file.provenance if mask_file else None) or {}
        return MemControlConfig(mask=mask, **provenance, **options)
    config_cls = METHODS[args.method][0]
    return config_cls(mask=mask, **options)


def build_caption_transforms(args: argparse.Namespace) -> list:
    """The caption randomizations the mitigation flags ask for, in the order they apply."""
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


def native_resolution(model_path: str, revision: str | None) -> int:
    """The image size a model was made for: the UNet's sample size times the VAE's downsampling factor."""
    unet_config = UNet2DConditionModel.load_config(model_path, subfolder="unet", revision=revision)
    vae_config = AutoencoderKL.load_config(model_path, subfolder="vae", revision=revision)
    return unet_config["sample_size"] * 2 ** (len(vae_config["block_out_channels"]) - 1)


def build_validation(args: argparse.Namespace, trainer: MemControlTrainer) -> ValidationImages | None:
    """The validation images of ``--validation_prompt`` (``None`` without one): every ``--validation_epochs`` epochs
    during training, and after it."""
    if args.validation_prompt is None:
        return None
    return ValidationImages(
        args.validation_prompt,
        args.num_validation_images,
        args.output_dir,
        trainer.steps_per_epoch,
        args.validation_epochs,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
    )


def card_notes(args: argparse.Namespace, final_loss: float | None, duplicate_groups: int | None) -> dict[str, Any]:
    """What the model cards say of the run beyond what the trainer knows: the data's origin, the duplicate groups
    found in it (by the memorization monitor; ``None``: not looked for), the mask file, where the learning rate came
    from, the final loss."""
    return {
        "dataset": args.dataset_name or args.train_data_dir or args.train_csv,
        "duplicate_groups": duplicate_groups,
        "mask_file": args.mask,
        "learning_rate_source": args.learning_rate_source,
        "final_loss": final_loss,
    }


def mask_search_provenance(args: argparse.Namespace) -> dict[str, Any] | None:
    """The search provenance that the ``--mask`` file records, with the file it was read from; ``None`` without one
    (the trainer then takes what the adapter's config records)."""
    if args.mask_file is None or args.mask_file.provenance is None:
        return None
    return {**args.mask_file.provenance, "mask_file": args.mask}


def build_memorization_monitor(
    args: argparse.Namespace, dataset: Any, resolution: int
) -> tuple[MemorizationMonitor | None, int | None]:
    """The monitor of ``--memorization_check_steps`` and the number of duplicate groups it found in the data
    (``(None, None)`` when off): the at-risk prompts are the captions of duplicated training images (exact or, in the
    feature space, above the calibrated threshold) and then a seeded sample of the others; the reference set is every
    training image."""
    if not args.memorization_check_steps:
        return None, None
    extractor = get_feature_extractor(args.memorization_feature)

    def embed(images: torch.Tensor) -> torch.Tensor:
        return extract_features(images, extractor)

    training = dataset_split(dataset)
    held_out = dataset_split(
        load_training_dataset(train_data_dir=args.memorization_held_out_dir, resolution=resolution, center_crop=True)
    )
    calibration = calibrate_copy_detection(
        training.images, held_out.images, embed, false_positive_rate=args.copy_false_positive_rate
    )
    logger.info("Memorization monitoring, %s", calibration.describe())
    features = embed(training.images)
    groups = find_duplicate_groups(training.images, features, calibration.threshold)
    rows = [group.indices[0] for group in groups]
    others = [row for row in range(len(training.captions)) if row not in rows]
    rows += random.Random(args.seed).sample(
        others, max(0, min(len(others), args.memorization_check_prompts - len(rows)))
    )
    prompts = [training.captions[row] for row in rows[: args.memorization_check_prompts]]
    logger.info(
        "Memorization monitoring: %d at-risk prompts (%d from duplicated images), every %d steps.",
        len(prompts),
        min(len(groups), len(prompts)),
        args.memorization_check_steps,
    )
    monitor = MemorizationMonitor(
        prompts,
        training.images,
        calibration,
        embed,
        args.memorization_check_steps,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        stop_on_copy=args.stop_on_copy,
    )
    return monitor, len(groups)


def run_training(args: argparse.Namespace) -> None:
    """Train as the flags (completed by `prepare_run`) say, and save the adapter or UNet, its model card, the
    validation images and ``training_summary.json`` in ``--output_dir``."""
    model_path = args.pretrained_model_name_or_path or tiny_pipeline_path()

    resolution = args.resolution or native_resolution(model_path, args.revision)
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

    trainer = MemControlTrainer.from_pretrained(
        model_path, dataset, build_method(args), args.config, revision=args.revision, variant=args.variant
    )
    logger.info("%s", trainer.accelerator.state)
    summary = {**trainer.run_summary(), "mask_file": args.mask, "learning_rate_source": args.learning_rate_source}
    for line in training_banner(summary):
        logger.info(line)
    monitor, duplicate_groups = build_memorization_monitor(args, dataset, resolution)
    validation = build_validation(args, trainer)
    result = trainer.train(monitor=monitor, validation=validation)
    final_loss = result.losses[-1] if result.losses else None
    notes, search = card_notes(args, final_loss, duplicate_groups), mask_search_provenance(args)
    saved = trainer.save_adapter(args.output_dir, card_notes=notes, search=search)
    if trainer.accelerator.is_main_process:
        summary["global_step"] = result.global_step
        summary["epochs_run"] = math.ceil(result.global_step / trainer.steps_per_epoch)
        summary["final_loss"] = final_loss
        summary["dropped_samples"] = result.dropped_samples
        if result.memorization_checks:
            summary["memorization_checks"] = result.memorization_checks
            summary["stopped_at_copy"] = result.stopped_at_copy
        if validation is not None:
            summary["validation_steps"] = [done.step for done in validation.history]
        with open(os.path.join(args.output_dir, "training_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        if validation is not None:
            final_validation = validation.generate(trainer, os.path.join(args.output_dir, "validation")).to_card()
        carded = [saved]
        if args.save_merged_pipeline:
            merged = os.path.join(args.output_dir, "merged_pipeline")
            os.makedirs(merged, exist_ok=True)
            # The card first: merging takes the adapter, whose parameters the card counts, out of the UNet.
            trainer.write_model_card(merged, "pipeline", card_notes=notes, search=search)
            carded.append(merged)
            pipe = trainer.pipeline()
            unet = trainer.unwrapped_model
            if hasattr(unet, "merge_and_unload"):
                pipe.unet = unet.merge_and_unload()
            pipe.save_pretrained(merged)
        if validation is not None:
            for folder in carded:
                update_model_card(folder, validation=final_validation)
        if args.push_to_hub:  # the saved folder: its card has the run's sections and validation images
            repo_id = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
            logger.info("Pushed the adapter: %s", push_adapter_to_hub(saved, repo_id))
    trainer.end()
