#!/usr/bin/env python
"""SVDiff's and DiffFit's training step at SD-1.5's real shapes: one 1280-channel transformer block, side by side in one run.

The UNet benchmark (`bench_adapters.py`) trains whole small UNets, where SVDiff's cost looks close to full
fine-tuning. At SD-1.5's shapes the number of tokens per layer is small (16 x 16 latents in the 1280-channel blocks,
77 text tokens for cross-attention K/V), and rebuilding ``W = U diag(s') Vh`` in every forward costs more than the
layer itself. This script measures, on one SD-1.5 ``Transformer2DModel`` (1280 channels, 34.8 M parameters, batch 1,
16 x 16 tokens), the CPU time of a forward + backward step, the bytes autograd saves for backward and the CPU time of
an unmerged forward under ``torch.no_grad`` (inference), for: the frozen block (backward to the inputs only), full
fine-tuning, PEFT's LoRA r=4 on every Linear/Conv2d, and SVDiff and DiffFit with each of their formulations (SVDiff
also without its inference cache). Variants run interleaved, one thread, medians of the repetitions::

    python benchmarks/bench_svdiff_block.py --output benchmarks/results/svdiff_block_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from collections.abc import Callable

import torch
from _results import publish
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from peft import LoraConfig, PeftConfig, get_peft_model
from torch import nn

import peft_memcontrol as pm
from peft_memcontrol.tuners import DiffFitLayer, SVDiffLayer


def build_block() -> Transformer2DModel:
    """SD-1.5's transformer at its 1280-channel resolution (down_blocks.2 / mid / up_blocks.1)."""
    torch.manual_seed(0)
    return Transformer2DModel(
        num_attention_heads=8,
        attention_head_dim=160,
        in_channels=1280,
        cross_attention_dim=768,
        norm_num_groups=32,
    )


def linear_and_conv_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]


def with_formulation(config: PeftConfig, layer_class: type, formulation: str) -> Callable[[nn.Module], nn.Module]:
    """Apply ``config`` and set every ``layer_class`` layer's ``formulation``."""

    def apply(block: nn.Module) -> nn.Module:
        model = get_peft_model(block, config)
        for module in model.modules():
            if isinstance(module, layer_class):
                module.formulation = formulation
        return model

    return apply


def svdiff_autograd_fallback(block: nn.Module) -> nn.Module:
    """SVDiff's factorized route as it runs where the factors may not describe the weight: the frozen layer plus the
    change, differentiated by autograd (the route before `SpectralLinear`)."""
    model = with_formulation(pm.SVDiffConfig(), SVDiffLayer, "factorized")(block)
    for module in model.modules():
        if isinstance(module, SVDiffLayer):
            module._weight_changed = True
    return model


def svdiff_without_inference_cache(block: nn.Module) -> nn.Module:
    """SVDiff's default, rebuilding or projecting in every forward that needs no gradient too."""
    model = with_formulation(pm.SVDiffConfig(), SVDiffLayer, "auto")(block)
    for module in model.modules():
        if isinstance(module, SVDiffLayer):
            module.inference_cache = False
    return model


def full(block: nn.Module) -> nn.Module:
    return block.requires_grad_(True)


def frozen(block: nn.Module) -> nn.Module:
    return block.requires_grad_(False)


VARIANTS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "frozen": frozen,
    "full fine-tuning": full,
    "LoRA r=4": lambda block: get_peft_model(
        block, LoraConfig(r=4, lora_alpha=4, target_modules=linear_and_conv_names(block))
    ),
    "SVDiff rebuild": with_formulation(pm.SVDiffConfig(), SVDiffLayer, "rebuild"),
    "SVDiff factorized (custom backward)": with_formulation(pm.SVDiffConfig(), SVDiffLayer, "factorized"),
    "SVDiff factorized, autograd fallback": svdiff_autograd_fallback,
    "SVDiff auto (default)": with_formulation(pm.SVDiffConfig(), SVDiffLayer, "auto"),
    "SVDiff auto, inference cache off": svdiff_without_inference_cache,
    "DiffFit rebuild": with_formulation(pm.DiffFitConfig(), DiffFitLayer, "rebuild"),
    "DiffFit output (default)": with_formulation(pm.DiffFitConfig(), DiffFitLayer, "output"),
}


def step(model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    hidden = inputs["hidden_states"].clone().requires_grad_(True)
    output = model(hidden_states=hidden, encoder_hidden_states=inputs["encoder_hidden_states"]).sample
    output.pow(2).mean().backward()


def inference(model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        model(**inputs)


def saved_bytes(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward (the activation memory of a step)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step(model, inputs)
    resident = [*model.parameters(), *model.buffers()]  # resident anyway, not a cost of the step
    resident += [
        factor for module in model.modules() if isinstance(module, SVDiffLayer) for factor in module.spectral_factors
    ]
    for tensor in resident:
        seen.pop(tensor.untyped_storage().data_ptr(), None)
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=16, help="Latent height = width at this block (16 on SD-1.5).")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    inputs = {
        "hidden_states": torch.randn(1, 1280, args.tokens, args.tokens),
        "encoder_hidden_states": torch.randn(1, 77, 768),
    }
    models, setup = {}, {}
    for name, apply in VARIANTS.items():
        start = time.process_time()
        models[name] = apply(build_block())
        setup[name] = time.process_time() - start
        models[name].train()
        step(models[name], inputs)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    inference_times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repetitions):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            start = time.process_time()
            step(model, inputs)
            times[name].append(time.process_time() - start)
    for model in models.values():
        model.zero_grad(set_to_none=True)
        inference(model, inputs)  # warm-up: SVDiff's first forward without gradients builds its cache
    for _ in range(args.repetitions):
        for name, model in models.items():
            start = time.process_time()
            inference(model, inputs)
            inference_times[name].append(time.process_time() - start)
    median = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    inference_median = {name: sorted(values)[len(values) // 2] for name, values in inference_times.items()}
    memory = {name: saved_bytes(model, inputs) for name, model in models.items()}
    factors = {name: pm.spectral_factor_bytes(model) for name, model in models.items()}

    lines = [
        "# SVDiff and DiffFit at SD-1.5 shapes: one 1280-channel transformer block",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, torch {torch.__version__}, 1 thread, CPU time (`time.process_time`)",
        f"- command: `python benchmarks/bench_svdiff_block.py --repetitions {args.repetitions} --tokens {args.tokens}`",
        f"- block: SD-1.5 Transformer2DModel, 1280 channels, batch 1, {args.tokens}x{args.tokens} tokens, 77 text "
        f"tokens; step = forward + backward; median of {args.repetitions} interleaved repetitions",
        "- saved for backward: distinct tensors autograd keeps between forward and backward (parameters, buffers and "
        "SVD factors excluded: they are resident anyway; the factors have their own column)",
        "- set-up: CPU time of applying the method; the first SVDiff variant decomposes the weights, the later ones "
        "find the same weights' factors in the shared index",
        "- inference: one forward under `torch.no_grad`, adapters unmerged, after a warm-up forward; median of "
        f"{args.repetitions} interleaved repetitions",
        "",
        "| variant | step s | vs frozen | vs full | vs LoRA r=4 | saved for backward MiB | vs full | SVD factors MiB "
        "| set-up s | inference s | vs frozen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in models:
        lines.append(
            f"| {name} | {median[name]:.3f} | {median[name] / median['frozen']:.2f} "
            f"| {median[name] / median['full fine-tuning']:.2f} | {median[name] / median['LoRA r=4']:.2f} "
            f"| {memory[name] / 2**20:.1f} | {memory[name] / memory['full fine-tuning']:.2f} "
            f"| {factors[name] / 2**20:.1f} | {setup[name]:.1f} | {inference_median[name]:.3f} "
            f"| {inference_median[name] / inference_median['frozen']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    publish(text, args.output)


if __name__ == "__main__":
    main()
