"""What a training run is told (`TrainingConfig`) and what it reports (`TrainingResult`).

Field names and help texts follow the flags of diffusers' ``train_text_to_image_lora.py``; each field's ``metadata``
holds its argparse keywords (``help`` first, as with ``transformers.HfArgumentParser``), from which the launch script
builds its flags (`peft_memcontrol.training.arguments`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .mitigations import parse_threshold


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
    max_train_steps: int = field(default=100, metadata={"help": "Total number of optimizer steps to perform."})
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
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar on the local main process."})

    def __post_init__(self) -> None:
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
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
