"""The one way images become diffusion latents: VAE posterior (sampled or its mode), shifted and scaled.

Training samples the posterior, as diffusers' training scripts do; metrics take its mode (the mean), so that a score
does not depend on a random draw. Both then map the VAE's latents into the denoiser's space with the VAE config's
``shift_factor`` (SD3/Flux VAEs; absent or ``None`` elsewhere) and ``scaling_factor``.
"""

from __future__ import annotations

from typing import Any

import torch


def posterior_moments(vae: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard deviation of the VAE's posterior for ``pixel_values`` (in [-1, 1]): the costly part of
    `encode_latents`, which a training run on fixed data may compute once and keep (`EncodingCache`)."""
    latent_dist = vae.encode(pixel_values).latent_dist
    return latent_dist.mean, latent_dist.std


def latents_from_posterior(
    mean: torch.Tensor,
    std: torch.Tensor,
    vae_config: Any,
    sample_posterior: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`encode_latents` from posterior moments: the mean or a draw ``mean + std * eps``, shifted and scaled."""
    latents = mean
    if sample_posterior:
        eps = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        latents = latents + std * eps
    shift = getattr(vae_config, "shift_factor", None) or 0.0
    return (latents - shift) * vae_config.scaling_factor


def encode_latents(
    vae: torch.nn.Module,
    pixel_values: torch.Tensor,
    sample_posterior: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Latents of ``pixel_values`` (in [-1, 1], on the VAE's device and dtype) in the denoiser's space.

    Args:
        vae: a diffusers VAE whose ``encode`` returns a ``latent_dist`` (``AutoencoderKL`` and its relatives).
        pixel_values: (B, 3, H, W) images.
        sample_posterior: ``True`` draws ``mean + std * eps`` (training); ``False`` takes the mean (scoring).
        generator: the generator of ``eps``. The draw is made in float32 on the CPU and then moved, so the same
            seed gives the same latents on any device and in any precision.

    Returns:
        ``(z - shift_factor) * scaling_factor``, in the VAE's dtype.
    """
    mean, std = posterior_moments(vae, pixel_values)
    return latents_from_posterior(mean, std, vae.config, sample_posterior, generator)
