"""Checkpoints of a run: ``output_dir/checkpoint-<step>`` with the trainable tensors, optimizer, scheduler and step.

Like diffusers' LoRA script, a checkpoint holds only the tensors that train (not the frozen base model), through
Accelerate's save/load hooks; ``trainer_state.json`` records the step, so that a resumed run continues exactly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file


logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS_NAME = "trainable_parameters.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"


def register_trainable_state_hooks(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Make ``accelerator.save_state``/``load_state`` store and restore only ``model``'s trainable tensors.

    ``model`` is the unwrapped trained module (the UNet, or the ``PeftModel`` around it).
    """

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(state, os.path.join(output_dir, TRAINABLE_WEIGHTS_NAME))
        while weights:
            weights.pop()

    def load_hook(models: list, input_dir: str) -> None:
        while models:
            models.pop()
        path = os.path.join(input_dir, TRAINABLE_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: {input_dir} is not a checkpoint of this trainer.")
        state = load_file(path)
        params = dict(model.named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise ValueError(
                f"Checkpoint {input_dir} holds parameters this model lacks ({unknown[:3]} ...): "
                "resume with the same method and mask that wrote it."
            )
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str,
    global_step: int,
    total_limit: int | None,
    config: dict[str, Any],
) -> str:
    """Write ``output_dir/checkpoint-<global_step>``, first deleting the oldest beyond ``total_limit``.

    ``config`` (the run's flat hyper-parameters) is recorded beside the step in ``trainer_state.json``.
    """
    path = os.path.join(output_dir, f"checkpoint-{global_step}")
    if accelerator.is_main_process and total_limit is not None:
        existing = sorted(list_checkpoints(output_dir), key=lambda p: p[0])
        while len(existing) >= total_limit:
            shutil.rmtree(existing.pop(0)[1])
    accelerator.save_state(path)
    if accelerator.is_main_process:
        with open(os.path.join(path, TRAINER_STATE_NAME), "w") as f:
            json.dump({"global_step": global_step, "config": config}, f, indent=2)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(accelerator: Accelerator, checkpoint: str, output_dir: str) -> int | None:
    """Restore a checkpoint (a path, or ``"latest"`` in ``output_dir``); returns the step it resumes at.

    ``"latest"`` with no checkpoint in ``output_dir`` warns and returns ``None``: nothing to resume.
    """
    if checkpoint == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.warning("No checkpoint in %s: starting a new run.", output_dir)
            return None
        checkpoint = max(found)[1]
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(
            f"Checkpoint directory {checkpoint} does not exist. Pass a checkpoint-<step> folder written by "
            "this trainer, or 'latest' to take the newest one in --output_dir."
        )
    state_path = os.path.join(checkpoint, TRAINER_STATE_NAME)
    if not os.path.isfile(state_path):
        raise FileNotFoundError(f"{state_path} is missing: {checkpoint} is not a checkpoint of this trainer.")
    accelerator.load_state(checkpoint)
    with open(state_path) as f:
        return int(json.load(f)["global_step"])


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-<step>`` folder in ``output_dir``."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        if name.startswith("checkpoint-") and name[len("checkpoint-") :].isdigit():
            found.append((int(name[len("checkpoint-") :]), os.path.join(output_dir, name)))
    return found
