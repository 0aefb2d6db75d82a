"""Shared fixtures: tiny real diffusers models in the SD-1.5, SDXL and DiT layouts (random weights, fixed seeds)."""

from __future__ import annotations

import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models gain nothing from threads, and OpenMP spinning makes them many times slower on a busy 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# imported after HF_HUB_OFFLINE is set: huggingface_hub reads it once, at import
from peft_memcontrol.tiny_sd import TINY_UNET_CONFIG  # noqa: E402


TINY_SD15_UNET = TINY_UNET_CONFIG  # the embedded tiny pipeline's UNet: SD-1.5's 16-slot layout, 2.45 M parameters

TINY_SDXL_UNET = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (32, 64, 64),
    "norm_num_groups": 8,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4, 8),
    "cross_attention_dim": 32,
    "transformer_layers_per_block": (1, 2, 3),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 56,
}

TINY_DIT = {
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 3,
    "norm_num_groups": 8,
    "sample_size": 8,
    "patch_size": 2,
    "num_embeds_ada_norm": 10,
    "norm_type": "ada_norm_zero",
}


def build_sd15_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_SD15_UNET).eval()


def build_sdxl_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_SDXL_UNET).eval()


def build_dit(seed: int = 0):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(**TINY_DIT).eval()


def sd15_inputs(batch: int = 2, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, 16, 16, generator=generator),
        "timestep": torch.tensor([10, 500][:batch] + [3] * max(0, batch - 2)),
        "encoder_hidden_states": torch.randn(batch, 7, 32, generator=generator),
    }


def sdxl_inputs(batch: int = 2, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    inputs = sd15_inputs(batch, seed)
    inputs["added_cond_kwargs"] = {
        "text_embeds": torch.randn(batch, 8, generator=generator),
        "time_ids": torch.randn(batch, 6, generator=generator),
    }
    return inputs


def dit_inputs(batch: int = 2, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=generator),
        "timestep": torch.tensor([10, 500][:batch]),
        "class_labels": torch.tensor([1, 3][:batch]),
    }


MODELS = {
    "sd15": (build_sd15_unet, sd15_inputs),
    "sdxl": (build_sdxl_unet, sdxl_inputs),
    "dit": (build_dit, dit_inputs),
}


def run(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


@pytest.fixture(params=sorted(MODELS))
def tiny_model(request):
    """(architecture name, model, inputs) for each tiny architecture."""
    build, inputs = MODELS[request.param]
    return request.param, build(), inputs()
