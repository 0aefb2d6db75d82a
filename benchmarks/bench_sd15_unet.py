#!/usr/bin/env python
"""Training steps and unmerged inference of the whole SD-1.5 UNet on the CPU, for every method beside its limits.

`bench_svdiff_block.py` measures one 1280-channel block; this script runs the real SD-1.5 UNet configuration
(`peft_memcontrol.counting.SD15_UNET_CONFIG`, 859.5 M parameters, random weights) at 32 x 32 latents (4 channels),
batch 1, 77 text tokens, on one thread. A training step is a forward and a backward of the squared output (to the
trained parameters and the input latents; no optimizer step). Variants: the frozen UNet (backward to the inputs only:
the limit), full fine-tuning, PEFT's LoRA r=4 and r=16 on to_q/to_k/to_v/to_out.0, and this package's SVDiff, DiffFit
and masked attention (every slot on); unmerged inference (a forward under ``torch.no_grad``) for the frozen UNet, LoRA
r=4 and SVDiff (with and without its inference cache).

Each variant runs in a subprocess of its own, so that its peak resident memory (``getrusage``) is its own; the
variants take turns, round after round (interleaved), and the tables give medians over every timed step. The random
weights are written once to a temporary safetensors file that every subprocess loads; SVDiff's SVD factors are
computed once, in a set-up subprocess whose CPU time is reported separately, and cached on disk
(`SpectralFactorPool`; ``--svd-cache DIR`` keeps them for the next run), where the SVDiff subprocesses load them.
About 17 minutes on a shared 2-core machine with the defaults (5 of them the SVD set-up); ``--rounds 1`` with a kept
``--svd-cache`` takes under 10::

    python benchmarks/bench_sd15_unet.py --rounds 2 --steps 2 --output benchmarks/results/sd15_unet_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from _results import publish
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

import peft_memcontrol as pm
from peft_memcontrol.counting import SD15_UNET_CONFIG, meta_unet
from peft_memcontrol.tuners import SVDiffLayer


TRAINING = (
    "frozen",
    "full fine-tuning",
    "LoRA r=4",
    "LoRA r=16",
    "SVDiff",
    "DiffFit",
    "masked attention",
)
#: Variants whose subprocess also measures unmerged inference, after its training steps.
INFERENCE = ("frozen", "LoRA r=4", "SVDiff")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def load_unet(weights: str) -> nn.Module:
    unet = meta_unet()
    unet.load_state_dict(load_file(weights), assign=True)
    return unet.train()


def apply_variant(unet: nn.Module, variant: str) -> nn.Module:
    if variant == "frozen":
        return unet.requires_grad_(False)
    if variant == "full fine-tuning":
        return unet.requires_grad_(True)
    if variant.startswith("LoRA"):
        rank = int(variant.removeprefix("LoRA r="))
        return get_peft_model(unet, LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS))
    config = {"SVDiff": pm.SVDiffConfig, "DiffFit": pm.DiffFitConfig, "masked attention": pm.MaskedAttentionConfig}
    return get_peft_model(unet, config[variant]())


def unet_inputs(latent: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(1, 4, latent, latent, generator=generator),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 77, 768, generator=generator),
    }


def training_step(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """CPU seconds of one forward and backward."""
    model.zero_grad(set_to_none=True)
    sample = inputs["sample"].clone().requires_grad_(True)
    start = time.process_time()
    model(**{**inputs, "sample": sample}).sample.square().mean().backward()
    return time.process_time() - start


def inference_step(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """CPU seconds of one forward under ``torch.no_grad``."""
    start = time.process_time()
    with torch.no_grad():
        model(**inputs)
    return time.process_time() - start


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def set_svdiff_cache(model: nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if isinstance(module, SVDiffLayer):
            module.inference_cache = enabled


def run_variant(args: argparse.Namespace) -> dict:
    """One subprocess: set the variant up, then a warm-up and ``args.steps`` timed steps of each measurement."""
    torch.set_num_threads(1)
    inputs = unet_inputs(args.latent)
    baseline = resident_bytes()
    unet = load_unet(args.weights)
    start = time.process_time()
    with pm.SpectralFactorPool(args.svd_cache):
        model = apply_variant(unet, "SVDiff" if args.variant == "SVD set-up" else args.variant)
    result: dict = {"setup": time.process_time() - start}
    if args.variant == "SVD set-up":
        return result
    training_step(model, inputs)
    result["train"] = [training_step(model, inputs) for _ in range(args.steps)]
    held = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    result["baseline"], result["peak"] = baseline, peak_resident_bytes()
    result["held"] = held + pm.spectral_factor_bytes(model)
    if args.variant in INFERENCE:
        model.zero_grad(set_to_none=True)
        inference_step(model, inputs)
        result["infer"] = [inference_step(model, inputs) for _ in range(args.steps)]
        if args.variant == "SVDiff":
            set_svdiff_cache(model, False)
            inference_step(model, inputs)
            result["infer, cache off"] = [inference_step(model, inputs) for _ in range(args.steps)]
    return result


def in_subprocess(args: argparse.Namespace, variant: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--weights",
        args.weights,
        "--svd-cache",
        args.svd_cache,
    ]
    command += ["--latent", str(args.latent), "--steps", str(args.steps)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, results: dict[str, list[dict]], svd_setup: dict, seconds: float) -> str:
    def median(variant: str, measure: str) -> float:
        return statistics.median(value for run in results[variant] for value in run[measure])

    def peak(variant: str) -> float:
        return max(run["peak"] for run in results[variant])

    def step_memory(variant: str) -> float:
        return max(run["peak"] - run["baseline"] - run["held"] for run in results[variant])

    train = {variant: median(variant, "train") for variant in TRAINING}
    samples = args.rounds * args.steps
    lines = [
        "# The whole SD-1.5 UNet on the CPU: training step and unmerged inference per method",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}; 1 thread, CPU time "
        "(`time.process_time`) of the measuring subprocess",
        f"- command: `python benchmarks/bench_sd15_unet.py --rounds {args.rounds} --steps {args.steps} "
        f"--latent {args.latent}` ({seconds / 60:.1f} min wall)",
        f"- model: SD-1.5 UNet configuration (`SD15_UNET_CONFIG`), random weights, float32, batch 1, "
        f"{args.latent}x{args.latent} latents, 77 text tokens",
        "- step: forward + backward of the mean squared output, to the trained parameters and the input latents (no "
        "optimizer step); inference: one forward under `torch.no_grad`, adapters unmerged",
        f"- each variant in its own subprocess (loads the weights, sets the method up, one warm-up step, {args.steps} "
        f"timed steps), variants in turn, {args.rounds} rounds: medians of {samples} steps. Few repetitions, to keep "
        "the run under 10 minutes: differences under ~5% are noise",
        "- the machine's 2 cores were shared with another engineer's runs during the measurement: CPU time, not wall "
        "time, is reported, which such sharing disturbs less (caches and memory bandwidth still are shared)",
        "- peak memory: the subprocess's peak resident set (`getrusage`); 'step' is that peak less the resident set "
        "before the weights were loaded (Python, torch, diffusers) and less the bytes of the parameters and SVD "
        "factors: gradients, activations and temporaries",
        f"- SVD set-up of SVDiff (every weight decomposed, written to the disk cache): {svd_setup['setup']:.1f} "
        "CPU-s, once; each SVDiff subprocess then loads the factors from the disk cache in "
        f"{statistics.median(run['setup'] for run in results['SVDiff']):.1f} CPU-s",
        "",
        "## Training step",
        "",
        "| variant | step s | vs frozen | vs full | vs LoRA r=4 | peak GiB | step GiB | step vs full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in TRAINING:
        lines.append(
            f"| {variant} | {train[variant]:.2f} | {train[variant] / train['frozen']:.2f} "
            f"| {train[variant] / train['full fine-tuning']:.2f} | {train[variant] / train['LoRA r=4']:.2f} "
            f"| {peak(variant) / 2**30:.2f} | {step_memory(variant) / 2**30:.2f} "
            f"| {step_memory(variant) / step_memory('full fine-tuning'):.2f} |"
        )
    infer = {variant: median(variant, "infer") for variant in INFERENCE}
    infer["SVDiff, inference cache off"] = median("SVDiff", "infer, cache off")
    lines += [
        "",
        "## Unmerged inference (forward under `torch.no_grad`)",
        "",
        "| variant | forward s | vs frozen | vs LoRA r=4 |",
        "|---|---:|---:|---:|",
    ]
    for variant, seconds_per_forward in infer.items():
        lines.append(
            f"| {variant} | {seconds_per_forward:.2f} | {seconds_per_forward / infer['frozen']:.2f} "
            f"| {seconds_per_forward / infer['LoRA r=4']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="Times each variant's subprocess runs, interleaved.")
    parser.add_argument("--steps", type=int, default=2, help="Timed steps per subprocess (after one warm-up).")
    parser.add_argument("--latent", type=int, default=32, help="Latent height = width (64 is SD-1.5's 512 px).")
    parser.add_argument("--output", default=None)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--svd-cache", default=None, help="Folder for SVDiff's factors, kept between runs (default: temporary)."
    )
    args = parser.parse_args()
    if args.variant is not None:
        print(json.dumps(run_variant(args)))
        return

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        args.weights = os.path.join(folder, "unet.safetensors")
        args.svd_cache = args.svd_cache or os.path.join(folder, "svd")
        torch.manual_seed(0)
        save_file(UNet2DConditionModel(**SD15_UNET_CONFIG).state_dict(), args.weights)
        svd_setup = in_subprocess(args, "SVD set-up")
        print(f"SVD set-up {svd_setup}", file=sys.stderr, flush=True)
        results: dict[str, list[dict]] = {variant: [] for variant in TRAINING}
        for round_index in range(args.rounds):
            for variant in TRAINING:
                results[variant].append(in_subprocess(args, variant))
                print(f"round {round_index + 1}: {variant} {results[variant][-1]}", file=sys.stderr, flush=True)
    text = report(args, results, svd_setup, time.monotonic() - started)
    publish(text, args.output)


if __name__ == "__main__":
    main()
