"""The embedded tiny Stable-Diffusion-shaped pipeline: the project's offline default model.

It has the SD v1.5 UNet slot layout (16 ``Transformer2DModel`` slots) at a size a CPU trains in seconds, the real
CLIP tokenizer vocabulary, and pretrained weights shipped inside the package (``assets/tiny-sd``, the diffusers folder
layout). ``scripts/build_tiny_pipeline.py`` reproduces the weights from real images shipped in pip packages.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


#: Folder name of the shipped pipeline inside ``peft_memcontrol/tiny_sd/assets``.
TINY_PIPELINE_DIRNAME = "tiny-sd"

#: UNet config: the SD v1.5 block layout at toy width (2.45 M parameters).
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (32, 32, 64, 64),
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}

#: VAE config: one downsampling step, so 32 x 32 images <-> 4 x 16 x 16 latents.
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (32, 64),
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
}

#: CLIP text encoder config: CLIP's vocabulary and special ids, toy width.
TINY_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
    "projection_dim": 32,
}

#: Noise schedule of SD v1.5 (scaled linear betas), used for training (DDPM) and sampling (DDIM).
TINY_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def tiny_pipeline_path() -> str:
    """Return the folder of the shipped tiny pipeline (loadable with ``StableDiffusionPipeline.from_pretrained``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", TINY_PIPELINE_DIRNAME)


def load_tiny_pipeline(torch_dtype: torch.dtype = torch.float32, device: str | torch.device | None = None):
    """Load the shipped tiny pipeline through the ordinary ``StableDiffusionPipeline.from_pretrained`` path.

    The weights are stored in float16 to keep the package small; they are loaded as ``torch_dtype`` (float32 by
    default, which is what CPU training wants).
    """
    path = tiny_pipeline_path()
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(
            f"The tiny pipeline is missing at {path}. Rebuild it with `python scripts/build_tiny_pipeline.py`."
        )
    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype)
    pipe.tokenizer.model_max_length = TINY_TEXT_ENCODER_CONFIG["max_position_embeddings"]
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


def build_tiny_tokenizer(tokenizer_dir: str):
    """Load the CLIP tokenizer from a folder holding ``vocab.json`` and ``merges.txt`` (CLIP's real BPE)."""
    return CLIPTokenizer(
        vocab=os.path.join(tokenizer_dir, "vocab.json"),
        merges=os.path.join(tokenizer_dir, "merges.txt"),
        model_max_length=TINY_TEXT_ENCODER_CONFIG["max_position_embeddings"],
    )


def build_random_tiny_pipeline(tokenizer, seed: int = 0):
    """Build the tiny pipeline with seeded random weights (the starting point of the pretraining script).

    Args:
        tokenizer (CLIPTokenizer): a CLIP tokenizer (see `build_tiny_tokenizer`).
        seed: seeds the weight initialisation, so that the build is reproducible.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_ENCODER_CONFIG))
    scheduler = DDIMScheduler(**TINY_SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
