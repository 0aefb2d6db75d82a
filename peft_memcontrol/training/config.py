"""What a training run is told (`TrainingConfig`) and what it reports (`TrainingResult`).

Field names and help texts follow the flags of diffusers' ``train_text_to_image_lora.py``; each field's ``metadata``
holds its argparse keywords (``help`` first, as with ``transformers.HfArgumentParser``), from which the launch script
builds its flags (`peft_memcontrol.training.arguments`).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any


def parse_threshold(value: str) -> float | str:
    """Parse a ``--noise_norm_threshold`` flag: a number, or ``auto`` (any case)."""
    if value.lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError as err:
        raise ValueError(f"--noise_norm_threshold must be a number or 'auto', got {value!r}.") from err


@dataclass
class TrainingConfig:
    """Hyper-parameters of a run; names follow diffusers' ``train_text_to_image_lora.py`` flags."""

    output_dir: str = field(
        default="memcontrol-model",
        metadata={"help": "The output directory where the adapter (or UNet), checkpoints and logs are written."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into a non-empty output directory (refused otherwise, unless resuming): the "
            "checkpoint-<step> folders of the run there are deleted when training starts, so that they are neither "
            "kept in place of this run's nor resumed."
        },
    )
    num_train_epochs: int | None = field(
        default=None,
        metadata={
            "help": "Passes over the data to train for, as diffusers counts them (an epoch is ceil(ceil(ceil(examples "
            "/ train_batch_size) / processes) / gradient_accumulation_steps) optimizer steps). Used when "
            "max_train_steps is None."
        },
    )
    max_train_steps: int | None = field(
        default=100,
        metadata={"help": "Total number of optimizer steps to perform. If provided, overrides num_train_epochs."},
    )
    train_batch_size: int = field(default=8, metadata={"help": "Batch size (per device) for the training dataloader."})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "Number of updates steps to accumulate before performing a backward/update pass."},
    )
    learning_rate: float = field(
        default=1e-4, metadata={"help": "Initial learning rate (after the potential warmup period) to use."}
    )
    scale_lr: bool = field(
        default=False,
        metadata={
            "help": "Scale the learning rate by the number of processes, gradient accumulation steps, and batch size."
        },
    )
    lr_scheduler: str = field(
        default="constant",
        metadata={
            "help": 'The scheduler type to use. Choose between ["linear", "cosine", "cosine_with_restarts", '
            '"polynomial", "constant", "constant_with_warmup"].'
        },
    )
    lr_warmup_steps: int = field(default=0, metadata={"help": "Number of steps for the warmup in the lr scheduler."})
    adam_beta1: float = field(default=0.9, metadata={"help": "The beta1 parameter for the Adam optimizer."})
    adam_beta2: float = field(default=0.999, metadata={"help": "The beta2 parameter for the Adam optimizer."})
    adam_weight_decay: float = field(
        default=1e-2,
        metadata={"help": "Weight decay to use in full fine-tuning (an adapter's parameter groups train without)."},
    )
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Epsilon value for the Adam optimizer."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Max gradient norm (0 turns clipping off)."})
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "Whether to use mixed precision: fp16 or bf16 put the frozen VAE, text encoder and (under an "
            "adapter) base UNet in that dtype and keep the trained parameters in float32. Default to the value of "
            "accelerate config of the current system or the flag passed with the `accelerate launch` command.",
            "choices": ("no", "fp16", "bf16"),
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Whether or not to use gradient checkpointing to save memory at the expense of slower backward "
            "pass."
        },
    )
    caption_dropout_probability: float = field(
        default=0.1,
        metadata={"help": 'Probability of replacing a caption by "" (for classifier-free guidance).'},
    )
    snr_gamma: float | None = field(
        default=None,
        metadata={
            "help": "SNR weighting gamma to be used if rebalancing the loss. Recommended value is 5.0. More details "
            "here: https://huggingface.co/papers/2303.09556."
        },
    )
    prediction_type: str | None = field(
        default=None,
        metadata={
            "help": "The prediction_type that shall be used for training. If left to None the default prediction "
            "type of the scheduler: `noise_scheduler.config.prediction_type` is chosen.",
            "choices": ("epsilon", "v_prediction"),
        },
    )
    noise_offset: float = field(default=0.0, metadata={"help": "The scale of noise offset."})
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed of every random draw of the run (batches, augmentation, captions, noise, timesteps): the "
            "same seed gives the same run on any device, and a resumed run continues it exactly."
        },
    )
    checkpointing_steps: int | None = field(
        default=None,
        metadata={
            "help": "Save a checkpoint of the training state every X updates (None: never). These checkpoints are "
            "only suitable for resuming training using `resume_from_checkpoint`."
        },
    )
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Max number of checkpoints to store."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Whether training should be resumed from a previous checkpoint. Use a path saved by "
            '`checkpointing_steps`, or "latest" to automatically select the last available checkpoint.'
        },
    )
    report_to: str | None = field(
        default="tensorboard",
        metadata={
            "help": 'The integration to report the results and logs to: "tensorboard", "wandb", "comet_ml", "all", '
            'or "none". Without the tensorboard package, "tensorboard" warns and logs to no tracker.'
        },
    )
    logging_dir: str = field(default="logs", metadata={"help": "Tracker log directory, inside the output directory."})
    tracker_project_name: str = field(
        default="memcontrol", metadata={"help": "The project name the trackers log the run under."}
    )
    dataloader_num_workers: int = field(
        default=0,
        metadata={
            "help": "Number of subprocesses to use for data loading. 0 means that the data will be loaded in the "
            "main process."
        },
    )
    caption_transforms: Sequence[Any] = field(
        default_factory=list,
        metadata={
            "help": "Caption randomizations applied in order at every step, callables (caption, index, generator) "
            "-> caption such as RandomWordAddition. The trainer fills a missing word pool with the tokenizer's "
            "words on copies of its own; the objects passed here are never changed."
        },
    )
    noise_norm_threshold: float | str | None = field(
        default=None,
        metadata={
            "help": "Wen et al.'s training-time filtering: drop from the loss the samples whose text-conditional "
            'noise norm is above this number, or above the batch\'s 90th percentile with "auto". None: no filtering.',
            "type": parse_threshold,
        },
    )
    ddp_find_unused_parameters: bool = field(
        default=False,
        metadata={
            "help": "Let distributed training tolerate trainable parameters that a forward pass does not use (slower)."
        },
    )
    allow_tf32: bool = field(
        default=False,
        metadata={
            "help": "Whether or not to allow TF32 on Ampere GPUs. Can be used to speed up training. For more "
            "information, see https://pytorch.org/docs/stable/notes/cuda.html#tensorfloat-32-tf32-on-ampere-devices"
            " (sets torch's CUDA matmul and cuDNN TF32 switches; no effect on CPU)."
        },
    )
    use_8bit_adam: bool = field(
        default=False,
        metadata={"help": "Whether or not to use 8-bit Adam from bitsandbytes (pip install bitsandbytes)."},
    )
    enable_xformers_memory_efficient_attention: bool = field(
        default=False, metadata={"help": "Whether or not to use xformers (pip install xformers)."}
    )
    use_ema: bool = field(
        default=False,
        metadata={
            "help": "Whether to use EMA model (diffusers' EMAModel; full fine-tuning only). The saved UNet holds the "
            "averaged weights, and validation images are made with them."
        },
    )
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar on the local main process."})

    def __post_init__(self) -> None:
        if self.max_train_steps is None and self.num_train_epochs is None:
            raise ValueError("Give max_train_steps or num_train_epochs: the run needs a length.")
        for name in ("max_train_steps", "num_train_epochs", "train_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        for flag, package in (
            ("use_8bit_adam", "bitsandbytes"),
            ("enable_xformers_memory_efficient_attention", "xformers"),
        ):
            if getattr(self, flag) and importlib.util.find_spec(package) is None:
                raise ImportError(
                    f"{flag} needs the {package} package, which is not installed: pip install {package}."
                )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number above 0, got {self.learning_rate}.")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(
                f"checkpoints_total_limit must be at least 1 (None keeps every checkpoint), got "
                f"{self.checkpoints_total_limit}: a run must keep the checkpoint it writes."
            )
        if not 0.0 <= self.caption_dropout_probability <= 1.0:
            raise ValueError(f"caption_dropout_probability must be in [0, 1], got {self.caption_dropout_probability}.")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}.")
        if isinstance(self.noise_norm_threshold, str) and self.noise_norm_threshold != "auto":
            raise ValueError(f"noise_norm_threshold must be a number or 'auto', got {self.noise_norm_threshold!r}.")

    def to_tracker_config(self) -> dict[str, Any]:
        """Flat scalars for the trackers' hyper-parameter tables."""
        config = asdict(self)
        config["caption_transforms"] = ",".join(type(t).__name__ for t in self.caption_transforms)
        return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.items()}


def check_ema_method(config: TrainingConfig, method: Any) -> None:
    """Refuse ``use_ema`` with an adapter ``method`` (anything but ``"full"``): the average is over the whole UNet's
    weights, as in diffusers' ``train_text_to_image.py``."""
    if config.use_ema and method != "full":
        raise ValueError(
            "use_ema (--use_ema) averages the weights of the whole UNet, as diffusers' train_text_to_image.py does "
            "in full fine-tuning; an adapter's few parameters are not averaged. Train with --method full "
            "(method='full'), or drop --use_ema."
        )


def update_steps_per_epoch(
    num_examples: int, train_batch_size: int, num_processes: int, gradient_accumulation_steps: int
) -> int:
    """Optimizer steps in one pass over ``num_examples``, as diffusers' training scripts count them: the batches of a
    pass (the last one may be short), shared out over the processes, then grouped by gradient accumulation."""
    batches_per_process = math.ceil(math.ceil(num_examples / train_batch_size) / num_processes)
    return math.ceil(batches_per_process / gradient_accumulation_steps)


def resolve_training_length(config: TrainingConfig, num_examples: int, num_processes: int) -> TrainingConfig:
    """``config`` with both ``max_train_steps`` and ``num_train_epochs`` set, as diffusers' scripts settle them:
    ``max_train_steps`` when given (the epochs are then the passes it starts, rounded up), else ``num_train_epochs``
    passes of `update_steps_per_epoch` steps."""
    per_epoch = update_steps_per_epoch(
        num_examples, config.train_batch_size, num_processes, config.gradient_accumulation_steps
    )
    steps = config.max_train_steps if config.max_train_steps is not None else config.num_train_epochs * per_epoch
    return replace(config, max_train_steps=steps, num_train_epochs=math.ceil(steps / per_epoch))


@dataclass
class TrainingResult:
    """What a run did.

    Args:
        global_step: the optimizer step the run reached.
        losses: the loss of each optimizer step of this call (mean over processes and accumulated micro-batches).
        dropped_samples: samples that threshold filtering left out of the loss, over all processes.
        seen_samples: samples the run's steps drew, over all processes.
        output_dir: where the run wrote its checkpoints and logs.
        memorization_checks: the memorization monitor's checks (`MemorizationCheck.to_dict`), in order; empty
            without a monitor.
        stopped_at_copy: whether the monitor stopped the run because a check found a copy.
    """

    global_step: int
    losses: list[float]
    dropped_samples: int = 0
    seen_samples: int = 0
    output_dir: str | None = None
    memorization_checks: list[dict] = field(default_factory=list)
    stopped_at_copy: bool = False
