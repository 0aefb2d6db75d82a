"""Tiny real diffusers models and image fixtures for the metrics tests (built from configs, fixed seed, offline)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """The Stable-Diffusion-shaped 2.45 M-parameter UNet of the offline assets, random weights."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).eval()


def ignore_text(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Zeroes the output projection of every cross-attention, so the UNet's output no longer depends on the text."""
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.zero_()
    return unet


def tiny_text_encoder(seed: int = 0) -> CLIPTextModel:
    """CLIP text encoder with hidden size 32, 2 layers, 4 heads."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config).eval()


def byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with only byte-level symbols (no merges) and CLIP's special-token ids, built in memory."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: index for index, symbol in enumerate(symbols + [symbol + "</w>" for symbol in symbols])}
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """AutoencoderKL with block_out [32, 64], 4 latent channels: 32 px images <-> 16 px latents."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
    ).eval()


def tiny_pipeline(seed: int = 0, text_blind: bool = False) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of the tiny parts that generates 32 x 32 images."""
    unet = tiny_unet(seed)
    if text_blind:
        ignore_text(unet)
    pipeline = StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(seed),
        tokenizer=byte_level_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=1000),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
