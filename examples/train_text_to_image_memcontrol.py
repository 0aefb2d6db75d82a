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

This file imports no torch: it parses and checks the flags (their values, that the ``--mask`` and ``--train_csv``
files exist, that ``--train_data_dir`` has captions), so that ``--help`` and argument errors take a moment, then
imports the training (`peft_memcontrol.cli.train`), which reads the ``--mask`` file and trains.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from peft_memcontrol.constants import DEFAULT_FEATURE, METHOD_NAMES
from peft_memcontrol.training.arguments import add_config_arguments, config_from_args
from peft_memcontrol.training.config import TrainingConfig, check_ema_method
from peft_memcontrol.training.image_folders import find_metadata_files


TRAINING_MODULE = "peft_memcontrol.cli.train"
"""The module that reads the ``--mask`` file and trains (`prepare_run`, `run_training`), imported after the checks."""

METHOD_CHOICES = (*METHOD_NAMES, "memcontrol", "lora", "full")

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


def check_args(args: argparse.Namespace) -> None:
    """Refuse the flags that cannot make a run, without importing torch: their values (`TrainingConfig`'s checks
    included), a missing ``--mask`` or ``--train_csv`` file, a ``--train_data_dir`` or ``--memorization_held_out_dir``
    without metadata files."""
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
    # The learning rate, which the --mask file may record, is chosen and checked once the training has read that
    # file; the default stands in for it in this check of the other settings.
    check_ema_method(config_from_args(TrainingConfig, args, learning_rate=TrainingConfig.learning_rate), args.method)
    for flag in ("mask", "train_csv"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"--{flag} {path} does not exist.")
    if args.train_data_dir:
        find_metadata_files(args.train_data_dir)
    if args.memorization_held_out_dir:
        find_metadata_files(args.memorization_held_out_dir, flag="--memorization_held_out_dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags (`check_args`), then import the training and let it read the ``--mask`` file and
    build the run's config (``prepare_run``), so that a bad flag, file or folder fails before any model is loaded.

    Raises:
        ValueError, FileNotFoundError, ImportError: naming the flag and the fix.
    """
    args = build_parser().parse_args(argv)
    check_args(args)
    return importlib.import_module(TRAINING_MODULE).prepare_run(args)


def main(argv: list[str] | None = None) -> None:
    """Train; a refused flag exits with status 2 and the reason, as argparse's own errors do."""
    try:
        args = parse_args(argv)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    importlib.import_module(TRAINING_MODULE).run_training(args)


if __name__ == "__main__":
    main()
