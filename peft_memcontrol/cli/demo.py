"""``memcontrol demo``: the paper's experiment in miniature (`peft_memcontrol.demo`)."""

from __future__ import annotations

import argparse
import os

import torch

from ..demo import runner as demo_runner
from ..demo.config import DemoConfig


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo with the preset and overrides of the flags; prints the table and the report's paths."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device != "cuda":
        torch.set_num_threads(1)  # tiny models: threads only add contention
    overrides = {
        name: getattr(args, name)
        for name in (
            "seed",
            "device",
            "max_train_steps",
            "train_batch_size",
            "num_generations",
            "num_inference_steps",
            "population_size",
            "generations",
            "search_train_steps",
            "fidelity_front",
            "fidelity_other",
            "num_workers",
        )
    }
    config = DemoConfig.preset_config("quick" if args.quick else "default", progress=not args.no_progress, **overrides)
    if args.seeds:
        summary = demo_runner.run_demo_seeds(config, args.seeds, args.output_dir)
    else:
        summary = demo_runner.run_demo(config, args.output_dir)
    with open(summary["paths"]["results.md"], encoding="utf-8") as handle:
        print(handle.read())
    print(f"Report in {os.path.abspath(args.output_dir)} ({summary['seconds']:.0f} s)")
    return 0
