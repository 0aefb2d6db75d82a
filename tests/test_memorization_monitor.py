"""Memorization monitoring during training: when the checks run, what they keep, and stopping at the first copy.

That the verdict changes when the model does copy a training image is tested where the tiny UNet is made to memorize
one face (tests/test_objectives_memorization.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from peft_memcontrol.metrics import fixed_copy_threshold
from peft_memcontrol.sample_data import lfw_faces
from peft_memcontrol.sample_data.faces import face_caption
from peft_memcontrol.tiny_sd import load_tiny_pipeline
from peft_memcontrol.training import ImageCaptionDataset, MemControlTrainer, MemorizationMonitor, TrainingConfig

from helpers.images import write_image_folder


SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "train_text_to_image_memcontrol.py"
)
_spec = importlib.util.spec_from_file_location("train_text_to_image_memcontrol", SCRIPT)
launch_script = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch_script)


def flat_pixels(images: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(images).float().flatten(1)


def _trainer(output_dir: str, steps: int) -> MemControlTrainer:
    faces = lfw_faces(32)
    pipe = load_tiny_pipeline()
    return MemControlTrainer(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        train_dataset=ImageCaptionDataset(faces[:2], [face_caption(0), face_caption(1)], resolution=32),
        method="full",
        config=TrainingConfig(output_dir=output_dir, max_train_steps=steps, train_batch_size=2, report_to=None),
    )


def _monitor(threshold: float, every_n_steps: int, stop_on_copy: bool = False) -> MemorizationMonitor:
    faces = torch.from_numpy(np.stack([np.asarray(face) for face in lfw_faces(32)[:2]])).permute(0, 3, 1, 2) / 255
    return MemorizationMonitor(
        [face_caption(0), ""],
        faces,
        fixed_copy_threshold(threshold, "set by hand"),
        flat_pixels,
        every_n_steps,
        num_inference_steps=2,
        stop_on_copy=stop_on_copy,
    )


def test_checks_run_before_training_and_every_n_steps_and_are_kept(tmp_path):
    result = _trainer(str(tmp_path), steps=3).train(monitor=_monitor(threshold=1.0, every_n_steps=2))
    assert [check["step"] for check in result.memorization_checks] == [0, 2]
    assert result.global_step == 3 and not result.stopped_at_copy
    for check in result.memorization_checks:
        assert check["copies"] == 0 and len(check["similarities"]) == 2 and check["threshold"] == 1.0


def test_stop_on_copy_ends_the_run_at_the_first_check_that_finds_one(tmp_path, caplog):
    trainer = _trainer(str(tmp_path), steps=4)
    with caplog.at_level(logging.WARNING):
        monitor = _monitor(threshold=-1.0, every_n_steps=2, stop_on_copy=True)  # every generation is a "copy"
    assert "weak evidence" in caplog.text  # a threshold with unmeasured error rates is said to be one
    result = trainer.train(monitor=monitor)
    assert result.stopped_at_copy and result.global_step == 0 and result.losses == []
    assert [check["copies"] for check in result.memorization_checks] == [2]
    assert monitor.history[0].verdict().startswith("step 0: 2 of 2 generations for the at-risk prompts are copies")


def test_bad_monitor_settings_are_refused():
    with pytest.raises(ValueError, match="every_n_steps must be at least 1"):
        _monitor(threshold=0.5, every_n_steps=0)
    with pytest.raises(ValueError, match="needs at-risk prompts"):
        MemorizationMonitor([], torch.zeros(1, 3, 8, 8), fixed_copy_threshold(0.5, "x"), flat_pixels, 1)


def test_launch_script_checks_the_duplicated_images_prompt_first_and_records_the_checks(tmp_path):
    train = write_image_folder(str(tmp_path / "train"), n=6)
    with open(os.path.join(train, "metadata.jsonl"), "a") as metadata:  # row 2's image again, under a new caption
        metadata.write(json.dumps({"file_name": "002.png", "text": "the duplicated one"}) + "\n")
    held_out = write_image_folder(str(tmp_path / "held_out"), n=24)
    for name in sorted(os.listdir(held_out)):  # other images than the training ones (a shifted palette)
        if name.endswith(".png"):
            path = os.path.join(held_out, name)
            Image.fromarray(np.roll(np.asarray(Image.open(path).convert("RGB")), 1, axis=2)).save(path)
    out = tmp_path / "out"
    common = ["--train_data_dir", train, "--output_dir", str(out), "--max_train_steps", "2", "--report_to", "none"]
    with pytest.raises(ValueError, match="needs --memorization_held_out_dir"):
        launch_script.parse_args([*common, "--memorization_check_steps", "1"])
    with pytest.raises(ValueError, match="must be >= 0"):
        launch_script.parse_args(
            [*common, "--memorization_check_steps", "-1", "--memorization_held_out_dir", held_out]
        )
    launch_script.main(
        [*common, "--train_batch_size", "2", "--memorization_check_steps", "1", "--memorization_held_out_dir"]
        + [held_out, "--memorization_check_prompts", "3", "--num_inference_steps", "2", "--copy_false_positive_rate"]
        + ["0.05"]
    )
    summary = json.loads((out / "training_summary.json").read_text())
    # the card tells the data's duplicates the monitor found: row 2's image under two captions, one group
    assert "- duplicate groups found: 1 (" in (out / "README.md").read_text()
    checks = summary["memorization_checks"]
    assert [check["step"] for check in checks] == [0, 1, 2] and summary["stopped_at_copy"] is False
    prompts = checks[0]["prompts"]
    assert len(prompts) == 3 and prompts[0] in ("a photo of thing 2", "the duplicated one")
