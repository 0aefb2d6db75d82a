"""Fine-tuning with masks: the project's one training loop, its data conventions and the memorization mitigations."""

from .data import (
    ImageCaptionDataset,
    ProxySet,
    StepBatchSampler,
    build_proxy_set,
    collate_image_captions,
    image_to_tensor,
    load_training_dataset,
)
from .mitigations import (
    CaptionWordRepetition,
    RandomWordAddition,
    RandomWordReplacement,
    apply_caption_transforms,
    drop_captions,
    threshold_keep_mask,
    tokenizer_words,
)
from .trainer import MemControlTrainer, TrainingConfig, TrainingResult, train_text_to_image


__all__ = [
    "CaptionWordRepetition",
    "ImageCaptionDataset",
    "MemControlTrainer",
    "ProxySet",
    "RandomWordAddition",
    "RandomWordReplacement",
    "StepBatchSampler",
    "TrainingConfig",
    "TrainingResult",
    "apply_caption_transforms",
    "build_proxy_set",
    "collate_image_captions",
    "drop_captions",
    "image_to_tensor",
    "load_training_dataset",
    "threshold_keep_mask",
    "tokenizer_words",
    "train_text_to_image",
]
