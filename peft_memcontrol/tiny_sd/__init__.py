"""The embedded tiny Stable Diffusion: the project's offline default model, shipped with the package
(``assets/tiny-sd``, the diffusers folder layout)."""

from .pipeline import (
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
    "build_random_tiny_pipeline",
    "build_tiny_tokenizer",
    "load_tiny_pipeline",
    "tiny_pipeline_path",
]
