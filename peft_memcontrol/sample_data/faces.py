"""The faces set: LFW faces (shipped in scikit-image), a domain the tiny pipeline was not pretrained on; the demo's
transfer domain and the guides' example data.

Written by `write_splits`:

* ``train/``: the training faces, where a *memorization subset* appears ``memorization_repeats`` times (physical
  copies, so that any imagefolder reader sees the duplicates): the setting in which full fine-tuning memorizes.
* ``test/``: held-out faces with their captions (for FID-style quality scores).
* ``memorization/``: the memorization subset once each (what the memorization metrics score).

``source_id`` is the LFW index. The build is deterministic in ``seed``.
"""

from __future__ import annotations

import numpy as np

from .images import lfw_faces
from .splits import ImageFolderSplits, made_up_name, write_splits


def face_caption(source_id: int) -> str:
    """A distinctive caption per face: a made-up name, unique among the 100 LFW faces."""
    return f"a close-up face photo of {made_up_name(source_id)}"


def build_faces_dataset(
    output_dir: str,
    num_test: int = 20,
    num_memorization: int = 10,
    memorization_repeats: int = 10,
    size: int = 32,
    seed: int = 0,
) -> ImageFolderSplits:
    """Write the faces set (train with a duplicated memorization subset, held-out test) under ``output_dir``."""
    faces = lfw_faces(size)
    if num_test + num_memorization > len(faces):
        raise ValueError(f"num_test + num_memorization must be at most {len(faces)} (the LFW faces shipped).")
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(faces))]
    test_ids = sorted(order[:num_test])
    train_ids = sorted(order[num_test:])
    memorization_ids = sorted(order[num_test : num_test + num_memorization])
    return write_splits(
        output_dir,
        train_ids,
        test_ids,
        memorization_ids,
        memorization_repeats,
        stem_of=lambda i: f"face_{i:03d}",
        image_of=faces.__getitem__,
        caption_of=face_caption,
    )
