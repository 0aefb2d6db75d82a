"""Accelerate set-up of a run: the ``Accelerator`` a `TrainingConfig` asks for, its compute dtype, module placement."""

from __future__ import annotations

import importlib.util
import logging
import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

from .config import TrainingConfig


logger = logging.getLogger(__name__)


def create_accelerator(config: TrainingConfig) -> Accelerator:
    """An ``Accelerator`` with the run's accumulation, precision, tracker, log folder and DDP settings.

    In a single process, it starts from a fresh global state: Accelerate keeps one process-wide state, in which a
    second ``Accelerator`` with another ``mixed_precision`` raises and one with ``mixed_precision=None`` silently
    inherits the previous run's. Sequential trainings in one process (tests, notebooks, the search's inner loop) so
    each get their own settings; distributed runs keep the launcher's.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        cpu=_multi_process_without_accelerator(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=_tracker(config.report_to),
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
        ),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.ddp_find_unused_parameters)],
    )


def mixed_precision_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype of the frozen parts under the accelerator's mixed precision (float32 without)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def move_module(module: torch.nn.Module, device: torch.device | str | None, dtype: torch.dtype) -> torch.nn.Module:
    """Move a module, casting only when its dtype differs (diffusers warns on every dtype cast)."""
    if device is not None:
        module.to(device)
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    return module


def _tracker(report_to: str | None) -> str | None:
    """The ``log_with`` of the Accelerator: ``report_to``, or no tracker for ``"none"`` or a missing TensorBoard."""
    if report_to in ("none", ""):
        return None
    if report_to == "tensorboard" and not any(
        importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")
    ):
        logger.warning("report_to='tensorboard' but tensorboard is not installed: logging to no tracker.")
        return None
    return report_to


def _multi_process_without_accelerator() -> bool:
    """True when launched as several processes (``accelerate launch --multi_gpu``) on a machine with no GPU.

    Accelerate then needs ``cpu=True`` to set up a gloo process group (``DistributedType.MULTI_CPU``); with it the
    same launch command trains with DDP on CPUs as it does on GPUs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    accelerator_api = getattr(torch, "accelerator", None)
    if accelerator_api is not None and hasattr(accelerator_api, "is_available"):
        return not accelerator_api.is_available()
    return not torch.cuda.is_available()
