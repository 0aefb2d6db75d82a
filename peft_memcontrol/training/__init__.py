"""Fine-tuning with masks: the project's one training loop, its data conventions and the memorization mitigations.

The names below are imported on first use (PEP 562), as in the package facade: the launch script reads
`TrainingConfig` (`peft_memcontrol.training.config`) and checks image folders
(`peft_memcontrol.training.image_folders`) to answer ``--help`` and argument errors without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports


if TYPE_CHECKING:
    from .arguments import add_config_arguments, config_from_args
    from .config import (
        TrainingConfig,
        TrainingResult,
        check_ema_method,
        resolve_training_length,
        update_steps_per_epoch,
    )
    from .data import (
        ImageCaptionDataset,
        ProxySet,
        StepBatchSampler,
        build_proxy_set,
        collate_image_captions,
        image_to_tensor,
        load_training_dataset,
    )
    from .encodings import EncodingCache
    from .families import ModelFamily, StableDiffusionFamily
    from .mitigations import (
        CaptionWordRepetition,
        RandomWordAddition,
        RandomWordReplacement,
        apply_caption_transforms,
        drop_captions,
        threshold_keep_mask,
        tokenizer_words,
    )
    from .monitoring import MemorizationCheck, MemorizationMonitor
    from .trainer import MemControlTrainer
    from .validation import ValidationImages, ValidationRound


__all__ = [
    "EncodingCache",
    "CaptionWordRepetition",
    "ImageCaptionDataset",
    "MemControlTrainer",
    "MemorizationCheck",
    "MemorizationMonitor",
    "ModelFamily",
    "ProxySet",
    "RandomWordAddition",
    "RandomWordReplacement",
    "StableDiffusionFamily",
    "StepBatchSampler",
    "TrainingConfig",
    "TrainingResult",
    "ValidationImages",
    "ValidationRound",
    "add_config_arguments",
    "apply_caption_transforms",
    "build_proxy_set",
    "check_ema_method",
    "collate_image_captions",
    "config_from_args",
    "drop_captions",
    "image_to_tensor",
    "load_training_dataset",
    "resolve_training_length",
    "threshold_keep_mask",
    "tokenizer_words",
    "update_steps_per_epoch",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    __all__,
    ("arguments", "config", "data", "encodings", "families", "mitigations", "monitoring", "trainer", "validation"),
)
