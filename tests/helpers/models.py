"""Tiny real diffusers models in the SD-1.5, SDXL, DiT, PixArt, SD3 and FLUX layouts (random weights, fixed seeds)
and their inputs.

The SD-1.5 parts are built from the shipped tiny pipeline's configs (`peft_memcontrol.tiny_sd`); the other layouts
have no shipped model, so their tiny configs live here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTTransformer2DModel,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from peft_memcontrol import DiffFitConfig, Mask, MaskedAttentionConfig, MemControlConfig, SVDiffConfig, get_layout
from peft_memcontrol.tiny_sd import TINY_TEXT_ENCODER_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG


#: An SDXL-shaped UNet: no attention in the first block, 1-2-3 transformer layers, text-time added conditioning.
TINY_SDXL_UNET_CONFIG: dict[str, Any] = {
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

#: A class-conditional DiT with 3 transformer blocks on 8 x 8 latents.
TINY_DIT_CONFIG: dict[str, Any] = {
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


#: A PixArt-alpha transformer: 2 BasicTransformerBlocks with cross-attention, AdaLayerNorm-single conditioning.
TINY_PIXART_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "in_channels": 4,
    "out_channels": 8,
    "cross_attention_dim": 16,
    "caption_channels": 16,
    "norm_num_groups": 8,
}

#: An SD3 MMDiT: 2 joint blocks (the last one's text stream is pre-only: no text output projection or feed-forward).
TINY_SD3_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 16,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 8,
    "out_channels": 4,
}

#: A FLUX transformer: 1 joint (double-stream) block and 2 single-stream blocks, on packed 16-token latents.
TINY_FLUX_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 16,
    "pooled_projection_dim": 8,
    "axes_dims_rope": (2, 2, 4),
}


def build_sd15_unet(seed: int = 0) -> UNet2DConditionModel:
    """The shipped tiny pipeline's UNet (SD-1.5's 16-slot layout, 2.45 M parameters) with seeded random weights."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET_CONFIG).eval()


def build_sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """The tiny SDXL-shaped UNet with seeded random weights."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_SDXL_UNET_CONFIG).eval()


def build_dit(seed: int = 0) -> DiTTransformer2DModel:
    """The tiny DiT with seeded random weights."""
    torch.manual_seed(seed)
    return DiTTransformer2DModel(**TINY_DIT_CONFIG).eval()


def sd15_inputs(batch: int = 2, seed: int = 1) -> dict[str, Any]:
    """Seeded keyword inputs of `build_sd15_unet`'s UNet: 16 x 16 latents and a 7-token text embedding."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, 16, 16, generator=generator),
        "timestep": torch.tensor([10, 500][:batch] + [3] * max(0, batch - 2)),
        "encoder_hidden_states": torch.randn(batch, 7, 32, generator=generator),
    }


def sdxl_inputs(batch: int = 2, seed: int = 1) -> dict[str, Any]:
    """`sd15_inputs` plus SDXL's added conditioning (pooled text embeddings and time ids)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = sd15_inputs(batch, seed)
    inputs["added_cond_kwargs"] = {
        "text_embeds": torch.randn(batch, 8, generator=generator),
        "time_ids": torch.randn(batch, 6, generator=generator),
    }
    return inputs


def dit_inputs(batch: int = 2, seed: int = 1) -> dict[str, Any]:
    """Seeded keyword inputs of `build_dit`'s model: 8 x 8 latents and class labels."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=generator),
        "timestep": torch.tensor([10, 500][:batch]),
        "class_labels": torch.tensor([1, 3][:batch]),
    }


def build_pixart(seed: int = 0) -> PixArtTransformer2DModel:
    """The tiny PixArt transformer with seeded random weights."""
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(**TINY_PIXART_CONFIG).eval()


def build_sd3(seed: int = 0) -> SD3Transformer2DModel:
    """The tiny SD3 transformer with seeded random weights."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(**TINY_SD3_CONFIG).eval()


def build_flux(seed: int = 0) -> FluxTransformer2DModel:
    """The tiny FLUX transformer with seeded random weights."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY_FLUX_CONFIG).eval()


def pixart_inputs(batch: int = 2, seed: int = 1) -> dict[str, Any]:
    """Seeded keyword inputs of `build_pixart`'s model: 8 x 8 latents and a 5-token caption embedding."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=generator),
        "timestep": torch.tensor([10, 500][:batch]),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


def sd3_inputs(batch: int = 2, seed: int = 1) -> dict[str, Any]:
    """Seeded keyword inputs of `build_sd3`'s model: 8 x 8 latents, a 5-token text embedding and a pooled one."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=generator),
        "pooled_projections": torch.randn(batch, 8, generator=generator),
        "timestep": torch.tensor([10, 500][:batch]),
    }


def flux_inputs(batch: int = 2, seed: int = 1) -> dict[str, Any]:
    """Seeded keyword inputs of `build_flux`'s model: 16 packed latent tokens, 5 text tokens, their position ids."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 16, 4, generator=generator),
        "encoder_hidden_states": torch.randn(batch, 5, 16, generator=generator),
        "pooled_projections": torch.randn(batch, 8, generator=generator),
        "timestep": torch.tensor([0.01, 0.5][:batch]),
        "img_ids": torch.stack(
            torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1
        ).reshape(16, 3),
        "txt_ids": torch.zeros(5, 3),
    }


#: The transformers whose blocks are found by type (joint attention, single-stream blocks), for their own tests.
TRANSFORMERS: dict[str, tuple[Callable[..., nn.Module], Callable[..., dict[str, Any]]]] = {
    "pixart": (build_pixart, pixart_inputs),
    "sd3": (build_sd3, sd3_inputs),
    "flux": (build_flux, flux_inputs),
}


#: Architecture name -> (model builder, input builder), for tests that run on every tiny architecture.
MODELS: dict[str, tuple[Callable[..., nn.Module], Callable[..., dict[str, Any]]]] = {
    "sd15": (build_sd15_unet, sd15_inputs),
    "sdxl": (build_sdxl_unet, sdxl_inputs),
    "dit": (build_dit, dit_inputs),
}


def run(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The model's output sample for keyword ``inputs``, without gradients."""
    with torch.no_grad():
        return model(**inputs).sample


def ignore_text(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Zeroes the output projection of every cross-attention, so the UNet's output no longer depends on the text."""
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.zero_()
    return unet


def build_text_encoder(seed: int = 0) -> CLIPTextModel:
    """The shipped tiny pipeline's CLIP text encoder (hidden size 32, 2 layers, 4 heads) with seeded random weights."""
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**TINY_TEXT_ENCODER_CONFIG)).eval()


def build_vae(seed: int = 0) -> AutoencoderKL:
    """The shipped tiny pipeline's VAE (32 px images <-> 4 x 16 x 16 latents) with seeded random weights."""
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE_CONFIG).eval()


def byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with only byte-level symbols (no merges) and CLIP's special-token ids, built in memory."""
    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: index for index, symbol in enumerate(symbols + [symbol + "</w>" for symbol in symbols])}
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_random_pipeline(seed: int = 0, text_blind: bool = False) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of the shipped tiny architecture with random weights; it generates 32 x 32 images.

    It differs from `peft_memcontrol.tiny_sd.build_random_tiny_pipeline`, and the metrics tests' numbers depend on
    the differences: every part is seeded with ``seed`` on its own (not one seed for the whole build), the tokenizer
    is `byte_level_tokenizer`, and the scheduler is diffusers' default DDIM schedule, not SD-1.5's.

    Args:
        seed: seeds the weights of each part.
        text_blind: if true, the UNet ignores the prompt (see `ignore_text`).
    """
    unet = build_sd15_unet(seed)
    if text_blind:
        ignore_text(unet)
    pipeline = StableDiffusionPipeline(
        vae=build_vae(seed),
        text_encoder=build_text_encoder(seed),
        tokenizer=byte_level_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=1000),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


#: Each of the four methods with random adapter values (masked attention on the projections only; MemControl: DiffFit
#: on 8 of the tiny SD-1.5 UNet's 16 slots), for tests that load, save and compare adapters.
RANDOM_ADAPTERS: dict[str, Callable[[], Any]] = {
    "svdiff": lambda: SVDiffConfig(init_weights=False),
    "difffit": lambda: DiffFitConfig(init_weights=False),
    "masked_attention": lambda: MaskedAttentionConfig(init_weights=False, attention_only=True),
    "memcontrol": lambda: MemControlConfig(
        method="difffit",
        init_weights=False,
        mask=Mask.from_bits([1, 0] * 8, get_layout("sd15-reference-16").genome),
    ),
}
