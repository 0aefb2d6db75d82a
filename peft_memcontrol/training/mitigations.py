"""Memorization mitigations that combine with any adapter: caption randomization and noise-norm filtering.

* Caption randomization (Somepalli et al. 2023): `RandomWordAddition` (a fresh draw every step, or the
  reference code's ``static`` variant drawn once per sample), `RandomWordReplacement` and
  `CaptionWordRepetition`. Each is a callable ``(caption, index, generator) -> caption``; the trainer passes a
  generator seeded from the run's seed and the step, so a run (and its resume) is reproducible.
* Training-time filtering (Wen et al. 2024): drop from the loss the samples whose text-conditional noise norm
  ``|| eps(x_t, c) - eps(x_t, "") ||`` is above a threshold, or above the batch's 90th percentile (``"auto"``). The
  norm itself is ``peft_memcontrol.metrics.text_conditional_noise_norm``; `threshold_keep_mask` decides.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import mix_seed


_WORD_TOKEN = re.compile(r"^[a-z]{2,}</w>$")


def tokenizer_words(tokenizer) -> list[str]:
    """Whole alphabetic words (2+ letters) of a BPE tokenizer's vocabulary, in id order: the default word pool."""
    vocab = tokenizer.get_vocab()
    words = sorted((i, t[: -len("</w>")]) for t, i in vocab.items() if _WORD_TOKEN.match(t))
    if not words:
        raise ValueError("The tokenizer has no whole-word tokens ending in '</w>'; pass a vocabulary explicitly.")
    return [w for _, w in words]


def with_tokenizer_words(transforms: Sequence, tokenizer) -> list:
    """Shallow copies of ``transforms``, where a ``vocabulary`` left to ``None`` holds the tokenizer's words.

    The trainer works on these copies, so that the caller's transform objects are never written into.
    """
    words = None
    copies = []
    for transform in transforms:
        transform = copy.copy(transform)
        if getattr(transform, "vocabulary", False) is None:  # a word pool left to the tokenizer
            words = words or tokenizer_words(tokenizer)
            transform.vocabulary = words
        copies.append(transform)
    return copies


def _randint(generator: torch.Generator, high: int) -> int:
    """One integer in [0, high) from a torch generator (device-independent: always drawn on the CPU)."""
    return int(torch.randint(high, (1,), generator=generator).item())


@dataclass
class RandomWordAddition:
    """Insert ``num_words`` random words at random positions of the caption.

    Args:
        num_words: words inserted (the reference code inserts 4).
        vocabulary: the word pool; ``None`` lets the trainer fill in the tokenizer's words (`tokenizer_words`).
        static: ``False`` draws afresh at every step (Somepalli et al.); ``True`` draws once per sample from
            ``(seed, index)``, so a sample always gets the same words: the reference code's variant, kept for parity.
        seed: seed of the static draw.
    """

    num_words: int = 4
    vocabulary: Sequence[str] | None = None
    static: bool = False
    seed: int = 0

    def __call__(self, caption: str, index: int, generator: torch.Generator) -> str:
        if not self.vocabulary:
            raise ValueError("RandomWordAddition needs a vocabulary (the trainer fills in the tokenizer's words).")
        if self.static:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, index))
        words = caption.split()
        for _ in range(self.num_words):
            word = self.vocabulary[_randint(generator, len(self.vocabulary))]
            words.insert(_randint(generator, len(words) + 1), word)
        return " ".join(words)


@dataclass
class RandomWordReplacement:
    """Replace each word of the caption, with probability ``probability``, by a random vocabulary word."""

    probability: float = 0.1
    vocabulary: Sequence[str] | None = None

    def __call__(self, caption: str, index: int, generator: torch.Generator) -> str:
        if not self.vocabulary:
            raise ValueError("RandomWordReplacement needs a vocabulary (the trainer fills in the tokenizer's words).")
        words = caption.split()
        for i in range(len(words)):
            if torch.rand((), generator=generator).item() < self.probability:
                words[i] = self.vocabulary[_randint(generator, len(self.vocabulary))]
        return " ".join(words)


@dataclass
class CaptionWordRepetition:
    """Repeat ``num_words`` randomly chosen words of the caption at random positions (Somepalli et al.'s CWR)."""

    num_words: int = 1

    def __call__(self, caption: str, index: int, generator: torch.Generator) -> str:
        words = caption.split()
        if not words:
            return caption
        for _ in range(self.num_words):
            word = words[_randint(generator, len(words))]
            words.insert(_randint(generator, len(words) + 1), word)
        return " ".join(words)


def apply_caption_transforms(
    captions: Sequence[str], indices: Sequence[int], transforms: Sequence, generator: torch.Generator
) -> list[str]:
    """Apply every transform, in order, to every caption (sample-major), drawing from one generator."""
    out = []
    for caption, index in zip(captions, indices):
        for transform in transforms:
            caption = transform(caption, int(index), generator)
        out.append(caption)
    return out


def drop_captions(captions: Sequence[str], probability: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by ``""`` with ``probability`` (caption dropout, for classifier-free guidance)."""
    if probability <= 0:
        return list(captions)
    draws = torch.rand(len(captions), generator=generator)
    return ["" if d < probability else c for c, d in zip(captions, draws.tolist())]


def threshold_keep_mask(norms: torch.Tensor, threshold: float | str, quantile: float = 0.9) -> torch.Tensor:
    """Boolean mask of the samples kept by threshold filtering.

    Args:
        norms: per-sample noise norms (1-D).
        threshold: a number (samples with a norm strictly above it are dropped) or ``"auto"``: drop the samples
            strictly above the batch's ``quantile`` (``torch.quantile``, linear interpolation), i.e. its top 10%.
    """
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ValueError(f"threshold must be a number or 'auto', got {threshold!r}.")
        if norms.numel() < 2:
            return torch.ones_like(norms, dtype=torch.bool)
        threshold = torch.quantile(norms.float(), quantile).item()
    return norms <= float(threshold)
