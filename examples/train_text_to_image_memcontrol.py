#!/usr/bin/env python
"""Fine-tune a text-to-image model (Stable Diffusion 1.x/2.x) with a MemControl mask, an adapter, or fully.

Launched like diffusers' training scripts, with the flag names of ``train_text_to_image_lora.py``::

    accelerate launch examples/train_text_to_image_memcontrol.py \\
        --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --train_data_dir my_images --method svdiff --mask mask.json \\
        --resolution 512 --train_batch_size 8 --max_train_steps 3000 --learning_rate 1e-4 \\
        --mixed_precision fp16 --output_dir sd-memcontrol --validation_prompt "a photo of ..." --validation_epochs 5

Without ``--pretrained_model_name_or_path`` it trains the package's embedded tiny pipeline (offline, CPU).
The adapter is saved with ``save_pretrained`` in ``--output_dir`` (``--method full``: the UNet in
``output_dir/unet``); load it back with ``peft_memcontrol.load_adapter(pipeline, output_dir)`` or
``PeftModel.from_pretrained(unet, output_dir)``. Every saved output (and ``--save_merged_pipeline``'s pipeline) has a
model card, README.md: base model, method, mask, data, settings, the search's record of a searched ``--mask``, and the
validation images.

The training flags are `TrainingConfig`'s fields (their help is the fields' documentation). As in diffusers'
scripts, the run is ``--num_train_epochs`` long unless ``--max_train_steps`` is given, validation images of
``--validation_prompt`` are made every ``--validation_epochs`` epochs (into ``output_dir/validation/step-<step>``) and
after training (``output_dir/validation``), and ``--use_ema`` (full fine-tuning) saves the averaged UNet. Flags of
diffusers' ``train_text_to_image_lora.py`` that this script does not take: ``--image_interpolation_mode`` (images are
resized bilinearly) and ``--local_rank`` (``accelerate launch`` sets the process's rank). ``--hub_token`` is refused:
log in with ``hf auth login``. Defaults that differ from diffusers': ``--output_dir``, ``--seed`` 0 (every run is
seeded), ``--resolution`` (the model's native size), ``--train_batch_size`` 8, ``--lr_warmup_steps`` 0, and
``--image_column``/``--caption_column`` (per data source).
"""

from __future__ import annotations

import argparse
import json
import logging
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

from peft_memcontrol.evaluation import dataset_split
from peft_memcontrol.hub import push_adapter_to_hub
from peft_memcontrol.metrics import (
    DEFAULT_FEATURE,
    calibrate_copy_detection,
    extract_features,
    find_duplicate_groups,
    get_feature_extractor,
)
from peft_memcontrol.slots import Mask
from peft_memcontrol.tiny_sd import tiny_pipeline_path
from peft_memcontrol.training import (
    CaptionWordRepetition,
    MemControlTrainer,
    MemorizationMonitor,
    RandomWordAddition,
    RandomWordReplacement,
    TrainingConfig,
    ValidationImages,
    add_config_arguments,
    build_proxy_set,
    check_ema_method,
    config_from_args,
    load_training_dataset,
)
from peft_memcontrol.training.data import find_metadata_files
from peft_memcontrol.training.trainer import training_banner
from peft_memcontrol.tuners import METHODS, MemControlConfig
from peft_memcontrol.tuners.model_card import search_provenance, update_model_card


logger = get_logger("train_text_to_image_memcontrol", log_level="INFO")

METHOD_CHOICES = (*METHODS, "memcontrol", "lora", "full")

#: Where the script's defaults differ from `TrainingConfig`'s (which suit the short runs of the library and search).
SCRIPT_DEFAULTS = {
    "output_dir": {"default": "sd-model-memcontrol"},
    "num_train_epochs": {"default": 100},
    "max_train_steps": {"default": None},
    "checkpointing_steps": {"default": 500},
    "learning_rate": {
        "default": None,
        "help": "Initial learning rate (after the potential warmup period) to use. None: the learning rate the "
        "search found, when --mask holds one; else 1e-4.",
    },
}


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


def build_parser() -> argparse.ArgumentParser:
    """The script's flags: model, data, `TrainingConfig`'s fields, mitigations, validation and output."""
    parser = argparse.ArgumentParser(
        description="Fine-tune a text-to-image UNet with a MemControl mask.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Path to pretrained model or model identifier from huggingface.co/models. None: the package's "
        "embedded tiny pipeline.",
    )
    model.add_argument(
        "--revision", default=None, help="Revision of pretrained model identifier from huggingface.co/models."
    )
    model.add_argument(
        "--variant", default=None, help="Variant of the model files of the pretrained model, e.g. fp16."
    )
    model.add_argument(
        "--method",
        choices=METHOD_CHOICES,
        default="svdiff",
        help="The adapter: a masked method, 'memcontrol' (a searched mask on the method its --mask file records), "
        "PEFT's 'lora', or 'full' fine-tuning.",
    )
    model.add_argument(
        "--mask",
        default=None,
        help="JSON file: {slot: bool}, or a search result / adapter_config.json with a 'mask' entry (and the "
        "'method', 'learning_rate' and 'mask_semantics' it was searched with).",
    )
    model.add_argument(
        "--mask_semantics",
        choices=("paper", "strict"),
        default=None,
        help="How a mask maps to parameters (see MaskedTunerConfig). None: the --mask file's, else the method's.",
    )
    model.add_argument(
        "--rank", type=int, default=4, help="The dimension of the LoRA update matrices (--method lora)."
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default=None,
        help="The name of a Hugging Face data set, or a local copy of one (needs the `datasets` package).",
    )
    data.add_argument(
        "--dataset_config_name",
        default=None,
        help="The config of the data set, leave as None if there's only one config.",
    )
    data.add_argument(
        "--train_data_dir",
        default=None,
        help="An image folder with metadata.jsonl or metadata.csv files providing the captions, in it or in its "
        "subfolders (datasets' imagefolder convention).",
    )
    data.add_argument("--train_csv", default=None, help="A CSV file of image path and caption.")
    data.add_argument(
        "--image_column",
        default=None,
        help="The column of the data containing an image. None: 'file_name' for folders, the first CSV column.",
    )
    data.add_argument(
        "--caption_column",
        default=None,
        help="The column of the data containing a caption. None: 'text' for folders, the second CSV column.",
    )
    data.add_argument(
        "--max_train_samples",
        type=int,
        default=None,
        help="For debugging purposes or quicker training, truncate the number of training examples to this value.",
    )
    data.add_argument("--cache_dir", default=None, help="The directory where the downloaded data sets will be stored.")
    data.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="The resolution images are resized and cropped to. None: the model's sample size x VAE factor.",
    )
    data.add_argument(
        "--center_crop", action="store_true", help="Center crop the images to the resolution, instead of randomly."
    )
    data.add_argument("--random_flip", action="store_true", help="Randomly flip images horizontally.")
    data.add_argument(
        "--proxy_fraction",
        type=float,
        default=None,
        help="Train on a proxy set: this fraction of the data plus --proxy_num_memorization samples repeated "
        "--proxy_repeats times.",
    )
    data.add_argument(
        "--proxy_num_memorization", type=int, default=10, help="Samples of the proxy set's memorization subset."
    )
    data.add_argument(
        "--proxy_repeats", type=int, default=50, help="Repeats of each memorization sample in the proxy set."
    )

    add_config_arguments(
        parser.add_argument_group("training"),
        TrainingConfig,
        # Caption transforms come from the mitigation flags; the progress bar always shows.
        exclude=("caption_transforms", "show_progress"),
        overrides=SCRIPT_DEFAULTS,
    )

    mitigation = parser.add_argument_group("mitigations")
    mitigation.add_argument(
        "--random_word_addition", type=int, default=0, help="Insert this many random words into each caption."
    )
    mitigation.add_argument(
        "--static_word_addition",
        action="store_true",
        help="Draw the added words once per sample (the reference code's variant), not at every step.",
    )
    mitigation.add_argument(
        "--random_word_replacement",
        type=float,
        default=0.0,
        help="Replace each caption word by a random word with this probability.",
    )
    mitigation.add_argument(
        "--caption_word_repetition", type=int, default=0, help="Repeat this many words of each caption."
    )

    monitoring = parser.add_argument_group("memorization monitoring")
    monitoring.add_argument(
        "--memorization_check_steps",
        type=int,
        default=0,
        help="Every N steps (and before the first), generate for the at-risk prompts and count copies of training "
        "images, with a threshold calibrated on --memorization_held_out_dir (0: off).",
    )
    monitoring.add_argument(
        "--memorization_held_out_dir",
        default=None,
        help="An image folder of images that are NOT in the training data (metadata.jsonl or .csv): they set the copy "
        "threshold at --copy_false_positive_rate. Needed with --memorization_check_steps.",
    )
    monitoring.add_argument(
        "--memorization_check_prompts",
        type=int,
        default=8,
        help="At-risk prompts per check: the captions of duplicated training images first, then a seeded sample.",
    )
    monitoring.add_argument(
        "--memorization_feature",
        default=DEFAULT_FEATURE,
        help="Feature space of the copy check (a built-in name such as efficientnet-lite0, clip, dinov2, or a Hub id).",
    )
    monitoring.add_argument(
        "--copy_false_positive_rate",
        type=float,
        default=0.01,
        help="Share of held-out images the copy threshold may call copies (needs at least 1/rate - 1 of them).",
    )
    monitoring.add_argument(
        "--stop_on_copy", action="store_true", help="Stop training at the first check that finds a copy."
    )

    output = parser.add_argument_group("validation and output")
    output.add_argument(
        "--validation_prompt",
        default=None,
        help="A prompt that is sampled during training (every --validation_epochs) and after it for inference.",
    )
    output.add_argument(
        "--validation_epochs",
        type=int,
        default=1,
        help="Run fine-tuning validation every X epochs (after the epochs whose 0-based number is a multiple of X, "
        "as diffusers does). The validation process consists of running the prompt `validation_prompt` multiple "
        "times: `num_validation_images`.",
    )
    output.add_argument(
        "--num_validation_images",
        type=int,
        default=4,
        help="Number of images that should be generated with `validation_prompt`.",
    )
    output.add_argument("--num_inference_steps", type=int, default=30, help="Sampling steps of the validation images.")
    output.add_argument(
        "--guidance_scale", type=float, default=7.5, help="Classifier-free guidance scale of the validation images."
    )
    output.add_argument(
        "--save_merged_pipeline",
        action="store_true",
        help="Also save the whole pipeline with the adapter merged into the UNet, in output_dir/merged_pipeline.",
    )
    output.add_argument(
        "--push_to_hub",
        action="store_true",
        help="Push the adapter, with its model card, to the Hub (peft_memcontrol.push_adapter_to_hub).",
    )
    output.add_argument(
        "--hub_model_id", default=None, help="The Hub repository to push to. None: the name of output_dir."
    )
    output.add_argument(
        "--hub_token",
        default=None,
        help="Refused: log in with `hf auth login` instead (a token would end up in logs).",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags; reads the ``--mask`` file and finds the data folder's metadata files, so that a bad
    file or folder fails before any model is loaded."""
    args = build_parser().parse_args(argv)
    if args.hub_token is not None:
        raise ValueError("Pass the Hub token with `hf auth login`, not --hub_token (it would end up in logs).")
    if args.memorization_check_steps < 0:
        raise ValueError(f"--memorization_check_steps must be >= 0 (0: off), got {args.memorization_check_steps}.")
    if args.memorization_check_steps and not args.memorization_held_out_dir:
        raise ValueError(
            "--memorization_check_steps needs --memorization_held_out_dir: images that are not in the training data "
            "set the copy threshold (without them the threshold would be a guess, and its error rates unknown)."
        )
    if args.push_to_hub and args.method == "full":
        raise ValueError(
            "--push_to_hub uploads an adapter; --method full trains the whole UNet: upload output_dir/unet with "
            "`hf upload` instead."
        )
    if args.mask is not None and args.method in ("full", "lora"):
        raise ValueError(f"--mask selects slots of a MemControl method; --method {args.method} takes no mask.")
    if args.validation_epochs < 1:
        raise ValueError(f"--validation_epochs must be at least 1, got {args.validation_epochs}.")
    args.mask_file = read_mask_file(args.mask) if args.mask else None
    if args.mask_file is not None:
        check_method_matches_mask(args.method, args.mask_file)
    args.learning_rate, args.learning_rate_source = choose_learning_rate(args.learning_rate, args.mask_file)
    args.config = config_from_args(TrainingConfig, args, caption_transforms=build_caption_transforms(args))
    check_ema_method(args.config, args.method)
    if args.train_data_dir:
        find_metadata_files(args.train_data_dir)
    if args.train_csv and not os.path.isfile(args.train_csv):
        raise FileNotFoundError(f"--train_csv {args.train_csv} does not exist.")
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
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


if __name__ == "__main__":
    main()
