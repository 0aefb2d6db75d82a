"""The demo's two data sets, written as diffusers image folders (``metadata.jsonl`` with ``file_name`` and ``text``).

* **digits** (the main domain: the search and the baselines): scikit-learn's handwritten digits, the tiny pipeline's
  pretraining domain. Each digit gets a caption of its own (the digit and a made-up writer), and a memorization
  subset is duplicated: the setting in which full fine-tuning copies its training images on this pipeline.
* **faces** (the transfer domain): LFW faces from scikit-image, a domain the tiny pipeline never saw, built by
  `peft_memcontrol.pipelines.build_demo_dataset`, with the same layout: ``train/``, ``test/``, ``memorization/``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pipelines import DemoDataset, build_demo_dataset
from ..pipelines.demo_data import FIRST_NAMES, LAST_NAMES, write_demo_splits
from ..pipelines.images import DIGIT_WORDS, digit_samples


def digit_caption(index: int, label: int) -> str:
    """A distinctive caption per digit sample: its class and a made-up writer's name."""
    first, last = FIRST_NAMES[index % 10], LAST_NAMES[(index // 10) % 10]
    return f"a handwritten digit {DIGIT_WORDS[label]} by {first} {last}"


def build_digits_dataset(
    output_dir: str,
    num_train: int = 60,
    num_test: int = 16,
    num_memorization: int = 4,
    memorization_repeats: int = 25,
    size: int = 32,
    seed: int = 0,
) -> DemoDataset:
    """Write the main set: ``num_train`` digits (of which ``num_memorization`` duplicated) and held-out digits.

    Writer names cycle every 100 samples, so captions stay unique for up to 100 digits in all.
    """
    if num_train + num_test > 100:
        raise ValueError("num_train + num_test must be at most 100 (captions are unique for 100 samples).")
    if num_memorization > num_train:
        raise ValueError("num_memorization must be at most num_train.")
    samples = digit_samples(size)
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(samples))[: num_train + num_test]]
    captions = {
        source: digit_caption(k, DIGIT_WORDS.index(samples[source][1].split()[-1])) for k, source in enumerate(order)
    }
    test_ids = order[:num_test]
    train_ids = order[num_test:]
    memorization_ids = train_ids[:num_memorization]
    return write_demo_splits(
        output_dir,
        train_ids,
        test_ids,
        memorization_ids,
        memorization_repeats,
        stem_of=lambda i: f"digit_{i:04d}",
        image_of=lambda i: samples[i][0],
        caption_of=captions.__getitem__,
    )


DOMAINS = ("digits", "faces")


def build_domain(domain: str, output_dir: str, config: Any) -> DemoDataset:
    """Build the ``digits`` or ``faces`` set at the sizes of a `DemoConfig`."""
    if domain == "digits":
        return build_digits_dataset(
            output_dir,
            num_train=config.num_train,
            num_test=config.num_test,
            num_memorization=config.num_memorization,
            memorization_repeats=config.memorization_repeats,
            seed=config.seed,
        )
    if domain == "faces":
        return build_demo_dataset(
            output_dir,
            num_test=config.num_test,
            num_memorization=config.num_memorization,
            memorization_repeats=config.memorization_repeats,
            seed=config.seed,
        )
    raise ValueError(f"Unknown demo domain {domain!r}; choose one of {DOMAINS}.")
