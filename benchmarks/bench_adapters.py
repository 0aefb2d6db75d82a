#!/usr/bin/env python
"""Adapter costs, side by side in one run: training step time and peak memory of each method vs full fine-tuning vs
PEFT's LoRA (r=4) on the same targets; inference time after merging vs the base model; SVD set-up time.

Every case runs in its own subprocess so that its peak resident memory is its own. The same script runs unchanged
on a GPU (``--device cuda --dtype float16``; peak memory is then CUDA's)::

    python benchmarks/bench_adapters.py --output benchmarks/results/adapters_cpu.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
from _results import publish
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model

import peft_memcontrol as pm
from peft_memcontrol import SD15_UNET_CONFIG


UNETS = {
    # the tiny test UNet (SD-1.5 slot layout, 2.45 M parameters), latents 16 x 16
    "tiny": (
        {
            "block_out_channels": (32, 32, 64, 64),
            "norm_num_groups": 8,
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
        },
        16,
        32,
    ),
    # a larger UNet with the same layout that still trains on a 2-core CPU, latents 32 x 32
    "medium": (
        {
            "block_out_channels": (64, 128, 256, 256),
            "norm_num_groups": 32,
            "cross_attention_dim": 128,
            "attention_head_dim": 8,
        },
        32,
        128,
    ),
    # Stable Diffusion v1.5's UNet (859 M parameters), latents 64 x 64
    "sd15": ({}, 64, 768),
}
METHODS = ["full", "lora-r4", *pm.METHODS]


def build_unet(size: str, device: str, dtype: torch.dtype):
    overrides, sample_size, _ = UNETS[size]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**SD15_UNET_CONFIG, **overrides, "sample_size": sample_size})
    return unet.to(device=device, dtype=dtype)


def svdiff_targets(unet) -> list[str]:
    return [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def apply_method(unet, method: str):
    if method == "full":
        unet.requires_grad_(True)
        return unet
    if method == "lora-r4":
        return get_peft_model(unet, LoraConfig(r=4, lora_alpha=4, target_modules=svdiff_targets(unet)))
    config_cls, _ = pm.METHODS[method]
    return get_peft_model(unet, config_cls())


def inputs(size: str, batch: int, device: str, dtype: torch.dtype) -> dict:
    _, sample_size, cross = UNETS[size]
    generator = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(batch, 4, sample_size, sample_size, generator=generator).to(device, dtype),
        "timestep": torch.tensor([500] * batch, device=device),
        "encoder_hidden_states": torch.randn(batch, 77, cross, generator=generator).to(device, dtype),
    }


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(args) -> dict:
    """One measurement in this process: ``train`` (step time, memory), ``infer`` or ``setup``."""
    dtype = getattr(torch, args.dtype)
    unet = build_unet(args.size, args.device, dtype)
    batch = inputs(args.size, args.batch_size, args.device, dtype)
    if args.case == "setup":
        start = time.perf_counter()
        apply_method(unet, "svdiff")
        synchronize(args.device)
        return {"seconds": time.perf_counter() - start}
    if args.case == "infer":
        # base and merged model side by side in one process, calls interleaved, so that machine noise hits both
        merged = apply_method(copy.deepcopy(unet), args.method).merge_and_unload().eval()
        unet.eval()
        times = {"base": [], "merged": []}
        with torch.no_grad():
            for step in range(args.warmup + args.steps):
                for name, model in (("base", unet), ("merged", merged)):
                    start = time.perf_counter()
                    model(**batch)
                    synchronize(args.device)
                    if step >= args.warmup:
                        times[name].append(time.perf_counter() - start)
        return {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    model = apply_method(unet, args.method)
    model.train()
    optimizer = torch.optim.AdamW(pm.adapter_param_groups(model, 1e-4))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch).sample.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(args.device)
        times.append(time.perf_counter() - start)
    measured = times[args.warmup :]
    return {
        "seconds": sorted(measured)[len(measured) // 2],
        "peak_mib": peak_memory_mib(args.device),
        "trainable": trainable,
    }


def subprocess_case(args, **case) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
    ]
    for key, value in case.items():
        command += [f"--{key}", str(value)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "medium"], choices=sorted(UNETS))
    parser.add_argument("--setup_size", default="sd15", choices=sorted(UNETS), help="UNet for the SVD set-up time.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per case (1 is steadiest on a shared machine)."
    )
    parser.add_argument("--output", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_case(args)))
        return

    lines = [
        "# Adapter costs: training step, memory, merged inference, SVD set-up",
        "",
        f"- date: {datetime.date.today()}",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s), device {args.device}, {args.dtype}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""),
        f"- command: `python benchmarks/bench_adapters.py {' '.join(sys.argv[1:])}`",
        f"- batch {args.batch_size}; median of {args.steps} steps after {args.warmup} warm-up steps; each case in its own process",
        "- LoRA (r=4) targets the same modules as SVDiff (every Linear and Conv2d)",
        "",
    ]
    for size in args.sizes:
        rows = {
            method: subprocess_case(
                args,
                case="train",
                size=size,
                method=method,
                batch_size=args.batch_size,
                steps=args.steps,
                warmup=args.warmup,
            )
            for method in METHODS
        }
        full, lora = rows["full"], rows["lora-r4"]
        lines += [
            f"## Training step, `{size}` UNet",
            "",
            "| method | trainable | step s | vs full | vs LoRA | peak MiB | vs full |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for method, row in rows.items():
            lines.append(
                f"| {method} | {row['trainable']:,} | {row['seconds']:.3f} | {row['seconds'] / full['seconds']:.2f}x "
                f"| {row['seconds'] / lora['seconds']:.2f}x | {row['peak_mib']:.0f} | {row['peak_mib'] / full['peak_mib']:.2f}x |"
            )
        lines += [
            "",
            f"## Inference after merge_and_unload, `{size}` UNet",
            "",
            "base and merged model in one process, calls interleaved; median forward time",
            "",
            "| method | base s | merged s | merged / base |",
            "|---|---:|---:|---:|",
        ]
        for method in pm.METHODS:
            row = subprocess_case(
                args,
                case="infer",
                size=size,
                method=method,
                batch_size=args.batch_size,
                steps=args.steps * 4,
                warmup=args.warmup,
            )
            lines.append(
                f"| {method} | {row['base']:.4f} | {row['merged']:.4f} | {row['merged'] / row['base']:.3f}x |"
            )
        lines.append("")
    setup = subprocess_case(args, case="setup", size=args.setup_size, batch_size=1, steps=0, warmup=0)
    lines += [
        f"## SVD set-up, `{args.setup_size}` UNet",
        "",
        f"`get_peft_model(unet, SVDiffConfig())`, all layers decomposed: {setup['seconds']:.1f} s",
        "",
    ]
    text = "\n".join(lines)
    publish(text, args.output)


if __name__ == "__main__":
    main()
