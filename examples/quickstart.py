#!/usr/bin/env python
"""Quick start: every peft-memcontrol adapter through the standard PEFT calls, offline, on the CPU.

For each method it wraps a small Stable-Diffusion-shaped UNet with ``get_peft_model``, takes a few optimizer steps,
saves the adapter, reloads it with ``PeftModel.from_pretrained``, merges it, and checks that all three give the same
output. Then it prints what each method trains on the real SD-1.5 and SDXL UNets (built on the meta device, so no
weights are needed)::

    python examples/quickstart.py --output_dir outputs/quickstart
"""

from __future__ import annotations

import argparse
import os

import torch
from diffusers import UNet2DConditionModel
from peft import PeftModel, get_peft_model

import peft_memcontrol as pm


TINY_UNET = {
    "sample_size": 16,
    "block_out_channels": (32, 32, 64, 64),
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**{**pm.SD15_UNET_CONFIG, **TINY_UNET}).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/quickstart")
    parser.add_argument("--max_train_steps", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    batch = {
        "sample": torch.randn(2, 4, 16, 16, generator=generator),
        "timestep": torch.tensor([10, 500]),
        "encoder_hidden_states": torch.randn(2, 7, 32, generator=generator),
    }
    target = torch.randn(2, 4, 16, 16, generator=generator)
    slots = pm.slot_units(tiny_unet(), pm.SVDiffConfig())
    searched_mask = pm.Mask.from_bits([1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0], slots)
    configs = {
        "SVDiff": pm.SVDiffConfig(),
        "DiffFit": pm.DiffFitConfig(),
        "masked attention tuning": pm.MaskedAttentionConfig(attention_only=True),
        "MemControl (searched SVDiff mask)": pm.MemControlConfig(method="svdiff", mask=searched_mask),
    }

    print(f"{'method':36} {'trainable':>10} {'share':>9} {'loss before':>12} {'after':>8} {'reload == merged':>17}")
    for name, config in configs.items():
        model = get_peft_model(tiny_unet(), config)
        optimizer = torch.optim.AdamW(pm.adapter_param_groups(model, args.learning_rate))
        losses = []
        for _ in range(args.max_train_steps):
            loss = torch.nn.functional.mse_loss(model(**batch).sample, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            trained = model(**batch).sample
        folder = os.path.join(args.output_dir, name.split(" ")[0].lower())
        model.save_pretrained(folder)

        reloaded = PeftModel.from_pretrained(tiny_unet(), folder)
        merged = reloaded.merge_and_unload()
        with torch.no_grad():
            same = torch.allclose(merged(**batch).sample, trained, atol=1e-5)
        trainable = model.peft_config["default"].trainable_parameters
        share = model.peft_config["default"].trainable_share
        print(f"{name:36} {trainable:>10,} {100 * share:>8.3f}% {losses[0]:>12.4f} {losses[-1]:>8.4f} {str(same):>17}")
        if not same:
            raise SystemExit(f"{name}: the reloaded, merged adapter does not reproduce the trained one")

    print("\nTrainable share on the real UNets (paper semantics; every slot off .. every slot on):")
    for label, unet_config in (("SD-1.5", pm.SD15_UNET_CONFIG), ("SDXL", pm.SDXL_UNET_CONFIG)):
        unet = pm.meta_unet(unet_config)
        units = pm.slot_units(unet, pm.SVDiffConfig())
        for method_name, config_cls in (
            ("SVDiff", pm.SVDiffConfig),
            ("DiffFit", pm.DiffFitConfig),
            ("masked attention", pm.MaskedAttentionConfig),
        ):
            on = pm.trainable_share(unet, config_cls())
            off = pm.trainable_share(unet, config_cls(mask=pm.Mask.all_off(units)))
            print(
                f"  {label:7} {method_name:16} {len(units):2} slots: {100 * off:8.4f}% (all off) .. {100 * on:8.4f}% (all on)"
            )
    print(f"\nAdapters saved under {args.output_dir}/ (adapter_config.json, adapter_model.safetensors, README.md).")


if __name__ == "__main__":
    main()
