"""Text-conditional noise norm (Wen et al. 2024, "Detecting, Explaining, and Mitigating Memorization in Diffusion
Models"): how strongly the prompt steers the denoiser.

For a noisy latent x_t the score is || eps(x_t, t, c) - eps(x_t, t, "") ||_2, the L2 norm of the difference of the
text-conditional and unconditional noise predictions over all latent values. Memorized prompts pull the sample
hard towards one image, so their score is high; a UNet that ignores its text input scores exactly 0. Higher = more
memorization. Two uses:

* the **detector** (`sampling_noise_norm`, `noise_norm_score`): average the score over the first
  ``num_steps`` sampling steps from pure noise, and over generations, per prompt;
* the **training-time reward** (`training_noise_norms`, `memorization_reward`,
  `MemorizationReward`): one step at a random timestep on noised training latents, reduced by max (default)
  or mean over the batch. It runs under ``no_grad`` and uses the captions as given: no caption dropout.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torchmetrics import Metric
from tqdm.auto import tqdm

from ..latents import encode_latents
from .images import prepare_images


Reduction = Literal["max", "mean"]


def _noise_predictions(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    text_embeddings: torch.Tensor,
    uncond_embeddings: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """eps(x_t, t, c) and eps(x_t, t, "") from one UNet call on the doubled batch."""
    batch = latents.shape[0]
    timesteps = torch.as_tensor(timesteps, device=latents.device).expand(batch)
    prediction = unet(
        torch.cat([latents, latents]),
        torch.cat([timesteps, timesteps]),
        encoder_hidden_states=torch.cat([text_embeddings, uncond_embeddings.expand(batch, -1, -1)]),
    ).sample
    conditional, unconditional = prediction.chunk(2)
    return conditional, unconditional


def _difference_norm(conditional: torch.Tensor, unconditional: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of the difference, over all latent values, in float32."""
    return (conditional.float() - unconditional.float()).flatten(1).norm(dim=1)


@torch.no_grad()
def text_conditional_noise_norm(
    unet: torch.nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    text_embeddings: torch.Tensor,
    uncond_embeddings: torch.Tensor,
) -> torch.Tensor:
    """|| eps(x_t, t, c) - eps(x_t, t, "") ||_2 per sample.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (or anything with its call signature and ``.sample`` output).
        noisy_latents: (B, C, H, W) x_t.
        timesteps: (B,) or scalar timesteps.
        text_embeddings: (B, L, D) prompt embeddings.
        uncond_embeddings: (B, L, D) or (1, L, D) embeddings of the empty prompt.

    Returns:
        (B,) float32 norms.
    """
    return _difference_norm(*_noise_predictions(unet, noisy_latents, timesteps, text_embeddings, uncond_embeddings))


def _reduce(norms: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Max or mean over the batch."""
    if reduction == "max":
        return norms.max()
    if reduction == "mean":
        return norms.mean()
    raise ValueError(f"reduction must be 'max' or 'mean', got '{reduction}'.")


@torch.no_grad()
def training_noise_norms(
    unet: torch.nn.Module,
    noise_scheduler: Any,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    uncond_embeddings: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample noise norms of a training batch: noise clean latents at a random timestep each, score them.

    ``latents`` are VAE latents in the denoiser's space (`peft_memcontrol.latents.encode_latents`), as in a
    training step; ``noise_scheduler`` is the training scheduler (``add_noise`` and
    ``config.num_train_timesteps``). Also the signal of Wen et al.'s training-time filtering mitigation.
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device
    )
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    return text_conditional_noise_norm(unet, noisy_latents, timesteps, text_embeddings, uncond_embeddings)


def memorization_reward(
    unet: torch.nn.Module,
    noise_scheduler: Any,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    uncond_embeddings: torch.Tensor,
    reduction: Reduction = "max",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The search's memorization reward on one batch: `training_noise_norms` reduced by max or mean."""
    norms = training_noise_norms(unet, noise_scheduler, latents, text_embeddings, uncond_embeddings, generator)
    return _reduce(norms, reduction)


class MemorizationReward(Metric):
    """The memorization reward averaged over batches: each ``update`` adds one batch's max (or mean) noise norm.

    Batches are per process; the sum and count are summed across processes.
    """

    is_differentiable = False
    higher_is_better = False  # higher = more memorization
    full_state_update = False

    def __init__(self, reduction: Reduction = "max", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _reduce(torch.zeros(1), reduction)  # validates the name early
        self.reduction = reduction
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("batches", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        unet: torch.nn.Module,
        noise_scheduler: Any,
        latents: torch.Tensor,
        text_embeddings: torch.Tensor,
        uncond_embeddings: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> None:
        """Scores one batch (see `memorization_reward`)."""
        reward = memorization_reward(
            unet, noise_scheduler, latents, text_embeddings, uncond_embeddings, self.reduction, generator
        )
        self.total += reward.double().to(self.device)
        self.batches += 1

    def compute(self) -> torch.Tensor:
        """Mean of the batch rewards."""
        if self.batches == 0:
            raise RuntimeError("MemorizationReward.compute() called before any update().")
        return self.total / self.batches


@torch.no_grad()
def sampling_noise_norm(
    unet: torch.nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    uncond_embeddings: torch.Tensor,
    num_steps: int = 1,
    guidance_scale: float = 7.5,
) -> torch.Tensor:
    """Wen et al.'s detector on a batch: the noise norm averaged over the first ``num_steps`` sampling steps.

    ``scheduler`` must have had ``set_timesteps`` called; ``latents`` are initial noise scaled by
    ``scheduler.init_noise_sigma``. Between steps the sample follows classifier-free guidance with
    ``guidance_scale``, as in generation. Returns (B,) scores.
    """
    timesteps = scheduler.timesteps[:num_steps]
    if len(timesteps) == 0:
        raise ValueError("num_steps must be at least 1 and the scheduler must have timesteps (call set_timesteps).")
    total = torch.zeros(latents.shape[0], device=latents.device)
    for timestep in timesteps:
        model_input = scheduler.scale_model_input(latents, timestep)
        conditional, unconditional = _noise_predictions(
            unet, model_input, timestep, text_embeddings, uncond_embeddings
        )
        total += _difference_norm(conditional, unconditional)
        guided = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(guided, timestep, latents).prev_sample
    return total / len(timesteps)


@torch.no_grad()
def noise_norm_score(
    pipeline: Any,
    prompts: Sequence[str],
    num_generations: int = 4,
    num_steps: int = 1,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Wen et al.'s per-prompt memorization score from a Stable-Diffusion-style pipeline: for each prompt, the
    noise norm averaged over the first ``num_steps`` of ``num_inference_steps`` sampling steps and over
    ``num_generations`` starting noises. Returns (P,) scores; higher = more likely memorized.

    ``height`` and ``width`` are the image size in pixels, as in the pipeline's call (default: the UNet's native
    size); score a model at the size it was fine-tuned and generates at (e.g. 224 for the paper's SD-1.5 runs).
    ``progress`` shows a bar per prompt.
    """
    # a scheduler of our own: set_timesteps below must not change the pipeline's
    unet, scheduler = pipeline.unet, copy.deepcopy(pipeline.scheduler)
    device = unet.device
    scale = getattr(pipeline, "vae_scale_factor", 8)
    native = unet.config.sample_size * scale
    height, width = height or native, width or native
    if height % scale or width % scale:
        raise ValueError(f"height and width must be multiples of the VAE's factor {scale}, got {height} x {width}.")
    channels, latent_size = unet.config.in_channels, (height // scale, width // scale)
    scores = []
    for prompt in tqdm(prompts, desc="Noise-norm score", unit="prompt", disable=not progress):
        text_embeddings, uncond_embeddings = pipeline.encode_prompt(
            prompt, device, num_generations, do_classifier_free_guidance=True
        )
        scheduler.set_timesteps(num_inference_steps, device=device)
        latents = torch.randn(
            (num_generations, channels, *latent_size), generator=generator, device=device, dtype=text_embeddings.dtype
        )
        latents = latents * scheduler.init_noise_sigma
        norms = sampling_noise_norm(
            unet, scheduler, latents, text_embeddings, uncond_embeddings, num_steps, guidance_scale
        )
        scores.append(norms.mean())
    return torch.stack(scores)


@torch.no_grad()
def pipeline_memorization_reward(
    pipeline: Any,
    prompts: Sequence[str],
    images: Any,
    reduction: Reduction = "max",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`memorization_reward` from a pipeline, captions and their training images (library convention):
    images are encoded by the VAE (the posterior's mean, shifted and scaled:
    `peft_memcontrol.latents.encode_latents`), captions by the text encoder, and ``pipeline.scheduler`` serves as the
    noise scheduler.
    """
    device = pipeline.unet.device
    pixels = prepare_images(images).to(device, pipeline.vae.dtype) * 2.0 - 1.0
    latents = encode_latents(pipeline.vae, pixels)
    text_embeddings, uncond_embeddings = pipeline.encode_prompt(
        list(prompts), device, 1, do_classifier_free_guidance=True
    )
    return memorization_reward(
        pipeline.unet, pipeline.scheduler, latents, text_embeddings, uncond_embeddings, reduction, generator
    )
