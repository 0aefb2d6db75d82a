#!/usr/bin/env python
"""Does full fine-tuning copy at a smaller demo budget? The demo's full fine-tuning row alone, at other step counts,
batch sizes or learning rates, trained and scored as the demo does (`FullFineTune`, calibrated once).

The demo's verdict needs a setting where full fine-tuning regenerates training images; this measures how much of
the default budget (200 steps of batch 8) that takes, on the demo's digits and seed::

    python benchmarks/demo_budget.py --runs 200x8 150x8 200x4 300x4 200x4@2e-3 --output benchmarks/results/demo_budget_cpu.md

Each run is ``STEPSxBATCH`` with an optional ``@LEARNING_RATE`` (default: the demo's for full fine-tuning).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
from dataclasses import replace

import torch
from _results import publish

from peft_memcontrol.demo.config import DemoConfig
from peft_memcontrol.demo.data import build_domain
from peft_memcontrol.demo.runner import DEMO_RESOLUTION, baseline_specs, calibrate_domain, demo_training
from peft_memcontrol.evaluation import load_evaluation_data
from peft_memcontrol.search import FullFineTune


def parse_run(text: str) -> tuple[int, int, float | None]:
    """``"200x8"`` or ``"200x4@2e-3"`` -> (steps, batch, learning rate or ``None``)."""
    budget, _, rate = text.partition("@")
    steps, batch = (int(value) for value in budget.split("x"))
    return steps, batch, float(rate) if rate else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["200x8", "150x8", "200x4"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    torch.set_num_threads(1)
    config = DemoConfig(seed=args.seed, progress=False)
    lines = [
        "# Full fine-tuning at smaller demo budgets: does it still copy?",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, torch {torch.__version__}, 1 thread",
        f"- command: `python benchmarks/demo_budget.py --runs {' '.join(args.runs)} --seed {args.seed}`",
        "- the demo's digits (3 images duplicated 30 times), its full fine-tuning row and evaluation; every number but "
        "the training time is seeded",
        "",
        "| steps | batch | learning rate | extracted | flagged | AMD | KID | train s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        dataset = build_domain(config.domain, os.path.join(folder, "data"), config)
        data, settings = load_evaluation_data(dataset), config.evaluation_settings(config.domain)
        runner = FullFineTune(
            dataset.train_dir, data, settings, DEMO_RESOLUTION, calibration=calibrate_domain(data, settings)
        )
        for index, text in enumerate(args.runs):
            steps, batch, rate = parse_run(text)
            run_config = replace(config, max_train_steps=steps, train_batch_size=batch)
            spec = baseline_specs(run_config)[0]
            spec = replace(spec, learning_rate=rate or spec.learning_rate)
            run = runner.run(spec.method, demo_training(spec, os.path.join(folder, f"run-{index}"), run_config))
            row = run.scores.table_values()
            lines.append(
                f"| {steps} | {batch} | {spec.learning_rate:g} | {row['extracted']} | {row['flagged']} "
                f"| {row['amd']:.4f} | {row['kid']:.4f} | {run.train_seconds:.0f} |"
            )
            print(lines[-1], flush=True)
    publish("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
