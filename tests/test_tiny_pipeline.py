"""Tests of the embedded tiny pipeline: real CLIP tokenizer, SD v1.5 layout, shipped pretrained weights, demo set."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os

import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from peft_memcontrol.sample_data import build_faces_dataset, digit_samples
from peft_memcontrol.tiny_sd import load_tiny_pipeline, tiny_pipeline_path
from peft_memcontrol.training import image_to_tensor, load_training_dataset

from helpers.images import read_metadata
from helpers.models import build_sd15_unet


@pytest.fixture(scope="module")
def pipe():
    return load_tiny_pipeline()


def test_loads_through_stable_diffusion_pipeline_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = StableDiffusionPipeline.from_pretrained(tiny_pipeline_path())
    assert loaded.safety_checker is None
    assert type(loaded.unet).__name__ == "UNet2DConditionModel"


def test_known_prompts_give_clip_ids(pipe):
    tokenizer = pipe.tokenizer
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    with open(os.path.join(tiny_pipeline_path(), "tokenizer", "vocab.json")) as f:
        vocab = json.load(f)
    # Byte symbols first, then the same with </w>, then merges; the specials last.
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["<|startoftext|>"] == 49406
    for prompt in ("an astronaut riding a horse", "a handwritten digit seven", "the moon surface"):
        expected = [49406] + [vocab[word + "</w>"] for word in prompt.split()] + [49407]
        assert tokenizer(prompt).input_ids == expected
    padded = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert tokenizer.model_max_length == 77 and padded[:4] == [49406, 320, 2368, 49407]
    assert padded[4:] == [49407] * 73


def test_sd15_layout_and_size(pipe):
    slots = [name for name, module in pipe.unet.named_modules() if isinstance(module, Transformer2DModel)]
    assert len(slots) == 16
    assert sum(s.startswith("down_blocks") for s in slots) == 6
    assert sum(s.startswith("mid_block") for s in slots) == 1
    assert sum(s.startswith("up_blocks") for s in slots) == 9
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    assert 2_400_000 < n_params < 2_500_000
    assert pipe.text_encoder.config.vocab_size == 49408 and pipe.text_encoder.config.hidden_size == 32


def test_shipped_weights_are_small():
    total = 0
    for root, _, files in os.walk(tiny_pipeline_path()):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    assert total < 12 * 2**20


def test_generates_32px_images(pipe):
    images = pipe(
        ["a photo of a cat", "a handwritten digit seven"],
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (2, 32, 32, 3)
    assert images.std() > 0.02  # not a blank image


@pytest.mark.slow
def test_pretrained_unet_beats_random_init(pipe):
    """The shipped UNet denoises its pretraining domain far better than the same net with seeded random weights."""
    samples = digit_samples()[:32]
    images = torch.stack([image_to_tensor(image, None) for image, _ in samples])
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer([c for _, c in samples], padding="max_length", max_length=77, return_tensors="pt")
        text = pipe.text_encoder(ids.input_ids)[0]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(100, 900, (len(samples),), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        random_unet = build_sd15_unet(seed=0)
        trained = torch.nn.functional.mse_loss(pipe.unet(noisy, timesteps, text).sample, noise).item()
        untrained = torch.nn.functional.mse_loss(random_unet(noisy, timesteps, text).sample, noise).item()
        recon = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    assert trained < 0.6 * untrained
    assert torch.nn.functional.mse_loss(recon, images).item() < 0.03  # the VAE reconstructs


def test_demo_dataset_is_deterministic_with_exact_counts(tmp_path):
    demo = build_faces_dataset(str(tmp_path / "a"), num_test=20, num_memorization=10, memorization_repeats=10)
    again = build_faces_dataset(str(tmp_path / "b"), num_test=20, num_memorization=10, memorization_repeats=10)
    for split in ("train", "test", "memorization"):
        with (
            open(os.path.join(demo.root, split, "metadata.jsonl")) as f,
            open(os.path.join(again.root, split, "metadata.jsonl")) as g,
        ):
            assert f.read() == g.read()
    rows, test_rows = read_metadata(demo.train_dir), read_metadata(demo.test_dir)
    assert len(rows) == demo.num_train_rows == 70 + 10 * 10
    assert len(test_rows) == 20
    assert sum(r["memorized"] for r in rows) == 100
    assert {r["source_id"] for r in rows if r["memorized"]} == set(demo.memorization_ids)
    assert not {r["source_id"] for r in rows} & {r["source_id"] for r in test_rows}
    assert len({r["text"] for r in rows}) == 80  # one distinct caption per face
    train = load_training_dataset(train_data_dir=demo.train_dir, resolution=32)
    assert len(train) == 170 and train[0]["pixel_values"].shape == (3, 32, 32)


def test_build_script_vocabulary_matches_shipped_files():
    """The build script's vocabulary rule, fed the shipped merges, reproduces the shipped vocab.json exactly."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "build_tiny_pipeline", os.path.join(repo, "scripts", "build_tiny_pipeline.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = os.path.join(tiny_pipeline_path(), "tokenizer")
    with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
        merges = f.read().splitlines()[1:]
    assert len(merges) == 48894
    # The open_clip file has a header line, the merges, then more merges CLIP does not use.
    bpe = gzip.compress(("bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(merges + ["x y"] * 3)).encode())
    vocab, rebuilt_merges = module.build_vocab_and_merges(bpe)
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        assert vocab == json.load(f)
    assert rebuilt_merges == merges
