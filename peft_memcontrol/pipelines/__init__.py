"""The embedded offline pipeline (a tiny Stable Diffusion that ships with the package) and the demo data set."""

from .demo_data import DemoDataset, build_demo_dataset
from .tiny import (
    TINY_SCHEDULER_CONFIG,
    TINY_TEXT_ENCODER_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    build_random_tiny_pipeline,
    build_tiny_tokenizer,
    load_tiny_pipeline,
    tiny_pipeline_path,
)


__all__ = [
    "TINY_SCHEDULER_CONFIG",
    "TINY_TEXT_ENCODER_CONFIG",
    "TINY_UNET_CONFIG",
    "TINY_VAE_CONFIG",
    "DemoDataset",
    "build_demo_dataset",
    "build_random_tiny_pipeline",
    "build_tiny_tokenizer",
    "load_tiny_pipeline",
    "tiny_pipeline_path",
]
