#!/usr/bin/env python
"""A training step of each SD-1.5 UNet layer shape at the token counts of 64x64 latents, per method, beside the
multiply-add analysis.

Issue 17's goal is an SVDiff step at or under a full fine-tuning step at every SD-1.5 layer. The analysis in
docs/quickstart.md ("What exactness costs") counts multiply-adds for a layer with weight ``n x m`` (a conv kernel
reshaped to ``out x in*kh*kw``), rank ``k = min(n, m)`` and ``T`` output tokens: full fine-tuning ``3 n m T``
(forward, backward to the input and to the weight), SVDiff's factorized route ``n m T + 2 k (n + m) T``, its rebuild
route ``3 n m T + 2 n m k``. This script measures what those counts predict: it runs SD-1.5's UNet (on the meta
device, no weights) on 64x64 latents, batch 1, 77 text tokens, records each ``Linear``/``Conv2d``'s input shape,
deduplicates by (kind, weight shape, kernel, stride, input shape), and for each distinct layer times, on a
standalone copy with random weights, a step (forward, then backward of the mean squared output to the trained
parameters and the input) for: the frozen layer (backward to the input only), full fine-tuning, PEFT's LoRA r=4,
SVDiff with each ``SVDiffLayer.formulation`` ("rebuild", "factorized", "auto") and DiffFit (default). Variants of a
layer run interleaved, one thread, CPU time, medians of the repetitions::

    python benchmarks/bench_svdiff_layers.py --output benchmarks/results/svdiff_layers_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _results import publish
from diffusers.models.attention_processor import Attention
from peft import LoraConfig, PeftConfig, get_peft_model
from torch import nn

import peft_memcontrol as pm
from peft_memcontrol.counting import meta_unet
from peft_memcontrol.tuners import SVDiffLayer


#: Representative layers of `--quick`: few tokens (time embedding, cross-attention K/V, 8x8 convs) and many.
QUICK_LAYERS = (
    "time_embedding.linear_2",
    "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.3.resnets.0.conv1",
)


@dataclass
class LayerShape:
    """One distinct SD-1.5 layer: a representative module, how many modules share its shape and input, and the
    module itself (on the meta device)."""

    name: str
    module: nn.Linear | nn.Conv2d
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    count: int = 1

    @property
    def kind(self) -> str:
        return type(self.module).__name__

    @property
    def matrix(self) -> tuple[int, int]:
        """``(n, m)``: the weight as the analysis sees it, a conv kernel reshaped to ``out x in*kh*kw``."""
        weight = self.module.weight
        return weight.shape[0], weight[0].numel()

    @property
    def tokens(self) -> int:
        """Output positions per sample: the rows of the layer's matrix product."""
        if self.kind == "Conv2d":
            return self.output_shape[-2] * self.output_shape[-1]
        return self.input_shape[-2] if len(self.input_shape) == 3 else 1

    def describe(self) -> str:
        n, m = self.matrix
        if self.kind == "Linear":
            return f"Linear {m}->{n}"
        kernel, stride = self.module.kernel_size, self.module.stride
        return f"Conv2d {self.module.in_channels}->{n} {kernel[0]}x{kernel[1]}" + (
            f" stride {stride[0]}" if stride != (1, 1) else ""
        )


def sd15_layer_shapes() -> list[LayerShape]:
    """Every distinct ``Linear``/``Conv2d`` of SD-1.5's UNet with the input it gets from 64x64 latents, batch 1."""
    unet = meta_unet()
    shapes: dict[tuple, LayerShape] = {}

    def record(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            input_shape = tuple(args[0].shape)
            key = (type(module).__name__, tuple(module.weight.shape), getattr(module, "stride", None), input_shape)
            if key in shapes:
                shapes[key].count += 1
            else:
                shapes[key] = LayerShape(name, module, input_shape, tuple(output.shape))

        return hook

    for name, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.register_forward_hook(record(name))
    with torch.no_grad():
        unet(
            torch.empty(1, 4, 64, 64, device="meta"),
            torch.tensor([500], device="meta"),
            encoder_hidden_states=torch.empty(1, 77, 768, device="meta"),
        )
    return list(shapes.values())


class OneLayer(nn.Module):
    """A standalone copy of one layer (random weights) for PEFT to wrap, named ``layer``.

    The package's methods refuse a model without an attention container (mask or not), so the model holds a tiny
    diffusers ``Attention`` in a ``transformer_blocks`` list. A ``Linear`` sits inside it, as an attention
    projection, so that DiffFit gives it the most it gives any SD-1.5 ``Linear`` (an output scale and a bias change;
    outside attention, in the time embedding and feed-forwards, it gives a bias change alone, or a residual scale);
    a ``Conv2d`` sits outside, where DiffFit changes its bias as it does every SD-1.5 conv's. The attention never
    runs: only the layer costs time.
    """

    def __init__(self, shape: LayerShape) -> None:
        super().__init__()
        torch.manual_seed(0)
        meta = shape.module
        self.slot = nn.Module()
        self.slot.transformer_blocks = nn.ModuleList([Attention(query_dim=8, heads=1, dim_head=8)])
        if isinstance(meta, nn.Linear):
            self.slot.transformer_blocks[0].layer = nn.Linear(meta.in_features, meta.out_features)
            self.path = "slot.transformer_blocks.0.layer"
        else:
            self.layer = nn.Conv2d(
                meta.in_channels, meta.out_channels, meta.kernel_size, meta.stride, meta.padding, meta.dilation
            )
            self.path = "layer"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_submodule(self.path)(x)


def with_svdiff_formulation(formulation: str) -> Callable[[nn.Module], nn.Module]:
    def apply(model: nn.Module) -> nn.Module:
        model = get_peft_model(model, pm.SVDiffConfig())
        for module in model.modules():
            if isinstance(module, SVDiffLayer):
                module.formulation = formulation
        return model

    return apply


def with_config(config: PeftConfig) -> Callable[[nn.Module], nn.Module]:
    return lambda model: get_peft_model(model, config)


VARIANTS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "frozen": lambda model: model.requires_grad_(False),
    "full": lambda model: model.requires_grad_(True),
    "LoRA r=4": with_config(LoraConfig(r=4, lora_alpha=4, target_modules=["layer"])),
    "SVDiff rebuild": with_svdiff_formulation("rebuild"),
    "SVDiff factorized": with_svdiff_formulation("factorized"),
    "SVDiff auto": with_svdiff_formulation("auto"),
    "DiffFit": with_config(pm.DiffFitConfig()),
}


def step(model: nn.Module, x: torch.Tensor) -> None:
    model(x.clone().requires_grad_(True)).pow(2).mean().backward()


def auto_route(model: nn.Module, x: torch.Tensor) -> str:
    """The route SVDiff's ``"auto"`` takes for a training step on ``x``."""
    layer = next(module for name, module in model.named_modules() if name.endswith(".layer"))
    return "factorized" if layer._takes_factorized_route(x) else "rebuild"


def predicted_ratios(shape: LayerShape) -> tuple[float, float]:
    """The analysis' multiply-adds of SVDiff's factorized and rebuild routes, each over full fine-tuning's."""
    (n, m), tokens = shape.matrix, shape.tokens
    rank = min(n, m)
    full = 3 * n * m * tokens
    factorized = n * m * tokens + 2 * rank * (n + m) * tokens
    rebuild = 3 * n * m * tokens + 2 * n * m * rank
    return factorized / full, rebuild / full


def measure(shape: LayerShape, repetitions: int) -> tuple[dict[str, float], str]:
    """Median step CPU seconds of each variant on ``shape`` (interleaved), and the route ``"auto"`` took."""
    x = torch.randn(shape.input_shape)
    models = {name: apply(OneLayer(shape)).train() for name, apply in VARIANTS.items()}
    for model in models.values():
        step(model, x)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repetitions):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            start = time.process_time()
            step(model, x)
            times[name].append(time.process_time() - start)
    median = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    return median, auto_route(models["SVDiff auto"], x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help=f"Only {len(QUICK_LAYERS)} layers (a smoke test).")
    parser.add_argument("--output", default=None)
    parser.add_argument("--note", default=None, help="A line about the run's conditions for the results file.")
    args = parser.parse_args()
    torch.set_num_threads(1)

    shapes = sd15_layer_shapes()
    if args.quick:
        shapes = [shape for shape in shapes if shape.name in QUICK_LAYERS]
    results = []
    start = time.time()
    for shape in shapes:
        median, route = measure(shape, args.repetitions)
        results.append((shape, median, route))
        print(f"{shape.name}: {median['SVDiff auto'] / median['full']:.2f}x full ({route})", flush=True)
    wall = time.time() - start

    full_rows = [
        "| layer (representative) | layers | weight | tokens | full step ms | frozen | LoRA r=4 | SVDiff rebuild "
        "| SVDiff factorized | SVDiff auto | auto route | DiffFit | predicted factorized | predicted rebuild "
        "| predicted best | measured best |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    lora_rows = [
        "| layer (representative) | tokens | full | SVDiff rebuild | SVDiff factorized | SVDiff auto | DiffFit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    at_or_under_full = 0
    totals = dict.fromkeys(VARIANTS, 0.0)
    for shape, median, route in results:
        vs_full = {name: seconds / median["full"] for name, seconds in median.items()}
        vs_lora = {name: seconds / median["LoRA r=4"] for name, seconds in median.items()}
        factorized, rebuild = predicted_ratios(shape)
        measured_best = min(vs_full["SVDiff rebuild"], vs_full["SVDiff factorized"])
        at_or_under_full += vs_full["SVDiff auto"] <= 1.0
        for name, seconds in median.items():
            totals[name] += shape.count * seconds
        n, m = shape.matrix
        full_rows.append(
            f"| `{shape.name}` | {shape.count} | {shape.describe()} ({n}x{m}) | {shape.tokens} "
            f"| {1000 * median['full']:.2f} | {vs_full['frozen']:.2f} | {vs_full['LoRA r=4']:.2f} "
            f"| {vs_full['SVDiff rebuild']:.2f} | {vs_full['SVDiff factorized']:.2f} | {vs_full['SVDiff auto']:.2f} "
            f"| {route} | {vs_full['DiffFit']:.2f} | {factorized:.2f} | {rebuild:.2f} | {min(factorized, rebuild):.2f} "
            f"| {measured_best:.2f} |"
        )
        lora_rows.append(
            f"| `{shape.name}` | {shape.tokens} | {vs_lora['full']:.2f} | {vs_lora['SVDiff rebuild']:.2f} "
            f"| {vs_lora['SVDiff factorized']:.2f} | {vs_lora['SVDiff auto']:.2f} | {vs_lora['DiffFit']:.2f} |"
        )
    command = f"python benchmarks/bench_svdiff_layers.py --repetitions {args.repetitions}" + (
        " --quick" if args.quick else ""
    )
    lines = [
        "# A training step per SD-1.5 layer shape at 64x64 latents: SVDiff, DiffFit and LoRA vs full fine-tuning",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, torch {torch.__version__}, 1 thread, CPU time (`time.process_time`)",
        f"- command: `{command}` ({wall:.0f} s wall)",
        "- layers: SD-1.5's UNet (`SD15_UNET_CONFIG`) run on the meta device on 64x64 latents, batch 1, 77 text "
        "tokens; each distinct (kind, weight shape, stride, input shape) once, as a standalone layer with random "
        "weights; `layers` is how many of the UNet's 282 Linear/Conv2d modules share it",
        "- step: forward, then backward of the mean squared output to the trained parameters and the input; median of "
        f"{args.repetitions} interleaved repetitions after a warm-up; ratios are each method's step over full "
        "fine-tuning's (first table) or LoRA r=4's (second table); `frozen` is backward to the input only",
        "- predicted: the multiply-add counts of docs/quickstart.md (`n x m` weight, conv kernels as `out x "
        "in*kh*kw`, `k = min(n, m)`, `T` output tokens): factorized `(n m T + 2 k (n + m) T) / 3 n m T`, rebuild "
        "`(3 n m T + 2 n m k) / 3 n m T`; `predicted best` is the smaller, `measured best` the smaller of the two "
        "measured routes",
        *([f"- {args.note}"] if args.note else []),
        "",
        f"SVDiff auto at or under 1.0x full fine-tuning: {at_or_under_full} of {len(results)} layer shapes. Summed "
        "over the UNet's layers (each row's step times its `layers`), vs full fine-tuning: "
        + ", ".join(f"{name} {totals[name] / totals['full']:.2f}" for name in VARIANTS if name != "full")
        + f"; vs LoRA r=4: SVDiff auto {totals['SVDiff auto'] / totals['LoRA r=4']:.2f}, DiffFit "
        f"{totals['DiffFit'] / totals['LoRA r=4']:.2f}.",
        "",
        "## vs full fine-tuning",
        "",
        *full_rows,
        "",
        "## vs LoRA r=4",
        "",
        *lora_rows,
    ]
    text = "\n".join(lines) + "\n"
    publish(text, args.output)


if __name__ == "__main__":
    main()
