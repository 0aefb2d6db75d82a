#!/usr/bin/env python
"""``torch.compile`` of each method's adapted UNet against eager, side by side in one run, with PEFT's LoRA r=4.

For every variant (the frozen UNet, LoRA r=4 on every Linear/Conv2d, and the four methods with random adapter
values): graphs and graph breaks Dynamo finds (``torch._dynamo.explain``), the compile time (the first compiled
call, inductor), and the median time of a forward pass and of a training step (forward + backward), eager and
compiled. Variants run one after another in this process, one thread; repetitions of eager and compiled calls
interleave. Outputs of the compiled model are checked against eager ones::

    python benchmarks/bench_compile.py --output benchmarks/results/compile_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import torch
from _results import publish
from bench_adapters import UNETS, build_unet, inputs, svdiff_targets
from peft import LoraConfig, get_peft_model

import peft_memcontrol as pm


VARIANTS = ["frozen", "lora-r4", *pm.METHODS]


def adapted(size: str, variant: str) -> torch.nn.Module:
    """The ``size`` UNet with ``variant`` applied, adapter values random (a trained adapter, not the identity)."""
    unet = build_unet(size, "cpu", torch.float32)
    if variant == "frozen":
        return unet.requires_grad_(False)
    torch.manual_seed(1)
    if variant == "lora-r4":
        config = LoraConfig(r=4, lora_alpha=4, target_modules=svdiff_targets(unet), init_lora_weights=False)
        return get_peft_model(unet, config)
    config_cls, _ = pm.METHODS[variant]
    return get_peft_model(unet, config_cls(init_weights=False))


def forward(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).sample


def train_step(model: torch.nn.Module, batch: dict) -> None:
    model(**batch).sample.square().mean().backward()


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def measure(size: str, variant: str, batch: dict, repetitions: int) -> dict:
    model = adapted(size, variant)
    explanation = torch._dynamo.explain(model)(**batch)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    start = time.perf_counter()
    compiled_output = forward(compiled, batch)
    compile_forward = time.perf_counter() - start
    start = time.perf_counter()
    if variant != "frozen":
        train_step(compiled, batch)
    compile_train = time.perf_counter() - start
    eager_output = forward(model, batch)
    difference = (compiled_output - eager_output).abs().max().item()
    times: dict[str, list[float]] = {
        "eager forward": [],
        "compiled forward": [],
        "eager step": [],
        "compiled step": [],
    }
    for _ in range(repetitions):
        times["eager forward"].append(timed(forward, model, batch))
        times["compiled forward"].append(timed(forward, compiled, batch))
        if variant != "frozen":
            times["eager step"].append(timed(train_step, model, batch))
            times["compiled step"].append(timed(train_step, compiled, batch))
    median = {name: sorted(values)[len(values) // 2] if values else float("nan") for name, values in times.items()}
    torch._dynamo.reset()
    return {
        "graphs": explanation.graph_count,
        "breaks": explanation.graph_break_count,
        "compile s": compile_forward + compile_train,
        "max |compiled - eager|": difference,
        **median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=sorted(UNETS))
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch = inputs(args.size, args.batch_size, "cpu", torch.float32)
    rows = {variant: measure(args.size, variant, batch, args.repetitions) for variant in args.variants}

    lines = [
        "# torch.compile vs eager, per method",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, torch {torch.__version__}, 1 thread, wall time (`time.perf_counter`)",
        f"- command: `python benchmarks/bench_compile.py --size {args.size} --batch_size {args.batch_size} "
        f"--repetitions {args.repetitions}`",
        f"- model: the {args.size} UNet of `bench_adapters.py`, batch {args.batch_size}; adapters with random values;"
        " `torch.compile` defaults (inductor); medians of interleaved repetitions; compile s = the first compiled"
        " forward plus the first compiled training step",
        "",
        "| variant | graphs | graph breaks | compile s | eager forward s | compiled forward s | compiled / eager "
        "| eager step s | compiled step s | compiled / eager | max abs difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, row in rows.items():
        lines.append(
            f"| {variant} | {row['graphs']} | {row['breaks']} | {row['compile s']:.1f} | {row['eager forward']:.4f} "
            f"| {row['compiled forward']:.4f} | {row['compiled forward'] / row['eager forward']:.2f} "
            f"| {row['eager step']:.4f} | {row['compiled step']:.4f} "
            f"| {row['compiled step'] / row['eager step']:.2f} | {row['max |compiled - eager|']:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    publish(text, args.output)


if __name__ == "__main__":
    main()
