"""Chunked nearest-neighbour search vs the naive full similarity matrix: time and peak memory.

Each case runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own; the reported peak is
above the memory of the inputs, which both methods share. Usage:

    OMP_NUM_THREADS=1 python benchmarks/bench_nearest_neighbours.py --output benchmarks/results/nearest_neighbours.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from _results import publish

from peft_memcontrol.metrics import nearest_neighbours


CASES = [(1_000, 10_000), (1_000, 50_000), (10_000, 10_000), (10_000, 50_000), (10_000, 100_000)]


def run_case(method: str, num_generated: int, num_training: int, dim: int) -> dict:
    """Runs one search in this process; returns seconds and peak memory above the inputs, in MiB."""
    generator = torch.Generator().manual_seed(0)
    generated = torch.randn(num_generated, dim, generator=generator)
    training = torch.randn(num_training, dim, generator=generator)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if method == "chunked":
        nearest_neighbours(generated, training)
    else:
        normalized_generated = torch.nn.functional.normalize(generated, dim=1)
        normalized_training = torch.nn.functional.normalize(training, dim=1)
        (normalized_generated @ normalized_training.T).max(dim=1)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mib": (peak - baseline) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--output", default=None, help="write a markdown table here")
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), int(args.case[2]), args.dim)))
        return
    rows = []
    for num_generated, num_training in CASES:
        row = {"generated": num_generated, "training": num_training}
        for method in ("chunked", "naive"):
            command = [sys.executable, __file__, "--dim", str(args.dim), "--case", method]
            output = subprocess.run(
                command + [str(num_generated), str(num_training)], capture_output=True, text=True, check=True
            )
            row[method] = json.loads(output.stdout)
        rows.append(row)
        print(row, flush=True)
    lines = [
        "# Nearest-neighbour search: chunked vs naive full matrix",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} CPUs (shared), torch {__import__('torch').__version__}",
        f"- features: float32, d = {args.dim}; chunks 1024 x 8192 (the defaults)",
        f"- command: `OMP_NUM_THREADS=1 python benchmarks/bench_nearest_neighbours.py --dim {args.dim}"
        + (f" --output {args.output}`" if args.output else "`"),
        "- peak memory: growth of the process's peak resident memory during the search, above the inputs",
        "",
        "| generated | training | chunked s | chunked peak MiB | naive s | naive peak MiB | full matrix MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        matrix = row["generated"] * row["training"] * 4 / 2**20
        lines.append(
            f"| {row['generated']:,} | {row['training']:,} | {row['chunked']['seconds']:.2f} | "
            f"{row['chunked']['peak_mib']:.0f} | {row['naive']['seconds']:.2f} | {row['naive']['peak_mib']:.0f} | "
            f"{matrix:.0f} |"
        )
    publish("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
