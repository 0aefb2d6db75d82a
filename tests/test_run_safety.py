"""Training runs lose nothing and mix nothing: atomic checkpoints, one run per output folder, no diverged saves.

Issue 13, "Training runs and checkpoints": each test fails on the trainer that wrote checkpoints in place, pruned
before writing, overwrote or resumed another run silently and saved non-finite weights.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from peft_memcontrol.training import TrainingConfig, config_from_args, load_training_dataset
from peft_memcontrol.training.checkpoints import TRAINABLE_WEIGHTS_NAME, TRAINER_STATE_NAME
from peft_memcontrol.tuners import DiffFitConfig

from helpers.images import write_image_folder
from helpers.training import TINY_SLOTS, assert_same_training_state, make_trainer


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(REPO, "examples", "train_text_to_image_memcontrol.py")
_spec = importlib.util.spec_from_file_location("train_text_to_image_memcontrol", SCRIPT)
launch_script = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch_script)

#: A child that trains 2 steps with a checkpoint per step and keeps 1, and hangs (after touching ``marker``) while
#: writing the weights of the second checkpoint: a deterministic window for a SIGKILL during a checkpoint write.
SLOW_WRITER = """
import os, sys, time
from peft_memcontrol.training import checkpoints, load_training_dataset
from helpers.training import make_trainer
data, out, marker = sys.argv[1:4]
real_save_file = checkpoints.save_file
def slow_save_file(state, path):
    if "checkpoint-2" in path:
        open(marker, "w").close()
        time.sleep(600)
    real_save_file(state, path)
checkpoints.save_file = slow_save_file
dataset = load_training_dataset(train_data_dir=data, resolution=32)
make_trainer(dataset, "full", out, max_train_steps=2, checkpointing_steps=1, checkpoints_total_limit=1).train()
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("data") / "train"), n=8)


@pytest.fixture(scope="module")
def dataset(data_dir):
    return load_training_dataset(train_data_dir=data_dir, resolution=32)


# ---------------------------------------------------------------- checkpoints survive a kill
def test_kill_during_checkpoint_write_keeps_the_previous_one_and_resume_continues_exactly(
    data_dir, dataset, tmp_path, caplog
):
    out, marker = str(tmp_path / "out"), str(tmp_path / "writing")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, data_dir, out, marker],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(marker):
            assert child.poll() is None, child.stderr.read()[-4000:]
            assert time.monotonic() < deadline, "the child never reached the second checkpoint"
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()

    # The kill came while checkpoint-2 was being written, with --checkpoints_total_limit 1: checkpoint-1 survives.
    assert os.path.isfile(os.path.join(out, "checkpoint-1", TRAINER_STATE_NAME))
    assert os.path.isfile(os.path.join(out, "checkpoint-1", TRAINABLE_WEIGHTS_NAME))
    # A checkpoint folder that an older version left half-written (in place) is skipped too.
    os.makedirs(os.path.join(out, "checkpoint-3"))

    uninterrupted = make_trainer(dataset, "full", str(tmp_path / "a"), max_train_steps=2)
    result = uninterrupted.train()
    resumed = make_trainer(dataset, "full", out, max_train_steps=2, resume_from_checkpoint="latest")
    with caplog.at_level(logging.WARNING, logger="peft_memcontrol.training.checkpoints"):
        resumed_result = resumed.train()
    assert "checkpoint-3: an incomplete checkpoint" in caplog.text
    assert resumed_result.losses == result.losses[1:]
    assert_same_training_state(uninterrupted, resumed)


def test_checkpoints_total_limit_keeps_the_newest(dataset, tmp_path):
    """Pruning after the write keeps what pruning before it kept (and no temporary folder)."""
    make_trainer(
        dataset, "full", str(tmp_path), max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=2
    ).train()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-3"]


# ---------------------------------------------------------------- one run per output folder
def test_a_new_run_refuses_a_non_empty_output_dir_unless_told_to_overwrite(dataset, tmp_path):
    out = tmp_path / "out"
    make_trainer(dataset, "full", str(out), max_train_steps=2, checkpointing_steps=1).train()
    with pytest.raises(FileExistsError, match="not empty.*--resume_from_checkpoint latest.*--overwrite_output_dir"):
        make_trainer(dataset, "full", str(out), max_train_steps=1).train()
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2"]

    # Overwriting deletes the previous run's checkpoints: none is kept in place of this run's, none resumed later.
    make_trainer(dataset, "full", str(out), max_train_steps=1, overwrite_output_dir=True).train()
    assert os.listdir(out) == []

    # A folder that holds something but no checkpoint (a run killed before its first one) is not resumed either.
    killed = tmp_path / "killed"
    os.makedirs(killed / "logs")
    resuming = make_trainer(dataset, "full", str(killed), max_train_steps=1, resume_from_checkpoint="latest")
    with pytest.raises(FileExistsError, match="not empty.*holds no checkpoint to resume.*--overwrite_output_dir"):
        resuming.train()


def test_resuming_another_run_is_refused_naming_what_differs(dataset, tmp_path):
    half = {slot: i < len(TINY_SLOTS) // 2 for i, slot in enumerate(TINY_SLOTS)}
    everything = dict.fromkeys(TINY_SLOTS, True)
    make_trainer(dataset, DiffFitConfig(mask=half), str(tmp_path), max_train_steps=1, checkpointing_steps=1).train()
    with open(tmp_path / "checkpoint-1" / TRAINER_STATE_NAME) as f:
        assert set(json.load(f)["run"]) == {"method", "adapter_config", "data", "seed", "base_model"}

    # The checkpoint's tensors all exist in a model with a larger mask: only the fingerprint tells the runs apart.
    other_mask = make_trainer(
        dataset, DiffFitConfig(mask=everything), str(tmp_path), max_train_steps=2, resume_from_checkpoint="latest"
    )
    with pytest.raises(ValueError, match=r"belongs to another run \(adapter_config: checkpoint '\w+', this run"):
        other_mask.train()
    other_seed = make_trainer(
        dataset, DiffFitConfig(mask=half), str(tmp_path), max_train_steps=2, seed=1, resume_from_checkpoint="latest"
    )
    with pytest.raises(ValueError, match=r"another run \(seed: checkpoint 0, this run 1\)"):
        other_seed.train()
    other_data = make_trainer(
        dataset.subset(range(4)),
        DiffFitConfig(mask=half),
        str(tmp_path),
        max_train_steps=2,
        resume_from_checkpoint="latest",
    )
    with pytest.raises(ValueError, match=r"another run \(data: "):
        other_data.train()
    same = make_trainer(
        dataset, DiffFitConfig(mask=half), str(tmp_path), max_train_steps=2, resume_from_checkpoint="latest"
    )
    assert same.train().global_step == 2


# ---------------------------------------------------------------- no diverged weights are saved
def _overflow_the_gradients(trainer) -> None:
    """Make the backward pass overflow (as fp16 can): the loss stays finite, the update makes weights NaN."""
    for parameter in trainer.trainable_parameters().values():
        parameter.register_hook(lambda grad: torch.full_like(grad, float("inf")))


def test_a_diverged_last_step_saves_neither_checkpoint_nor_adapter(dataset, tmp_path):
    diverging = {"max_train_steps": 1, "max_grad_norm": 0.0}
    checkpointed = make_trainer(dataset, DiffFitConfig(), str(tmp_path / "c"), checkpointing_steps=1, **diverging)
    _overflow_the_gradients(checkpointed)
    with pytest.raises(FloatingPointError, match=r"Not saving the checkpoint: after step 1 .*NaN or infinite"):
        checkpointed.train()
    assert os.listdir(tmp_path / "c") == []

    trainer = make_trainer(dataset, DiffFitConfig(), str(tmp_path / "a"), **diverging)
    _overflow_the_gradients(trainer)
    result = trainer.train()
    assert result.global_step == 1 and all(math.isfinite(loss) for loss in result.losses)
    with pytest.raises(FloatingPointError, match="Not saving the adapter"):
        trainer.save_adapter()
    assert os.listdir(tmp_path / "a") == []


def test_resuming_a_checkpoint_that_holds_nan_names_it(dataset, tmp_path):
    make_trainer(dataset, DiffFitConfig(), str(tmp_path), max_train_steps=1, checkpointing_steps=1).train()
    path = str(tmp_path / "checkpoint-1" / TRAINABLE_WEIGHTS_NAME)
    state = load_file(path)
    state[next(iter(state))].fill_(float("nan"))
    save_file(state, path)
    resumed = make_trainer(dataset, DiffFitConfig(), str(tmp_path), max_train_steps=2, resume_from_checkpoint="latest")
    with pytest.raises(FloatingPointError, match="checkpoint-1 holds non-finite"):
        resumed.train()


# ---------------------------------------------------------------- settings that cannot work are refused up front
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("train_batch_size", 0, "train_batch_size must be at least 1, got 0"),
        ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be at least 1"),
        ("checkpoints_total_limit", 0, "checkpoints_total_limit must be at least 1"),
        ("learning_rate", 0.0, "learning_rate must be a finite number above 0, got 0.0"),
        ("learning_rate", -1e-4, "learning_rate must be a finite number above 0"),
        ("learning_rate", float("nan"), "learning_rate must be a finite number above 0, got nan"),
        ("learning_rate", float("inf"), "learning_rate must be a finite number above 0, got inf"),
    ],
)
def test_training_config_refuses_values_that_cannot_work(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**{field: value})


def test_launch_script_refuses_bad_learning_rates_and_takes_overwrite_flag(tmp_path):
    chosen = tmp_path / "adapter_config.json"
    chosen.write_text(json.dumps({"mask": {"down_blocks.0.attentions.0": True}, "learning_rate": 0}))
    with pytest.raises(ValueError, match=r"learning_rate recorded in --mask .*adapter_config.json is 0"):
        launch_script.parse_args(["--method", "memcontrol", "--mask", str(chosen)])
    for bad in ("0", "nan", "inf", "-1e-4"):
        with pytest.raises(
            ValueError, match=r"--learning_rate is .*: a learning rate must be a finite number above 0"
        ):
            launch_script.parse_args([f"--learning_rate={bad}"])
    args = launch_script.parse_args(["--overwrite_output_dir"])
    assert config_from_args(TrainingConfig, args).overwrite_output_dir is True
