#!/usr/bin/env python
"""Memory of SVDiff's SVD factors on SD-1.5 and SDXL, and the cost of computing them, measured per weight shape.

The factors ``U (out x k)``, ``s (k)``, ``Vh (k x in)`` of every adapted weight are held in float32 by the SVDiff
layers (`spectral_factor_bytes`). Their size follows from the shapes, so the full models are counted on the meta
device (no weights allocated); one real weight per distinct shape of SD-1.5 is then decomposed, to check that the
bytes a layer holds equal the count and to time the decomposition on this machine::

    python benchmarks/bench_svd_memory.py --output benchmarks/results/svd_memory.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from collections import Counter

import torch
from _results import publish
from torch import nn

from peft_memcontrol import SD15_UNET_CONFIG, SDXL_UNET_CONFIG, SVDiffConfig, meta_unet
from peft_memcontrol.svd import weight_matrix
from peft_memcontrol.tuners import SVDiffLayer, SVDiffModel


def factor_bytes(shape: tuple[int, int]) -> int:
    rows, columns = shape
    rank = min(rows, columns)
    return 4 * (rows * rank + rank + rank * columns)


def adapted_shapes(unet: nn.Module) -> Counter:
    """Matrix shape SVDiff decomposes -> how many weights have it (every Linear/Conv2d, norms as 1 x C rows)."""
    modules = dict(unet.named_modules())
    shapes = Counter()
    for path, components in SVDiffModel.plan(unet, SVDiffConfig()).modules.items():
        weight = modules[path].weight
        shapes[tuple(weight_matrix(weight, as_row="norm_shift" in components).shape)] += 1
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    lines = [
        "# SVDiff's SVD factors: memory and set-up",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, torch {torch.__version__}, 1 thread",
        "- command: `python benchmarks/bench_svd_memory.py --output benchmarks/results/svd_memory.md`",
        "- factors are float32 (`U`, `s`, `Vh` of each adapted weight; norms as 1 x C rows); counted on the meta device",
        "",
        "| UNet | adapted weights | distinct shapes | UNet parameters | factors GiB | vs fp16 UNet | vs fp32 UNet |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    sd15_shapes = None
    for name, config in (("SD-1.5", SD15_UNET_CONFIG), ("SDXL", SDXL_UNET_CONFIG)):
        unet = meta_unet(config)
        shapes = adapted_shapes(unet)
        sd15_shapes = sd15_shapes or shapes
        parameters = sum(parameter.numel() for parameter in unet.parameters())
        total = sum(count * factor_bytes(shape) for shape, count in shapes.items())
        lines.append(
            f"| {name} | {sum(shapes.values())} | {len(shapes)} | {parameters:,} | {total / 2**30:.2f} "
            f"| {total / (2 * parameters):.2f}x | {total / (4 * parameters):.2f}x |"
        )

    lines += [
        "",
        "One real weight per distinct SD-1.5 shape, decomposed here (random float32 weights; a layer holds exactly the "
        "bytes counted above):",
        "",
        "| shape (out x in) | weights of this shape | factor MiB each | decomposition s |",
        "|---|---:|---:|---:|",
    ]
    total_seconds = 0.0
    for shape, count in sorted(sd15_shapes.items(), key=lambda item: -factor_bytes(item[0])):
        rows, columns = shape
        layer_base = nn.Linear(columns, rows, bias=False)
        start = time.process_time()
        layer = SVDiffLayer(layer_base, "default", SVDiffConfig(), frozenset({"spectral"}))
        seconds = time.process_time() - start
        assert layer.spectral_factors.nbytes == factor_bytes(shape), shape
        total_seconds += count * seconds
        lines.append(f"| {rows} x {columns} | {count} | {factor_bytes(shape) / 2**20:.2f} | {seconds:.2f} |")
    lines += ["", f"All of SD-1.5's weights, from the per-shape times: {total_seconds:.0f} CPU-seconds on one thread."]
    text = "\n".join(lines) + "\n"
    publish(text, args.output)


if __name__ == "__main__":
    main()
