"""The one way images become diffusion latents: VAE posterior (sampled or its mode), shifted and scaled.

Training samples the posterior, as diffusers' training scripts do; metrics take its mode (the mean), so that a score
does not depend on a random draw. Both then map the VAE's latents into the denoiser's space with the VAE config's
``shift_factor`` (SD3/Flux VAEs; absent or ``None`` elsewhere) and ``scaling_factor``.
"""

from __future__ import annotations

import torch


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
    latent_dist = vae.encode(pixel_values).latent_dist
    latents = latent_dist.mean
    if sample_posterior:
        eps = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        latents = latents + latent_dist.std * eps
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor
