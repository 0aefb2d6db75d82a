"""Trainer set-ups on the shipped tiny pipeline, and the slots it trains."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDPMScheduler

from peft_memcontrol.slots import get_layout
from peft_memcontrol.tiny_sd import load_tiny_pipeline
from peft_memcontrol.training import MemControlTrainer, TrainingConfig


#: The 16 Transformer2D slots of the SD v1.5 layout (and of the tiny pipeline), in bit order.
TINY_SLOTS = get_layout("sd15-reference-16").genome


def tiny_components() -> dict[str, Any]:
    """Fresh copies of the shipped tiny pipeline's parts, as the trainer takes them."""
    pipe = load_tiny_pipeline()
    return {
        "unet": pipe.unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "noise_scheduler": DDPMScheduler.from_config(pipe.scheduler.config),
    }


def make_trainer(dataset: Any, method: Any, output_dir: str, **config_kwargs: Any) -> MemControlTrainer:
    """A `MemControlTrainer` on the tiny pipeline with test-friendly defaults (no trackers, no bars)."""
    defaults = {"train_batch_size": 4, "max_train_steps": 2, "learning_rate": 1e-3, "report_to": None}
    defaults["show_progress"] = False
    defaults.update(config_kwargs)
    config = TrainingConfig(output_dir=output_dir, **defaults)
    return MemControlTrainer(train_dataset=dataset, method=method, config=config, **tiny_components())


def optimizer_state_tensors(trainer: MemControlTrainer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state, keyed by parameter name, for exact comparisons."""
    names = {id(p): n for n, p in trainer.unwrapped_model.named_parameters()}
    out = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            for key, value in trainer.optimizer.state[p].items():
                out[f"{names[id(p)]}:{key}"] = torch.as_tensor(value).clone()
    return out


def assert_same_training_state(expected: MemControlTrainer, got: MemControlTrainer) -> None:
    """Trainable parameters, optimizer state and learning-rate schedule position are equal to the bit."""
    params_a, params_b = expected.trainable_parameters(), got.trainable_parameters()
    assert params_a.keys() == params_b.keys() and len(params_a) > 0
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name
    state_a, state_b = optimizer_state_tensors(expected), optimizer_state_tensors(got)
    assert state_a.keys() == state_b.keys() and len(state_a) > 0
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert expected.lr_scheduler.state_dict()["last_epoch"] == got.lr_scheduler.state_dict()["last_epoch"]
