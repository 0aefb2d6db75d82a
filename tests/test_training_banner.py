"""The launch script states its run before training, as diffusers' ``train_text_to_image_lora.py`` does, and writes
the same facts into ``training_summary.json``.

The script runs in-process on the embedded tiny pipeline, on a folder of real photos with a ``metadata.csv`` and a
searched mask file that records a learning rate. Every number of the banner is checked against the run's own
settings and an independent count: rows of the CSV, the PEFT model built here from the same mask.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import sys

import pytest
from peft import get_peft_model
from PIL import Image

from peft_memcontrol.cli.train import choose_learning_rate, read_mask_file
from peft_memcontrol.tiny_sd import load_tiny_pipeline
from peft_memcontrol.tuners import MemControlConfig

from helpers.training import TINY_SLOTS


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "train_text_to_image_memcontrol.py")
_spec = importlib.util.spec_from_file_location("train_text_to_image_memcontrol", SCRIPT)
launch_script = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch_script)


def _photo_folder(root: str, num_rows: int) -> str:
    """Real photos from the scikit-image wheel with a ``metadata.csv`` (``file_name``, ``text``)."""
    import skimage.data

    os.makedirs(root)
    names = ["camera", "coins", "astronaut", "moon", "coffee", "chelsea"][:num_rows]
    with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text"])
        for name in names:
            Image.fromarray(getattr(skimage.data, name)()[::8, ::8]).save(os.path.join(root, f"{name}.png"))
            writer.writerow([f"{name}.png", f"a photo of {name}"])
    return root


def test_banner_and_summary_state_the_run(tmp_path, caplog):
    data = _photo_folder(str(tmp_path / "data"), num_rows=5)
    mask = {slot: i % 3 == 0 for i, slot in enumerate(TINY_SLOTS)}
    searched = tmp_path / "knee.json"
    searched.write_text(json.dumps({"mask": mask, "method": "svdiff", "learning_rate": 3e-3}))
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    launch_script.main(
        ["--train_data_dir", data, "--method", "memcontrol", "--mask", str(searched), "--output_dir", str(out)]
        + ["--max_train_steps", "2", "--train_batch_size", "3", "--gradient_accumulation_steps", "2"]
        + ["--report_to", "none"]
    )
    # accelerate's logger marks each line with the process that logged it
    logged = [record.getMessage().removeprefix("[RANK 0] ") for record in caplog.records]
    start = logged.index("***** Running training *****")
    banner = logged[start : start + 11]

    with open(os.path.join(data, "metadata.csv")) as f:
        num_rows = sum(1 for _ in csv.DictReader(f))
    total_batch = 3 * 1 * 2  # per device x processes x accumulation
    # diffusers: ceil(ceil(5 rows / 3 per batch) / 1 process) = 2 batches, ceil(2 / 2 accumulated) = 1 step per epoch
    steps_per_epoch = 1
    epochs = 2  # the 2 steps start 2 passes over the data
    unet = load_tiny_pipeline().unet
    unet_parameters = sum(parameter.numel() for parameter in unet.parameters())
    model = get_peft_model(unet, MemControlConfig(mask=mask, method="svdiff"))
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    units_on = sum(mask.values())
    assert 0 < units_on < len(mask) == len(TINY_SLOTS)
    assert banner == [
        "***** Running training *****",
        f"  Num examples = {num_rows}",
        f"  Num Epochs = {epochs}",
        "  Instantaneous batch size per device = 3",
        f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch}",
        "  Gradient Accumulation steps = 2",
        "  Total optimization steps = 2",
        "  Method = memcontrol (svdiff)",
        f"  Mask = {units_on} of {len(mask)} units on, from {searched}",
        f"  Learning rate = 0.003 (from the searched mask file {searched})",
        f"  Trainable parameters = {trainable:,} ({trainable / unet_parameters:.4%} of the UNet's "
        f"{unet_parameters:,})",
    ]

    summary = json.loads((out / "training_summary.json").read_text())
    assert summary == {
        "num_examples": num_rows,
        "num_epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "train_batch_size": 3,
        "num_processes": 1,
        "gradient_accumulation_steps": 2,
        "total_train_batch_size": total_batch,
        "max_train_steps": 2,
        "method": "memcontrol (svdiff)",
        "mask_units_on": units_on,
        "mask_units": len(mask),
        "mask_file": str(searched),
        "learning_rate": 3e-3,
        "learning_rate_source": f"from the searched mask file {searched}",
        "trainable_parameters": trainable,
        "unet_parameters": unet_parameters,
        "trainable_share": pytest.approx(trainable / unet_parameters),
        "global_step": 2,
        "epochs_run": epochs,
        "final_loss": summary["final_loss"],
        "dropped_samples": 0,
    }
    assert math.isfinite(summary["final_loss"])


def test_the_learning_rate_says_where_it_came_from(tmp_path):
    searched = tmp_path / "knee.json"
    searched.write_text(json.dumps({"mask": {TINY_SLOTS[0]: True}, "method": "svdiff", "learning_rate": 3e-3}))
    choose = choose_learning_rate
    mask_file = read_mask_file(str(searched))
    assert choose(2e-4, mask_file) == (2e-4, "from --learning_rate")
    assert choose(None, mask_file) == (3e-3, f"from the searched mask file {searched}")
    assert choose(None, None) == (1e-4, "the default")
