"""Validation images, as diffusers' ``train_text_to_image_lora.py`` makes them: during training every
``validation_epochs`` epochs, and once after it.

Each round generates ``num_images`` images of one prompt with the same seed (so that rounds differ by the model only),
saves them as PNG files and logs them to the trackers: TensorBoard and Weights & Biases, under diffusers' names
(``"validation"`` during training, ``"test"`` after it). The images are made on the main process, with the model in
eval mode (and, under ``use_ema``, with the averaged weights) through `MemControlTrainer.inference_mode`, which leaves
the training's random streams as they were.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class ValidationRound:
    """One round of validation images.

    Attributes:
        step: the optimizer step the model had reached.
        prompt: the validation prompt.
        images: the saved PNG files, in order.
    """

    step: int
    prompt: str
    images: list[str]

    def verdict(self) -> str:
        """The round in one sentence (the trainer writes it under the progress bar)."""
        folder = os.path.dirname(self.images[0]) if self.images else "nowhere"
        return f"step {self.step}: {len(self.images)} validation images of {self.prompt!r} in {folder}"

    def to_card(self) -> dict[str, Any]:
        """What a model card shows of the round (`update_model_card`'s ``validation``)."""
        return {"prompt": self.prompt, "images": self.images, "step": self.step}


class ValidationImages:
    """Validation images of ``prompt`` in ``output_dir/validation``: a periodic hook of `MemControlTrainer.train`
    (``validation_epochs``: after the epochs diffusers validates at, 0-based epoch numbers divisible by it, into
    ``validation/step-<step>``) and, with `generate`, the final round.

    Args:
        prompt: the validation prompt.
        num_images: images per round.
        output_dir: the run's output folder.
        steps_per_epoch: optimizer steps per epoch (`MemControlTrainer.steps_per_epoch`).
        validation_epochs: epochs between rounds during training; ``None``: none during training.
        num_inference_steps: denoising steps of every image.
        guidance_scale: classifier-free guidance scale of every image.
        seed: of every round's generator.
    """

    label = "Validation"

    def __init__(
        self,
        prompt: str,
        num_images: int,
        output_dir: str,
        steps_per_epoch: int,
        validation_epochs: int | None = 1,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        seed: int = 0,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}.")
        if validation_epochs is not None and validation_epochs < 1:
            raise ValueError(
                f"validation_epochs must be at least 1 (None: only after training), got {validation_epochs}."
            )
        self.prompt = prompt
        self.num_images = num_images
        self.output_dir = output_dir
        self.steps_per_epoch = steps_per_epoch
        self.validation_epochs = validation_epochs
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.history: list[ValidationRound] = []

    def due(self, step: int) -> bool:
        """Whether a round is due after optimizer step ``step``: the end of an epoch ``e`` (0-based) with
        ``e % validation_epochs == 0``, diffusers' rule."""
        if self.validation_epochs is None or step == 0 or step % self.steps_per_epoch:
            return False
        return (step // self.steps_per_epoch - 1) % self.validation_epochs == 0

    def check(self, trainer: Any) -> ValidationRound | None:
        """The periodic round: images into ``validation/step-<step>``, logged as ``"validation"``; ``None`` on the
        processes other than the main one."""
        folder = os.path.join(self.output_dir, "validation", f"step-{trainer.global_step}")
        validation = self.generate(trainer, folder, "validation")
        if validation is not None:
            self.history.append(validation)
        return validation

    def should_stop(self, validation: ValidationRound | None) -> bool:
        """Validation never stops training."""
        return False

    def generate(self, trainer: Any, folder: str, phase: str = "test") -> ValidationRound | None:
        """Generate, save into ``folder`` and log under ``phase`` the round of ``trainer``'s current model, on the main
        process (``None`` elsewhere)."""
        if not trainer.accelerator.is_main_process:
            return None
        pipeline = trainer.pipeline()
        pipeline.set_progress_bar_config(disable=True)
        with trainer.inference_mode():
            images = pipeline(
                [self.prompt] * self.num_images,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                generator=torch.Generator().manual_seed(self.seed),
            ).images
        os.makedirs(folder, exist_ok=True)
        paths = [os.path.join(folder, f"image_{i}.png") for i in range(len(images))]
        for image, path in zip(images, paths):
            image.save(path)
        self.log(trainer, images, phase)
        return ValidationRound(step=trainer.global_step, prompt=self.prompt, images=paths)

    def log(self, trainer: Any, images: list, phase: str) -> None:
        """Log PIL ``images`` to the run's trackers under ``phase``, as diffusers' ``log_validation`` does."""
        for tracker in trainer.accelerator.trackers:
            if tracker.name == "tensorboard":
                stacked = np.stack([np.asarray(image) for image in images])
                tracker.writer.add_images(phase, stacked, trainer.global_step, dataformats="NHWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log(
                    {phase: [wandb.Image(image, caption=f"{i}: {self.prompt}") for i, image in enumerate(images)]},
                    step=trainer.global_step,
                )
