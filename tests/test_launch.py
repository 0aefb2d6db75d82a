"""The launch script under ``accelerate launch`` with 2 CPU processes (DDP over gloo), then load and generate."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, PeftConfig, PeftModel

from peft_memcontrol.cli.train import build_method, read_mask_file
from peft_memcontrol.tiny_sd import load_tiny_pipeline
from peft_memcontrol.training import TrainingConfig, config_from_args
from peft_memcontrol.tuners import DiffFitConfig, MemControlConfig, SVDiffConfig

from helpers.images import write_image_folder
from helpers.training import TINY_SLOTS


# pytest-xdist: run this module's tests in one worker (its launches all use accelerate's default port 29500).
pytestmark = pytest.mark.xdist_group("accelerate-launch")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "train_text_to_image_memcontrol.py")
_spec = importlib.util.spec_from_file_location("train_text_to_image_memcontrol", SCRIPT)
launch_script = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch_script)


def _launch(args: list[str], num_processes: int = 2, timeout: int = 400) -> subprocess.CompletedProcess:
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    launch = ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no"] + (["--multi_gpu"] if num_processes > 1 else ["--cpu"])
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run(
        accelerate + launch + [SCRIPT] + args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _assert_tensorboard_logged(output_dir: str, num_steps: int, num_images: int) -> None:
    """The main process logged one loss per step and the validation images (other processes log nothing)."""
    from tensorboard.backend.event_processing import event_accumulator

    runs = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(output_dir, "logs")) for name in names]
    scalars = images = 0
    for path in runs:
        events = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.IMAGES: 0})
        events.Reload()
        tags = events.Tags()
        if "train_loss" in tags["scalars"]:
            scalars += len(events.Scalars("train_loss"))
        if "validation" in tags["images"]:
            images += len(events.Images("validation"))
    assert scalars == num_steps
    assert images == num_images


@pytest.mark.slow
def test_two_process_launch_saves_adapter_that_loads_and_generates(tmp_path):
    data = write_image_folder(str(tmp_path / "data"), n=8)
    out = str(tmp_path / "out")
    # Every other slot masked out: under DDP, frozen masked parts must not stall the gradient all-reduce.
    mask = {slot: i % 2 == 0 for i, slot in enumerate(TINY_SLOTS)}
    (tmp_path / "mask.json").write_text(json.dumps(mask))
    proc = _launch(
        ["--train_data_dir", data, "--method", "svdiff", "--mask", str(tmp_path / "mask.json")]
        + ["--max_train_steps", "2", "--train_batch_size", "2"]
        + ["--learning_rate", "1e-2", "--output_dir", out, "--checkpointing_steps", "2", "--report_to", "tensorboard"]
        + ["--validation_prompt", "a photo of thing 1", "--num_validation_images", "1", "--num_inference_steps", "2"]
        + ["--save_merged_pipeline"]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "MULTI_CPU" in proc.stderr and "Num processes: 2" in proc.stderr
    with open(os.path.join(out, "training_summary.json")) as f:
        assert json.load(f)["global_step"] == 2
    assert os.path.isfile(os.path.join(out, "checkpoint-2", "trainable_parameters.safetensors"))
    assert os.path.isfile(os.path.join(out, "validation", "image_0.png"))
    _assert_tensorboard_logged(out, num_steps=2, num_images=1)

    saved = PeftConfig.from_pretrained(out)
    assert isinstance(saved, SVDiffConfig) and saved.mask == mask
    pipe = load_tiny_pipeline()
    reference = load_tiny_pipeline()
    pipe.unet = PeftModel.from_pretrained(pipe.unet, out).get_base_model()
    kwargs = {"num_inference_steps": 2, "output_type": "np"}
    images = pipe("a photo of thing 1", generator=torch.Generator().manual_seed(0), **kwargs).images
    base = reference("a photo of thing 1", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert images.shape == (1, 32, 32, 3)
    assert abs(images - base).max() > 1e-4  # the trained adapter changes the output

    merged = StableDiffusionPipeline.from_pretrained(os.path.join(out, "merged_pipeline"))
    merged.set_progress_bar_config(disable=True)
    merged_images = merged("a photo of thing 1", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert abs(merged_images - images).max() < 1e-3  # merging reproduces the adapter's output


def test_bad_mask_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--mask"):
        read_mask_file(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 0, 1]))
    with pytest.raises(ValueError, match=r"--mask .*bad\.json: .*unit names to true/false"):
        read_mask_file(str(bad))
    good = tmp_path / "result.json"
    good.write_text(json.dumps({"mask": {"down_blocks.0.attentions.0": True}, "learning_rate": 3e-4}))
    read = read_mask_file(str(good))
    assert (read.mask, read.learning_rate, read.method) == ({"down_blocks.0.attentions.0": True}, 3e-4, None)
    with pytest.raises(ValueError, match="takes no mask"):
        launch_script.parse_args(["--method", "full", "--mask", str(good)])


def test_method_that_disagrees_with_the_mask_file_is_refused(tmp_path):
    """A DiffFit search result cannot silently train SVDiff; --method memcontrol trains the method it records."""
    mask = {slot: i % 2 == 0 for i, slot in enumerate(TINY_SLOTS)}
    searched = tmp_path / "chosen"
    MemControlConfig(mask=mask, method="difffit", learning_rate=2e-4).save_pretrained(str(searched))
    adapter = tmp_path / "adapter"
    DiffFitConfig(mask=mask).save_pretrained(str(adapter))
    for folder in (searched, adapter):
        path = str(folder / "adapter_config.json")
        with pytest.raises(ValueError, match=r"--method svdiff disagrees with --mask .*'difffit'.*--method difffit"):
            launch_script.parse_args(["--method", "svdiff", "--mask", path])
        trained = build_method(launch_script.parse_args(["--method", "difffit", "--mask", path]))
        assert isinstance(trained, DiffFitConfig) and trained.mask == mask
        recorded = build_method(launch_script.parse_args(["--method", "memcontrol", "--mask", path]))
        assert isinstance(recorded, MemControlConfig) and recorded.method == "difffit" and recorded.mask == mask
    plain = tmp_path / "mask.json"
    plain.write_text(json.dumps(mask))  # a bare mask records no method: any masked method takes it
    assert isinstance(build_method(launch_script.parse_args(["--mask", str(plain)])), SVDiffConfig)


def test_lora_baseline_targets_the_attention_projections_of_diffusers_lora_script():
    config = build_method(launch_script.parse_args(["--method", "lora", "--rank", "8"]))
    assert isinstance(config, LoraConfig) and config.r == 8 and config.lora_alpha == 8
    assert set(config.target_modules) == {"to_q", "to_k", "to_v", "to_out.0"}


def test_every_flag_has_help_and_training_flags_build_the_config():
    parser = launch_script.build_parser()
    flags = [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]
    assert [action.dest for action in flags if not action.help] == []
    fields = {field.name for field in dataclasses.fields(TrainingConfig)}
    assert fields - {action.dest for action in flags} == {"caption_transforms", "show_progress"}
    args = launch_script.parse_args(
        ["--noise_norm_threshold", "AUTO", "--mixed_precision", "bf16", "--ddp_find_unused_parameters"]
        + ["--snr_gamma", "5", "--checkpoints_total_limit", "3", "--max_train_steps", "7"]
    )
    config = config_from_args(TrainingConfig, args)
    expected = TrainingConfig(
        output_dir="sd-model-memcontrol",
        checkpointing_steps=500,
        noise_norm_threshold="auto",
        mixed_precision="bf16",
        ddp_find_unused_parameters=True,
        snr_gamma=5.0,
        checkpoints_total_limit=3,
        num_train_epochs=100,
        max_train_steps=7,
    )
    assert config == expected
    assert args.config == expected  # parse_args builds it, so that a bad setting fails before any model loads
    with pytest.raises(SystemExit):
        launch_script.parse_args(["--noise_norm_threshold", "top"])


def test_push_to_hub_needs_an_adapter():
    with pytest.raises(ValueError, match="--push_to_hub uploads an adapter"):
        launch_script.parse_args(["--method", "full", "--push_to_hub"])


def test_searched_learning_rate_is_the_default(tmp_path):
    """A search's chosen config carries its learning rate; the script trains with it unless told otherwise."""
    chosen = tmp_path / "adapter_config.json"
    chosen.write_text(json.dumps({"mask": {"down_blocks.0.attentions.0": True}, "learning_rate": 3.2e-4}))
    parse_args = launch_script.parse_args
    assert parse_args(["--method", "memcontrol", "--mask", str(chosen)]).learning_rate == 3.2e-4
    assert (
        parse_args(["--method", "memcontrol", "--mask", str(chosen), "--learning_rate", "1e-5"]).learning_rate == 1e-5
    )
    assert parse_args(["--method", "svdiff"]).learning_rate == 1e-4
