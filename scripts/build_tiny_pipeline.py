#!/usr/bin/env python
"""Rebuild the tiny Stable-Diffusion-shaped pipeline shipped in ``peft_memcontrol/tiny_sd/assets/tiny-sd``.

Deterministic and offline (apart from fetching the open-clip-torch wheel from PyPI for the tokenizer's data file,
which ``--bpe_file`` avoids). Stages:

1. tokenizer: CLIP's exact 49,408-entry vocabulary and merges, rebuilt from ``bpe_simple_vocab_16e6.txt.gz`` (inside
   the open-clip-torch wheel): the 256 byte symbols, the same with ``</w>``, the merged pairs of the first 48,894
   merge lines, then ``<|startoftext|>`` and ``<|endoftext|>``. Written as ``vocab.json`` + ``merges.txt``.
2. seeded random weights for the UNet, VAE and text encoder (configs in ``peft_memcontrol.tiny_sd.pipeline``).
3. VAE pretraining (reconstruction + a small KL term) on scikit-learn digits and scikit-image photo crops; the
   latent scaling factor is then set to 1 / std of the latents, as SD's is.
4. UNet pretraining with the project's own trainer (``MemControlTrainer``, ``method="full"``) on the same images with
   captions ("a handwritten digit seven", "a photo of a cat", ...). The text encoder keeps its seeded random weights
   (frozen, like in every fine-tuning run).
5. save the pipeline in float16 safetensors with ``save_pretrained``.

Usage::

    python scripts/build_tiny_pipeline.py                       # everything, into the package's assets folder
    python scripts/build_tiny_pipeline.py --stage tokenizer     # only vocab.json / merges.txt
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

import torch
from diffusers import DDPMScheduler

from peft_memcontrol.sample_data import digit_samples, photo_samples
from peft_memcontrol.tiny_sd import build_random_tiny_pipeline, build_tiny_tokenizer, tiny_pipeline_path
from peft_memcontrol.training import ImageCaptionDataset, MemControlTrainer, TrainingConfig, image_to_tensor


BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
KNOWN_PROMPT_IDS = {"a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407]}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable unicode map (256 symbols)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def find_bpe_file(bpe_file: str | None) -> bytes:
    """Return the gzipped BPE file's bytes: from ``--bpe_file`` (a .txt.gz or a wheel) or a fresh wheel download."""
    if bpe_file is None:
        tmp = tempfile.mkdtemp()
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "open-clip-torch", "-d", tmp, "-q"], check=True
        )
        bpe_file = glob.glob(os.path.join(tmp, "open_clip_torch-*.whl"))[0]
    if bpe_file.endswith(".whl"):
        with zipfile.ZipFile(bpe_file) as wheel:
            return wheel.read(BPE_MEMBER)
    with open(bpe_file, "rb") as f:
        return f.read()


def build_vocab_and_merges(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token -> id) and merge list, exactly as open_clip's SimpleTokenizer builds them."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(p) for p in pairs)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    if len(vocab) != 49408:
        raise RuntimeError(f"Rebuilt vocabulary has {len(vocab)} entries, expected 49408: wrong BPE file?")
    return {token: i for i, token in enumerate(vocab)}, [" ".join(p) for p in pairs]


def write_tokenizer(folder: str, bpe_file: str | None) -> None:
    """Stage 1: write vocab.json + merges.txt and check CLIP's ids for a known prompt."""
    os.makedirs(folder, exist_ok=True)
    vocab, merges = build_vocab_and_merges(find_bpe_file(bpe_file))
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = build_tiny_tokenizer(folder)
    for prompt, ids in KNOWN_PROMPT_IDS.items():
        got = tokenizer(prompt).input_ids
        if got != ids:
            raise RuntimeError(f"Tokenizer check failed for {prompt!r}: {got} != {ids}")
    print(f"tokenizer: {len(vocab)} tokens, {len(merges)} merges -> {folder}")


def pretraining_samples(seed: int):
    """Captioned 32 x 32 pretraining images: all scikit-learn digits and scikit-image/-learn photo crops."""
    return digit_samples() + photo_samples(crops_per_photo=48, seed=seed)


def pretrain_vae(vae: torch.nn.Module, images: torch.Tensor, steps: int, batch_size: int, seed: int) -> float:
    """Stage 3: train the VAE to reconstruct the pretraining images; returns the final reconstruction MSE."""
    vae.train()
    vae.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    mse = float("nan")
    for step in range(steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
        if torch.rand((), generator=generator) < 0.5:
            batch = batch.flip(-1)
        posterior = vae.encode(batch).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        mse_t = torch.nn.functional.mse_loss(recon, batch)
        loss = mse_t + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        mse = mse_t.item()
        if step % 100 == 0 or step == steps - 1:
            print(f"vae step {step}: mse {mse:.4f} ({time.time() - start:.0f}s)", flush=True)
    vae.eval()
    vae.requires_grad_(False)
    return mse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=tiny_pipeline_path())
    parser.add_argument("--stage", choices=["all", "tokenizer"], default="all")
    parser.add_argument("--bpe_file", default=None, help="bpe_simple_vocab_16e6.txt.gz or an open-clip-torch wheel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae_steps", type=int, default=400)
    parser.add_argument("--vae_batch_size", type=int, default=16)
    parser.add_argument("--unet_steps", type=int, default=450)
    parser.add_argument("--unet_batch_size", type=int, default=32)
    parser.add_argument("--unet_learning_rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    tokenizer_dir = os.path.join(args.output_dir, "tokenizer")
    write_tokenizer(tokenizer_dir, args.bpe_file)
    if args.stage == "tokenizer":
        return

    torch.use_deterministic_algorithms(True, warn_only=True)
    tokenizer = build_tiny_tokenizer(tokenizer_dir)
    pipe = build_random_tiny_pipeline(tokenizer, seed=args.seed)
    samples = pretraining_samples(args.seed)
    print(f"pretraining images: {len(samples)}", flush=True)

    images = torch.stack([image_to_tensor(image, None) for image, _ in samples])
    mse = pretrain_vae(pipe.vae, images, args.vae_steps, args.vae_batch_size, args.seed)
    with torch.no_grad():
        latents = torch.cat(
            [pipe.vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)]
        )
    scaling_factor = round(1.0 / latents.std().item(), 5)
    pipe.vae.register_to_config(scaling_factor=scaling_factor)
    print(f"vae: final mse {mse:.4f}, scaling_factor {scaling_factor}", flush=True)

    with tempfile.TemporaryDirectory() as run_dir:
        dataset = ImageCaptionDataset([s[0] for s in samples], [s[1] for s in samples], random_flip=False)
        trainer = MemControlTrainer(
            unet=pipe.unet,
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=tokenizer,
            noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
            train_dataset=dataset,
            method="full",
            config=TrainingConfig(
                output_dir=run_dir,
                max_train_steps=args.unet_steps,
                train_batch_size=args.unet_batch_size,
                learning_rate=args.unet_learning_rate,
                lr_scheduler="cosine",
                lr_warmup_steps=50,
                adam_weight_decay=0.0,
                seed=args.seed,
                report_to=None,
            ),
        )
        result = trainer.train()
    tail = result.losses[-100:]
    print(f"unet: {result.global_step} steps, mean loss of the last {len(tail)}: {sum(tail) / len(tail):.4f}")

    pipe.unet.eval()
    pipe.to(torch.float16)
    pipe.save_pretrained(args.output_dir, safe_serialization=True)
    # save_pretrained rewrites the tokenizer folder; keep only the two files the tokenizer is rebuilt from.
    write_tokenizer(tokenizer_dir, args.bpe_file)
    for name in os.listdir(tokenizer_dir):
        if name not in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
            os.remove(os.path.join(tokenizer_dir, name))
    print(f"saved -> {args.output_dir}")


if __name__ == "__main__":
    main()
