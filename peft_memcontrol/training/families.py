"""The model-specific side of a training step: how a model family encodes prompts and images, and its pipeline.

`MemControlTrainer` runs the same loop for any text-to-image denoiser; what differs between model families sits
behind `ModelFamily`. `StableDiffusionFamily` is the implementation for Stable Diffusion 1.x/2.x (one CLIP text
encoder, a KL VAE, ``StableDiffusionPipeline``), the family the trainer builds from its constructor's parts. Slots and
parameter counts already cover SDXL and DiT; training them needs a further implementation each:

* SDXL: two text encoders whose hidden states are concatenated, and ``extra_unet_inputs`` carrying
  ``added_cond_kwargs`` (the pooled text embedding and the size/crop ``time_ids``); ``StableDiffusionXLPipeline``.
* DiT/PixArt-style transformers: a T5 encoder with an attention mask among the extra inputs; their own pipeline.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from ..latents import latents_from_posterior, posterior_moments
from .accelerator import move_module
from .encodings import EncodingCache


class ModelFamily(ABC):
    """How one family of text-to-image models conditions its denoiser, makes latents and builds a pipeline.

    Implementations hold the family's frozen parts (VAE, text encoders, tokenizers), already on the training device
    and in the training dtype, with gradients off.
    """

    @abstractmethod
    def encode_prompts(self, captions: Sequence[str]) -> torch.Tensor:
        """The denoiser's ``encoder_hidden_states`` for ``captions`` (computed without gradients)."""

    @abstractmethod
    def encode_images(self, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training latents of ``pixel_values`` (B x 3 x H x W in [-1, 1]): a posterior sample drawn with
        ``generator``, in the denoiser's latent space (`peft_memcontrol.latents.encode_latents`)."""

    @abstractmethod
    def extra_unet_inputs(self, captions: Sequence[str], latents: torch.Tensor) -> dict[str, Any]:
        """Keyword inputs of the denoiser besides the latents, timesteps and ``encoder_hidden_states``."""

    @abstractmethod
    def pipeline(self, unet: torch.nn.Module, scheduler: Any, pipeline_cls: type | None = None) -> Any:
        """A text-to-image pipeline of this family running ``unet`` with ``scheduler``."""


class StableDiffusionFamily(ModelFamily):
    """Stable Diffusion 1.x/2.x: one CLIP text encoder (prompts padded to its maximum length), a KL VAE.

    Args:
        vae: the ``AutoencoderKL``; frozen, moved to ``device`` and cast to ``dtype``.
        text_encoder: the ``CLIPTextModel``; frozen, moved to ``device`` and cast to ``dtype``.
        tokenizer: its ``CLIPTokenizer``.
        device: the training device.
        dtype: the dtype of the frozen parts (the mixed-precision dtype, as in diffusers' scripts).
        encodings: a cache of the frozen encoders' outputs shared by trainings on the same data (`EncodingCache`);
            ``None`` encodes every batch.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        device: torch.device,
        dtype: torch.dtype,
        encodings: EncodingCache | None = None,
    ) -> None:
        if tokenizer.model_max_length is None or tokenizer.model_max_length > 100_000:
            # A tokenizer folder without tokenizer_config.json does not know CLIP's 77: take the text encoder's.
            tokenizer.model_max_length = text_encoder.config.max_position_embeddings
        for module in (vae, text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.vae = move_module(vae, device, dtype)
        self.text_encoder = move_module(text_encoder, device, dtype)
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.encodings = encodings

    @torch.no_grad()
    def encode_prompts(self, captions: Sequence[str]) -> torch.Tensor:
        if self.encodings is None:
            return self._encode_prompts(captions)
        context = (str(self.device), str(self.dtype))
        return self.encodings.prompts(captions, context, lambda: self._encode_prompts(captions))

    def _encode_prompts(self, captions: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=int(self.tokenizer.model_max_length),
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids, return_dict=False)[0]

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pixel_values = pixel_values.to(self.device, dtype=self.dtype)
        if self.encodings is None:
            mean, std = posterior_moments(self.vae, pixel_values)
        else:
            mean, std = self.encodings.posterior(pixel_values, lambda: posterior_moments(self.vae, pixel_values))
        return latents_from_posterior(mean, std, self.vae.config, sample_posterior=True, generator=generator)

    def extra_unet_inputs(self, captions: Sequence[str], latents: torch.Tensor) -> dict[str, Any]:
        return {}

    def pipeline(self, unet: torch.nn.Module, scheduler: Any, pipeline_cls: type | None = None) -> Any:
        """A ``StableDiffusionPipeline`` (or ``pipeline_cls``, which takes the same parts) without safety checker."""
        pipe = (pipeline_cls or StableDiffusionPipeline)(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
