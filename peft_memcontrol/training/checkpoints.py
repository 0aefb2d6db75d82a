"""Checkpoints of a run: ``output_dir/checkpoint-<step>`` with the trainable tensors, optimizer, scheduler and step.

Like diffusers' LoRA script, a checkpoint holds only the tensors that train (not the frozen base model), through
Accelerate's save/load hooks; ``trainer_state.json`` records the step, so that a resumed run continues exactly, and the run's fingerprint, so that
no run resumes another's checkpoint. A checkpoint is written into a temporary folder and renamed when complete.
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
#: Prefix of the temporary folder a checkpoint is written into before it is renamed ``checkpoint-<step>``.
PARTIAL_PREFIX = ".partial-"


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
        not_finite = sorted(name for name, tensor in state.items() if not torch.isfinite(tensor).all())
        if not_finite:
            raise FloatingPointError(
                f"Checkpoint {input_dir} holds non-finite (NaN or infinite) values in {not_finite[:3]} ...: the run "
                "that wrote it had diverged. Resume from an earlier checkpoint-<step> folder instead."
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
    run: dict[str, Any],
) -> str:
    """Write ``output_dir/checkpoint-<global_step>``, then delete the oldest others beyond ``total_limit``.

    The checkpoint is written into a temporary folder and renamed when complete, and older checkpoints are pruned
    only after that: a run killed at any moment keeps its previous checkpoints. ``config`` (the run's flat
    hyper-parameters) and ``run`` (its fingerprint, see `check_same_run`) are recorded beside the step in
    ``trainer_state.json``.
    """
    path = os.path.join(output_dir, f"checkpoint-{global_step}")
    partial = os.path.join(output_dir, f"{PARTIAL_PREFIX}checkpoint-{global_step}")
    if accelerator.is_main_process:
        remove_partial_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    if accelerator.is_main_process:
        with open(os.path.join(partial, TRAINER_STATE_NAME), "w") as f:
            json.dump({"global_step": global_step, "config": config, "run": run}, f, indent=2)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(path):  # a checkpoint of this step from an earlier attempt: replaced, never half-written
            stale = os.path.join(output_dir, f"{PARTIAL_PREFIX}replaced-checkpoint-{global_step}")
            os.rename(path, stale)
            os.rename(partial, path)
            shutil.rmtree(stale)
        else:
            os.rename(partial, path)
        if total_limit is not None:
            others = sorted(found for found in list_checkpoints(output_dir) if found[1] != path)
            for _, old in others[: max(len(others) - (total_limit - 1), 0)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return path


def remove_partial_checkpoints(output_dir: str) -> None:
    """Delete the temporary folders of checkpoint writes that a killed run left in ``output_dir``."""
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(PARTIAL_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name))


def load_checkpoint(accelerator: Accelerator, checkpoint: str, output_dir: str, run: dict[str, Any]) -> int | None:
    """Restore a checkpoint (a path, or ``"latest"`` in ``output_dir``) of the run ``run``; returns its step.

    ``"latest"`` takes the newest complete checkpoint, skipping (with a warning) folders that a killed write left
    incomplete; with none in ``output_dir`` it warns and returns ``None``: nothing to resume.
    """
    if checkpoint == "latest":
        found = complete_checkpoints(output_dir)
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
    with open(state_path) as f:
        state = json.load(f)
    check_same_run(checkpoint, state.get("run"), run)
    accelerator.load_state(checkpoint)
    return int(state["global_step"])


def check_same_run(checkpoint: str, recorded: dict[str, Any] | None, run: dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` (whose fingerprint is ``recorded``) in a run whose fingerprint is ``run``.

    A fingerprint maps ``method``, ``adapter_config`` (the method's settings, mask included), ``data``, ``seed`` and
    ``base_model`` to values that differ when the runs do; resuming another run would silently mix two trainings.
    Checkpoints written before fingerprints were recorded are resumed with a warning.
    """
    if recorded is None:
        logger.warning("%s records no run fingerprint: cannot check that it belongs to this run.", checkpoint)
        return
    differing = sorted(key for key in set(recorded) | set(run) if recorded.get(key) != run.get(key))
    if differing:
        details = "; ".join(f"{key}: checkpoint {recorded.get(key)!r}, this run {run.get(key)!r}" for key in differing)
        raise ValueError(
            f"Checkpoint {checkpoint} belongs to another run ({details}). Resume with the settings that wrote it, or "
            "start a new run in another --output_dir (or pass --overwrite_output_dir without "
            "--resume_from_checkpoint)."
        )


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-<step>`` folder in ``output_dir``."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        if name.startswith("checkpoint-") and name[len("checkpoint-") :].isdigit():
            found.append((int(name[len("checkpoint-") :]), os.path.join(output_dir, name)))
    return found


def complete_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """`list_checkpoints` without the incomplete ones (no trainer state or weights, e.g. written by a killed run of
    an older version, which wrote in place); each skipped folder and leftover temporary folder is warned about."""
    complete = []
    for step, path in list_checkpoints(output_dir):
        if all(os.path.isfile(os.path.join(path, name)) for name in (TRAINER_STATE_NAME, TRAINABLE_WEIGHTS_NAME)):
            complete.append((step, path))
        else:
            logger.warning("Skipping %s: an incomplete checkpoint (its write was interrupted).", path)
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else ():
        if name.startswith(PARTIAL_PREFIX):
            logger.warning("Skipping %s: an interrupted checkpoint write.", os.path.join(output_dir, name))
    return complete
