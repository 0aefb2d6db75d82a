"""The digits set: scikit-learn's handwritten digits (the tiny pipeline's pretraining domain), the demo's main domain.

Each digit gets a caption of its own (the digit and a made-up writer), and a memorization subset is duplicated in
``train/``: the setting in which full fine-tuning copies its training images on the tiny pipeline. Same layout as
every sample set (`write_splits`); deterministic in ``seed``.
"""

from __future__ import annotations

import numpy as np

from .images import DIGIT_WORDS, digit_samples
from .splits import ImageFolderSplits, made_up_name, write_splits


def digit_caption(index: int, label: int) -> str:
    """A distinctive caption per digit sample: its class and a made-up writer's name."""
    return f"a handwritten digit {DIGIT_WORDS[label]} by {made_up_name(index)}"


def build_digits_dataset(
    output_dir: str,
    num_train: int = 60,
    num_test: int = 16,
    num_memorization: int = 4,
    memorization_repeats: int = 25,
    size: int = 32,
    seed: int = 0,
    num_extra_test: int = 0,
) -> ImageFolderSplits:
    """Write the main set: ``num_train`` digits (of which ``num_memorization`` duplicated) and held-out digits.

    ``num_extra_test`` more held-out digits follow the ``num_test`` ones in ``test/`` (e.g. to calibrate a copy
    threshold); they are drawn after the training digits, so the training set is the same with or without them.
    Writer names cycle every 100 samples, so captions stay unique for up to 100 digits in all.
    """
    if num_train + num_test + num_extra_test > 100:
        raise ValueError(
            "num_train + num_test + num_extra_test must be at most 100 (captions are unique for 100 samples)."
        )
    if num_memorization > num_train:
        raise ValueError("num_memorization must be at most num_train.")
    samples = digit_samples(size)
    order = [
        int(i) for i in np.random.default_rng(seed).permutation(len(samples))[: num_train + num_test + num_extra_test]
    ]
    captions = {
        source: digit_caption(k, DIGIT_WORDS.index(samples[source][1].split()[-1])) for k, source in enumerate(order)
    }
    test_ids = order[:num_test] + order[num_test + num_train :]
    train_ids = order[num_test : num_test + num_train]
    memorization_ids = train_ids[:num_memorization]
    return write_splits(
        output_dir,
        train_ids,
        test_ids,
        memorization_ids,
        memorization_repeats,
        stem_of=lambda i: f"digit_{i:04d}",
        image_of=lambda i: samples[i][0],
        caption_of=captions.__getitem__,
    )
