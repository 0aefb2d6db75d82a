#!/usr/bin/env python
"""How precise SVDiff's SVD factors must be stored: the error of the adapted weight and of a layer's output when
``U`` and ``Vh`` are kept in float16 or bfloat16 (``s`` in float32, the arithmetic in float32) instead of float32, at
real SD-1.5 layer shapes with random weights, next to the error a half-precision base weight already has.

The factors reach the output only through the change ``U diag(relu(s + d) - s) Vh``, so their rounding error scales
with the shifts, not with the weight. The reference is the adapted weight in float64 from a float64 SVD; each variant
is computed as SVDiff's routes compute it: the rebuild route (and the inference cache) forms ``W + (U * change) @ Vh``
in float32, the factorized route computes ``x W^T + ((x Vh^T) * change) U^T`` in float32 (a convolution as its
``out x in*kh*kw`` matrix on unfolded patches, the same arithmetic)::

    python benchmarks/bench_factor_dtype.py --output benchmarks/results/factor_dtype.md
"""

from __future__ import annotations

import argparse
import datetime
import platform

import torch
from _results import publish
from torch import nn

from peft_memcontrol.svd import spectral_factors, weight_matrix


SHAPES = {
    # name -> a layer of SD-1.5 with that weight shape (random init)
    "attn1 Q/K/V/out, 320 ch (320 x 320)": lambda: nn.Linear(320, 320),
    "cross-attn K/V, 768 -> 320 (320 x 768)": lambda: nn.Linear(768, 320),
    "attn Q/K/V/out, 1280 ch (1280 x 1280)": lambda: nn.Linear(1280, 1280),
    "GEGLU proj, 1280 -> 10240 (10240 x 1280)": lambda: nn.Linear(1280, 10240),
    "resnet conv 3x3, 1280 ch (1280 x 11520)": lambda: nn.Conv2d(1280, 1280, 3, padding=1),
}
SHIFTS = (0.01, 0.1, 1.0)
"""Relative size of the shifts: ``d ~ N(0, (shift * s)^2)`` per singular value."""
HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}
TOKENS = 64


def relative(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return ((estimate.double() - reference).norm() / reference.norm()).item()


def measure(matrix: torch.Tensor, shift: float, generator: torch.Generator) -> dict[str, float]:
    """Relative errors of the adapted weight (rebuild route) and output (factorized route) per factor dtype, and of
    the adapted weight rounded to a half-precision base, against float64."""
    exact_u, exact_s, exact_vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    u, s, vh = spectral_factors(matrix)  # the package's float32 factors (Gram route for large weights)
    change = torch.relu(s + shift * s * torch.randn(s.shape, generator=generator)) - s
    delta = (exact_u * change.double()) @ exact_vh
    adapted = matrix.double() + delta
    x = torch.randn(TOKENS, matrix.shape[1], generator=generator)
    output = x.double() @ adapted.T
    results = {"delta / W": (delta.norm() / matrix.double().norm()).item()}
    for name, dtype in {"float32": torch.float32, **HALF}.items():
        stored_u, stored_vh = u.to(dtype).float(), vh.to(dtype).float()
        rebuilt = matrix + (stored_u * change) @ stored_vh
        factorized = x @ matrix.T + ((x @ stored_vh.T) * change) @ stored_u.T
        results[f"weight {name}"] = relative(rebuilt, adapted)
        results[f"output {name}"] = relative(factorized, output)
    grad = torch.randn(TOKENS, matrix.shape[0], generator=generator)
    exact_grad = grad.double() @ adapted
    for name, dtype in HALF.items():
        stored_u, stored_vh = u.to(dtype).float(), vh.to(dtype).float()
        back = grad @ stored_u
        results[f"grad x {name}, W from factors"] = relative((back * (s + change)) @ stored_vh, exact_grad)
        results[f"grad x {name}, W + change"] = relative(grad @ matrix + (back * change) @ stored_vh, exact_grad)
    for name, dtype in HALF.items():
        results[f"base weight {name}"] = relative(adapted.to(dtype), adapted)
        results[f"base output {name}"] = relative(x.to(dtype).double() @ adapted.to(dtype).double().T, output)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    columns = ["delta / W"] + [f"{kind} {name}" for kind in ("weight", "output") for name in ("float32", *HALF)]
    columns += [f"grad x {name}, {route}" for name in HALF for route in ("W from factors", "W + change")]
    columns += [f"base {kind} {name}" for name in HALF for kind in ("weight", "output")]
    lines = [
        "# SVDiff's SVD factors in half precision: error of the adapted weight and output",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, torch {torch.__version__}, 1 thread",
        "- command: `python benchmarks/bench_factor_dtype.py --output benchmarks/results/factor_dtype.md`",
        "- weights: SD-1.5 layer shapes, PyTorch's default random init (seed 0); conv kernels as `out x in*kh*kw`",
        "- shifts: `d ~ N(0, (shift * s)^2)` per singular value; the change is `relu(s + d) - s`",
        "- reference: the adapted weight `W + U diag(change) Vh` in float64 from a float64 SVD; output on "
        f"{TOKENS} random input tokens",
        "- `weight <dtype>`: the rebuild route (and inference cache), `W + (U * change) @ Vh` in float32 with `U`, "
        "`Vh` stored in `<dtype>` and upcast; `output <dtype>`: the factorized route, "
        "`x W^T + ((x Vh^T) * change) U^T` in float32; `float32` is today's factors (the package's Gram/LAPACK route)",
        "- `grad x <dtype>, <route>`: the factorized route's input gradient for a random output gradient `g`, as its "
        "backward forms it: `W from factors` is `((g U) * (s + change)) Vh` (float32 factors rebuild `W`), "
        "`W + change` is `g W + ((g U) * change) Vh`",
        "- `base <kind> <dtype>`: the error a half-precision model already has: the exact adapted weight (and the "
        "input) rounded to `<dtype>`, the output then computed exactly",
        "- all numbers: relative Frobenius error `||estimate - reference|| / ||reference||`",
        "",
        "| layer | shift | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for name, make in SHAPES.items():
        matrix = weight_matrix(make().weight.detach())
        for shift in SHIFTS:
            results = measure(matrix, shift, generator)
            lines.append(f"| {name} | {shift} | " + " | ".join(f"{results[key]:.1e}" for key in columns) + " |")
            print(lines[-1], flush=True)

    text = "\n".join(lines) + "\n"
    publish(text, args.output)


if __name__ == "__main__":
    main()
