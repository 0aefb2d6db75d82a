"""Noise-norm score and memorization reward on tiny real diffusers models."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from peft_memcontrol.metrics import (
    MemorizationReward,
    memorization_reward,
    noise_norm_score,
    pipeline_memorization_reward,
    sampling_noise_norm,
    text_conditional_noise_norm,
    training_noise_norms,
)

from helpers.models import build_random_pipeline, build_sd15_unet, ignore_text


@pytest.fixture(scope="module")
def unet():
    return build_sd15_unet()


def batch(seed=0, size=3):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(size, 4, 16, 16, generator=generator)
    text = torch.randn(size, 77, 32, generator=generator)
    uncond = torch.randn(1, 77, 32, generator=generator)
    return latents, text, uncond


def test_noise_norm_equals_two_separate_predictions(unet):
    latents, text, uncond = batch()
    timesteps = torch.tensor([10, 500, 990])
    with torch.no_grad():
        conditional = unet(latents, timesteps, encoder_hidden_states=text).sample
        unconditional = unet(latents, timesteps, encoder_hidden_states=uncond.expand(3, -1, -1)).sample
    expected = [(c - u).pow(2).sum().sqrt().item() for c, u in zip(conditional, unconditional)]
    norms = text_conditional_noise_norm(unet, latents, timesteps, text, uncond)
    assert norms.tolist() == pytest.approx(expected, rel=1e-4)
    assert (norms > 0).all()


def test_a_unet_that_ignores_text_scores_zero():
    blind = ignore_text(build_sd15_unet())
    latents, text, uncond = batch()
    assert text_conditional_noise_norm(blind, latents, torch.tensor(400), text, uncond).abs().max().item() < 1e-6
    reward = memorization_reward(blind, DDPMScheduler(), latents, text, uncond)
    assert reward.item() < 1e-6


def test_reward_reduces_the_per_sample_norms_by_max_or_mean(unet):
    latents, text, uncond = batch(1)
    scheduler = DDPMScheduler()
    norms = training_noise_norms(unet, scheduler, latents, text, uncond, torch.Generator().manual_seed(3))
    for reduction, expected in [("max", norms.max()), ("mean", norms.mean())]:
        reward = memorization_reward(
            unet, scheduler, latents, text, uncond, reduction, generator=torch.Generator().manual_seed(3)
        )
        assert reward.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not torch.is_grad_enabled() or not norms.requires_grad
    metric = MemorizationReward(reduction="mean")
    rewards = []
    for seed in (4, 5):
        metric.update(unet, scheduler, latents, text, uncond, generator=torch.Generator().manual_seed(seed))
        rewards.append(
            memorization_reward(unet, scheduler, latents, text, uncond, "mean", torch.Generator().manual_seed(seed))
        )
    assert metric.compute().item() == pytest.approx(torch.stack(rewards).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        MemorizationReward(reduction="median")


def test_sampling_noise_norm_equals_a_hand_written_loop(unet):
    latents, text, uncond = batch(2, size=2)
    scheduler = DDIMScheduler()  # deterministic steps
    scheduler.set_timesteps(10)
    scores = sampling_noise_norm(unet, scheduler, latents, text, uncond, num_steps=2, guidance_scale=3.0)
    sample, total = latents.clone(), torch.zeros(2)
    with torch.no_grad():
        for timestep in scheduler.timesteps[:2]:
            conditional = unet(sample, timestep, encoder_hidden_states=text).sample
            unconditional = unet(sample, timestep, encoder_hidden_states=uncond.expand(2, -1, -1)).sample
            total += torch.stack([(c - u).pow(2).sum().sqrt() for c, u in zip(conditional, unconditional)])
            sample = scheduler.step(unconditional + 3.0 * (conditional - unconditional), timestep, sample).prev_sample
    torch.testing.assert_close(scores, total / 2, rtol=1e-4, atol=1e-5)


def test_pipeline_conveniences_are_zero_for_a_text_blind_pipeline_and_positive_otherwise():
    prompts, images = ["a cat", "a dog"], torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blind, seeing = build_random_pipeline(text_blind=True), build_random_pipeline()
    options = {"num_generations": 2, "num_steps": 2, "num_inference_steps": 5}
    assert noise_norm_score(blind, prompts, **options).abs().max().item() < 1e-6
    scores = noise_norm_score(seeing, prompts, **options)
    assert scores.shape == (2,) and (scores > 0).all()
    assert pipeline_memorization_reward(blind, prompts, images).item() < 1e-6
    assert pipeline_memorization_reward(seeing, prompts, images).item() > 0


def test_noise_norm_score_starts_from_latents_of_the_requested_image_size():
    """At height x width pixels the score is the detector on (height / f) x (width / f) latents, f the VAE factor."""
    pipeline = build_random_pipeline()
    factor = pipeline.vae_scale_factor
    height, width = 16 * factor, 8 * factor  # the tiny UNet's native latents are 16 x 16
    scores = noise_norm_score(
        pipeline,
        ["a cat"],
        num_generations=2,
        num_steps=1,
        num_inference_steps=5,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        height=height,
        width=width,
    )
    text, uncond = pipeline.encode_prompt("a cat", "cpu", 2, do_classifier_free_guidance=True)
    pipeline.scheduler.set_timesteps(5)
    latents = torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(0))
    expected = sampling_noise_norm(
        pipeline.unet, pipeline.scheduler, latents * pipeline.scheduler.init_noise_sigma, text, uncond, 1, 3.0
    )
    torch.testing.assert_close(scores, expected.mean().view(1), rtol=1e-5, atol=1e-6)
    pipeline.scheduler.set_timesteps(7)
    noise_norm_score(pipeline, ["a cat"], num_generations=1, num_inference_steps=5)
    assert len(pipeline.scheduler.timesteps) == 7  # the pipeline's scheduler is left as it was
    with pytest.raises(ValueError, match="multiples of the VAE's factor"):
        noise_norm_score(pipeline, ["a cat"], height=height + 1)


def test_pipeline_reward_scores_the_posterior_mean_shifted_and_scaled():
    """The reward encodes images one way with the trainer (`encode_latents`), taking the mode: no random draw."""
    pipeline = build_random_pipeline()
    pipeline.vae.register_to_config(shift_factor=0.5)
    prompts, images = ["a cat", "a dog"], torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reward = pipeline_memorization_reward(pipeline, prompts, images, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mean = pipeline.vae.encode(images * 2.0 - 1.0).latent_dist.mean
        text, uncond = pipeline.encode_prompt(prompts, "cpu", 1, do_classifier_free_guidance=True)
        expected = memorization_reward(
            pipeline.unet,
            pipeline.scheduler,
            (mean - 0.5) * pipeline.vae.config.scaling_factor,
            text,
            uncond,
            generator=torch.Generator().manual_seed(1),
        )
    torch.testing.assert_close(reward, expected)
