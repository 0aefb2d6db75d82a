"""Shared helpers of the training, tiny-pipeline and launch tests (kept out of conftest.py on purpose)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image


#: The 16 Transformer2D slots of the SD v1.5 layout (and of the tiny pipeline), in bit order.
TINY_SLOTS = [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)] + ["mid_block.attentions.0"]
TINY_SLOTS += [f"up_blocks.{b}.attentions.{a}" for b in range(1, 4) for a in range(3)]


def synthetic_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    """``n`` deterministic RGB images (smooth random blobs), so tests need no image package."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        low = rng.random((4, 4, 3))
        array = np.kron(low, np.ones((size // 4, size // 4, 1)))
        images.append(Image.fromarray((array * 255).round().astype(np.uint8)))
    return images


def write_image_folder(root: str, n: int = 12, size: int = 32, caption_key: str = "text") -> str:
    """An image folder with ``metadata.jsonl`` (diffusers convention), captions ``"a photo of thing <i>"``."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        for i, image in enumerate(synthetic_images(n, size)):
            image.save(os.path.join(root, f"{i:03d}.png"))
            f.write(json.dumps({"file_name": f"{i:03d}.png", caption_key: f"a photo of thing {i}"}) + "\n")
    return root


def tiny_components():
    """Fresh copies of the shipped tiny pipeline's parts, as the trainer takes them."""
    from diffusers import DDPMScheduler

    from peft_memcontrol.tiny_sd import load_tiny_pipeline

    pipe = load_tiny_pipeline()
    return {
        "unet": pipe.unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "noise_scheduler": DDPMScheduler.from_config(pipe.scheduler.config),
    }


def make_trainer(dataset, method, output_dir: str, **config_kwargs):
    """A :class:`MemControlTrainer` on the tiny pipeline with test-friendly defaults (no trackers, no bars)."""
    from peft_memcontrol.training import MemControlTrainer, TrainingConfig

    defaults = {"train_batch_size": 4, "max_train_steps": 2, "learning_rate": 1e-3, "report_to": None}
    defaults["show_progress"] = False
    defaults.update(config_kwargs)
    config = TrainingConfig(output_dir=output_dir, **defaults)
    return MemControlTrainer(train_dataset=dataset, method=method, config=config, **tiny_components())


def optimizer_state_tensors(trainer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state, keyed by parameter name, for exact comparisons."""
    names = {id(p): n for n, p in trainer.unwrapped_model.named_parameters()}
    out = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            for key, value in trainer.optimizer.state[p].items():
                out[f"{names[id(p)]}:{key}"] = torch.as_tensor(value).clone()
    return out
