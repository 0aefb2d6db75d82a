#!/usr/bin/env python
"""SVDiff's SVD set-up of the whole SD-1.5 UNet paid once per machine: the first process decomposes every weight into
a disk cache (`SpectralFactorPool(cache_dir=...)`), a second process loads the factors from it.

Each step runs in its own subprocess (a fresh interpreter, as a search worker or a restarted run is), on SD-1.5's
UNet configuration with seeded random weights (the same in both processes, so the cache's content keys match), one
thread::

    python benchmarks/bench_svd_cache.py --output benchmarks/results/svd_cache_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch
from _results import publish
from diffusers import UNet2DConditionModel
from peft import get_peft_model

import peft_memcontrol as pm
from peft_memcontrol.counting import SD15_UNET_CONFIG


def apply_svdiff(cache_dir: str) -> dict[str, float]:
    """In this process: build the seeded UNet, apply SVDiff inside a pool on ``cache_dir``; CPU and wall seconds."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    cpu, wall = time.process_time(), time.perf_counter()
    with pm.SpectralFactorPool(cache_dir):
        model = get_peft_model(unet, pm.SVDiffConfig())
    return {
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "factor_bytes": pm.spectral_factor_bytes(model),
    }


def in_subprocess(cache_dir: str) -> dict[str, float]:
    """`apply_svdiff` in a fresh interpreter."""
    command = [sys.executable, __file__, "--child", cache_dir]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(apply_svdiff(args.child)))
        return
    with tempfile.TemporaryDirectory() as cache_dir:
        first = in_subprocess(cache_dir)
        second = in_subprocess(cache_dir)
        on_disk = sum(entry.stat().st_size for entry in os.scandir(cache_dir))
    lines = [
        "# SVDiff's SVD set-up of SD-1.5's UNet: decomposed once, loaded by the next process",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread",
        "- command: `python benchmarks/bench_svd_cache.py`",
        "- model: SD-1.5 UNet configuration (`SD15_UNET_CONFIG`), seeded random weights, float32; SVDiff on every "
        "layer (`SVDiffConfig()`), applied inside `SpectralFactorPool(cache_dir)`; each process a fresh interpreter; "
        "times cover `get_peft_model` only (not building the UNet)",
        "",
        "| process | CPU s | wall s |",
        "|---|---:|---:|",
        f"| first: decomposes every weight, writes the cache | {first['cpu_s']:.1f} | {first['wall_s']:.1f} |",
        f"| second: loads and checks the cached factors | {second['cpu_s']:.1f} | {second['wall_s']:.1f} |",
        "",
        f"Factors in memory {first['factor_bytes'] / 2**30:.2f} GiB, cache on disk {on_disk / 2**30:.2f} GiB.",
    ]
    publish("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
