#!/usr/bin/env python
"""Trainer throughput: optimizer steps per second with each adapter vs full fine-tuning, on the tiny pipeline.

Runs the project's one trainer (``MemControlTrainer``) exactly as the launch script and the search do, on
synthetic 32 x 32 images, and times the steps after a warm-up. Uses the GPU when one is visible (Accelerate picks
the device), else the CPU. Writes a Markdown table::

    python benchmarks/bench_trainer.py --steps 10 --batch_size 8 --output benchmarks/results/trainer_cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch
from _results import publish
from peft import LoraConfig

from peft_memcontrol.tiny_sd import load_tiny_pipeline
from peft_memcontrol.training import ImageCaptionDataset
from peft_memcontrol.tuners import DiffFitConfig, MaskedAttentionConfig, SVDiffConfig


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from helpers.images import synthetic_images  # noqa: E402  (the tests' helpers, on the path above)
from helpers.training import make_trainer  # noqa: E402


def method_configs() -> dict:
    """Method name -> trainer ``method`` argument."""
    return {
        "full": "full",
        "svdiff": SVDiffConfig(),
        "difffit": DiffFitConfig(),
        "masked_attention": MaskedAttentionConfig(),
        "lora (r=4)": LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
    }


def bench(name: str, method, dataset, steps: int, warmup: int, batch_size: int, threshold, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = make_trainer(
            dataset, method, out, max_train_steps=warmup, train_batch_size=batch_size, noise_norm_threshold=threshold
        )
        setup = time.perf_counter() - start
        trainer.train()  # warm-up
        elapsed = float("inf")
        for _ in range(repeats):  # best of `repeats` timed segments: robust to other load on a shared machine
            trainer.config.max_train_steps += steps
            if trainer.accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train()
            if trainer.accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = min(elapsed, time.perf_counter() - start)
        trainable = sum(p.numel() for p in trainer.trainable_parameters().values())
        device = str(trainer.accelerator.device)
    return {
        "method": name,
        "steps_per_s": steps / elapsed,
        "setup_s": setup,
        "trainable": trainable,
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="Timed segments per method; the best is reported.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--methods", default=None, help="Comma-separated subset of the method names.")
    parser.add_argument("--noise_norm_threshold", default=None, help="Also time threshold filtering ('auto').")
    parser.add_argument("--output", default=None, help="Markdown file to write.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = ImageCaptionDataset(synthetic_images(64), [f"a photo of thing {i}" for i in range(64)], resolution=32)
    configs = method_configs()
    names = args.methods.split(",") if args.methods else list(configs)
    rows = []
    for name in names:
        row = bench(
            name,
            configs[name],
            dataset,
            args.steps,
            args.warmup,
            args.batch_size,
            args.noise_norm_threshold,
            args.repeats,
        )
        rows.append(row)
        print(f"{name}: {row['steps_per_s']:.2f} steps/s ({row['trainable']:,} trainable)", flush=True)

    total = sum(p.numel() for p in load_tiny_pipeline().unet.parameters())
    full = next((r["steps_per_s"] for r in rows if r["method"] == "full"), None)
    lines = [
        f"# Trainer throughput ({rows[0]['device']}, tiny pipeline)",
        "",
        f"Command: `python benchmarks/bench_trainer.py --steps {args.steps} --repeats {args.repeats} "
        f"--batch_size {args.batch_size}"
        + (f" --threads {args.threads}" if args.threads else "")
        + (f" --noise_norm_threshold {args.noise_norm_threshold}" if args.noise_norm_threshold else "")
        + "`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; batch {args.batch_size} of 32 x 32 images, {args.warmup} warm-up steps, "
        f"then the best of {args.repeats} segments of {args.steps} timed steps (VAE encode + text encode + UNet "
        f"forward/backward + AdamW). Load average at the end: {os.getloadavg()[0]:.1f}.",
        "",
        "| method | steps/s | vs full | trainable params | setup s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = f"{r['steps_per_s'] / full:.2f}x" if full else "-"
        lines.append(
            f"| {r['method']} | {r['steps_per_s']:.2f} | {ratio} | {r['trainable']:,} / {total:,} "
            f"| {r['setup_s']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    publish(text, args.output)


if __name__ == "__main__":
    main()
