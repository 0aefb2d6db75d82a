"""The flags users copy from diffusers' text-to-image scripts: ``--num_train_epochs``, ``--validation_epochs``,
``--allow_tf32``, ``--use_8bit_adam``, ``--enable_xformers_memory_efficient_attention`` and ``--use_ema``.

Step counts are checked against Accelerate's own sharded batch sampler and a replay of diffusers' loop; EMA weights
against a brute-force average with diffusers' decay rule; validation against a run without it, to the bit.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from diffusers import UNet2DConditionModel
from torch.utils.data import BatchSampler, SequentialSampler

from peft_memcontrol.training import (
    TrainingConfig,
    ValidationImages,
    load_training_dataset,
    resolve_training_length,
    update_steps_per_epoch,
)
from peft_memcontrol.tuners import SVDiffConfig

from helpers.images import write_image_folder
from helpers.training import make_trainer


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "train_text_to_image_memcontrol.py")
_spec = importlib.util.spec_from_file_location("train_text_to_image_memcontrol", SCRIPT)
launch_script = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch_script)


def _diffusers_optimizer_steps(num_examples: int, batch_size: int, processes: int, accumulation: int, epochs: int):
    """Replay diffusers' loop on process 0: Accelerate's sharded batches, a gradient sync every ``accumulation``
    micro-batches and at the end of each pass (Accelerate's end-of-dataloader sync)."""
    batches = BatchSamplerShard(
        BatchSampler(SequentialSampler(range(num_examples)), batch_size, drop_last=False),
        num_processes=processes,
        process_index=0,
        even_batches=True,
    )
    per_pass = len(list(batches))
    syncs = sum(1 for step in range(per_pass) if (step + 1) % accumulation == 0 or step + 1 == per_pass)
    return epochs * syncs


@pytest.mark.parametrize(
    "num_examples, batch_size, processes, accumulation",
    [(3, 1, 1, 2), (10, 4, 1, 1), (10, 3, 2, 2), (100, 8, 4, 3), (7, 8, 2, 1)],
)
def test_epochs_count_steps_as_diffusers_does(num_examples, batch_size, processes, accumulation):
    per_epoch = update_steps_per_epoch(num_examples, batch_size, processes, accumulation)
    assert per_epoch == _diffusers_optimizer_steps(num_examples, batch_size, processes, accumulation, epochs=1)
    config = TrainingConfig(
        max_train_steps=None, num_train_epochs=3, train_batch_size=batch_size, gradient_accumulation_steps=accumulation
    )
    resolved = resolve_training_length(config, num_examples, processes)
    expected = _diffusers_optimizer_steps(num_examples, batch_size, processes, accumulation, epochs=3)
    assert (resolved.max_train_steps, resolved.num_train_epochs) == (expected, 3)
    # --max_train_steps overrides the epochs, which become the passes its steps start
    overridden = resolve_training_length(
        TrainingConfig(**{**vars(config), "max_train_steps": 2 * per_epoch + 1}), num_examples, processes
    )
    assert (overridden.max_train_steps, overridden.num_train_epochs) == (2 * per_epoch + 1, 3)


def test_arguments_are_refused_before_any_model_loads():
    with pytest.raises(ValueError, match="num_train_epochs must be at least 1, got 0"):
        launch_script.parse_args(["--num_train_epochs", "0"])
    with pytest.raises(ValueError, match="--validation_epochs must be at least 1, got 0"):
        launch_script.parse_args(["--validation_epochs", "0", "--validation_prompt", "a photo"])
    with pytest.raises(ValueError, match=r"use_ema .*whole UNet.*--method full"):
        launch_script.parse_args(["--use_ema", "--method", "svdiff"])
    assert launch_script.parse_args(["--use_ema", "--method", "full"]).config.use_ema
    assert launch_script.parse_args(["--allow_tf32"]).config.allow_tf32
    for flag, package in (
        ("--use_8bit_adam", "bitsandbytes"),
        ("--enable_xformers_memory_efficient_attention", "xformers"),
    ):
        if importlib.util.find_spec(package) is None:
            with pytest.raises(ImportError, match=f"pip install {package}"):
                launch_script.parse_args([flag])


def _tensorboard_image_steps(output_dir: str) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing import event_accumulator

    steps: dict[str, list[int]] = {}
    for root, _, names in os.walk(os.path.join(output_dir, "logs")):
        for name in names:
            events = event_accumulator.EventAccumulator(
                os.path.join(root, name), size_guidance={event_accumulator.IMAGES: 0}
            )
            events.Reload()
            for tag in events.Tags()["images"]:
                steps.setdefault(tag, []).extend(event.step for event in events.Images(tag))
    return steps


def test_script_trains_epochs_and_validates_every_validation_epochs(tmp_path, caplog):
    data = write_image_folder(str(tmp_path / "data"), n=3)
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    launch_script.main(
        ["--train_data_dir", data, "--output_dir", str(out), "--num_train_epochs", "2"]
        + ["--train_batch_size", "1", "--gradient_accumulation_steps", "2", "--report_to", "tensorboard"]
        + ["--validation_prompt", "a photo of thing 1", "--validation_epochs", "2", "--num_validation_images", "1"]
        + ["--num_inference_steps", "2"]
    )
    steps = _diffusers_optimizer_steps(3, 1, 1, 2, epochs=2)
    assert steps == 4
    logged = [record.getMessage().removeprefix("[RANK 0] ") for record in caplog.records]
    assert "  Num Epochs = 2" in logged and f"  Total optimization steps = {steps}" in logged
    summary = json.loads((out / "training_summary.json").read_text())
    assert (summary["num_epochs"], summary["max_train_steps"], summary["global_step"]) == (2, steps, steps)
    assert (summary["steps_per_epoch"], summary["epochs_run"]) == (steps // 2, 2)
    # diffusers validates after the epochs whose 0-based number is a multiple of --validation_epochs: epoch 0 only
    assert summary["validation_steps"] == [steps // 2]
    assert (out / "validation" / "step-2" / "image_0.png").is_file()
    assert (out / "validation" / "image_0.png").is_file()  # the final round, which the card shows
    assert not (out / "validation" / "step-4").exists()
    assert _tensorboard_image_steps(str(out)) == {"validation": [2], "test": [steps]}
    assert "![validation image 0](validation/image_0.png)" in (out / "README.md").read_text()


def test_validation_during_training_changes_nothing_in_the_run(tmp_path):
    """Validation images in eval mode, then back to train mode; the trained weights equal a run without validation to
    the bit (that run also allows TF32, which on CPU changes nothing)."""
    dataset = load_training_dataset(train_data_dir=write_image_folder(str(tmp_path / "data"), n=2), resolution=32)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        plain = make_trainer(
            dataset, SVDiffConfig(), str(tmp_path / "plain"), train_batch_size=2, max_train_steps=2, allow_tf32=True
        )
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    plain.train()

    validated = make_trainer(
        dataset, SVDiffConfig(), str(tmp_path / "validated"), train_batch_size=2, max_train_steps=2
    )
    modes: list[bool] = []
    validated.base_unet.register_forward_pre_hook(lambda module, inputs: modes.append(module.training))
    validation = ValidationImages(
        "a photo of thing 1", 1, validated.config.output_dir, validated.steps_per_epoch, 1, num_inference_steps=2
    )
    validated.train(validation=validation)

    assert validated.steps_per_epoch == 1 and [done.step for done in validation.history] == [1, 2]
    # a training forward, 2 denoising steps in eval mode (prompt and unconditional in one batch), the same again
    assert modes == [True, False, False, True, False, False]
    assert validated.unwrapped_model.training
    expected, got = plain.trainable_parameters(), validated.trainable_parameters()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


class _RecordWeights:
    """A `MemControlTrainer.train` hook that keeps the live weights before training and after every step."""

    label = "Weights"

    def __init__(self) -> None:
        self.weights: list[list[torch.Tensor]] = []

    def due(self, step: int) -> bool:
        return True

    def check(self, trainer) -> None:
        self.weights.append([p.detach().clone() for p in trainer.unwrapped_model.parameters()])

    def should_stop(self, result) -> bool:
        return False


def test_ema_is_diffusers_average_of_the_step_weights_saved_and_resumed(tmp_path):
    dataset = load_training_dataset(train_data_dir=write_image_folder(str(tmp_path / "data"), n=2), resolution=32)
    output_dir = str(tmp_path / "full")
    options = {"train_batch_size": 2, "max_train_steps": 3, "use_ema": True, "checkpointing_steps": 2}
    with pytest.raises(ValueError, match="use_ema"):
        make_trainer(dataset, SVDiffConfig(), str(tmp_path / "adapter"), **options)
    trainer = make_trainer(dataset, "full", output_dir, **options)
    recorder = _RecordWeights()
    trainer.train(validation=recorder)  # any periodic hook of train()

    average = [p.clone() for p in recorder.weights[0]]
    for step, weights in enumerate(recorder.weights[1:], start=1):
        decay = 0.0 if step == 1 else min((1 + (step - 1)) / (10 + (step - 1)), 0.9999)  # EMAModel.get_decay
        for shadow, weight in zip(average, weights):
            shadow -= (1 - decay) * (shadow - weight)
    assert len(recorder.weights) == 4
    assert any(not torch.equal(a, w) for a, w in zip(average, recorder.weights[-1]))  # the average is not the last
    for got, expected in zip(trainer.unwrapped_model.parameters(), average):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)

    saved = UNet2DConditionModel.from_pretrained(trainer.save_adapter())  # diffusers saves the averaged UNet
    for got, expected in zip(saved.parameters(), average):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)

    resumed = make_trainer(
        dataset, "full", output_dir, **options, resume_from_checkpoint=os.path.join(output_dir, "checkpoint-2")
    )
    resumed.train()
    for got, expected in zip(resumed.unwrapped_model.parameters(), trainer.unwrapped_model.parameters()):
        assert torch.equal(got, expected)
    assert math.isclose(resumed.ema.optimization_step, 3)
