"""The demo fine-tuning set: LFW faces (shipped in scikit-image), a domain the tiny pipeline was not pretrained on.

Written as diffusers image folders (``metadata.jsonl`` with ``file_name`` and ``text``):

* ``train/``: the training faces, where a *memorization subset* appears ``memorization_repeats`` times (physical
  copies, so that any imagefolder reader sees the duplicates): the setting in which full fine-tuning memorizes.
* ``test/``: held-out faces with their captions (for FID-style quality scores).
* ``memorization/``: the memorization subset once each (what the memorization metrics score).

Every row also has ``source_id`` (the LFW index) and ``memorized`` (bool). The build is deterministic in ``seed``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .images import lfw_faces


FIRST_NAMES = ("Alice", "Bruno", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia")
LAST_NAMES = ("Moreau", "Okafor", "Lindqvist", "Tanaka", "Silva", "Novak", "Haddad", "Kowalski", "Reyes", "Byrne")


def face_caption(source_id: int) -> str:
    """A distinctive caption per face: a made-up name, unique among the 100 LFW faces."""
    first, last = FIRST_NAMES[source_id % 10], LAST_NAMES[(source_id // 10) % 10]
    return f"a close-up face photo of {first} {last}"


@dataclass
class DemoDataset:
    """Paths of a built demo set."""

    root: str
    train_dir: str
    test_dir: str
    memorization_dir: str
    num_train_rows: int
    num_test: int
    memorization_ids: list[int]


def _write_image_folder(
    folder: str,
    rows: list[tuple[str, int, bool]],
    image_of: Callable[[int], Image.Image],
    caption_of: Callable[[int], str],
) -> None:
    """Write ``(file_name, source_id, memorized)`` rows as images plus diffusers' ``metadata.jsonl`` captions."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as handle:
        for file_name, source_id, memorized in rows:
            image_of(source_id).save(os.path.join(folder, file_name))
            row = {
                "file_name": file_name,
                "text": caption_of(source_id),
                "source_id": source_id,
                "memorized": memorized,
            }
            handle.write(json.dumps(row) + "\n")


def write_demo_splits(
    output_dir: str,
    train_ids: list[int],
    test_ids: list[int],
    memorization_ids: list[int],
    memorization_repeats: int,
    stem_of: Callable[[int], str],
    image_of: Callable[[int], Image.Image],
    caption_of: Callable[[int], str],
) -> DemoDataset:
    """Write ``train/`` (memorization images repeated), ``test/`` and ``memorization/`` image folders.

    ``stem_of(i)`` names source image ``i`` (``face_007``); its copies in ``train/`` are ``<stem>_copyNN.png``.
    """
    train_rows: list[tuple[str, int, bool]] = []
    for source_id in train_ids:
        if source_id in memorization_ids:
            stem = stem_of(source_id)
            train_rows += [(f"{stem}_copy{k:02d}.png", source_id, True) for k in range(memorization_repeats)]
        else:
            train_rows.append((f"{stem_of(source_id)}.png", source_id, False))
    root = os.path.abspath(output_dir)
    paths = {name: os.path.join(root, name) for name in ("train", "test", "memorization")}
    write = functools.partial(_write_image_folder, image_of=image_of, caption_of=caption_of)
    write(paths["train"], train_rows)
    write(paths["test"], [(f"{stem_of(i)}.png", i, False) for i in test_ids])
    write(paths["memorization"], [(f"{stem_of(i)}.png", i, True) for i in memorization_ids])
    return DemoDataset(
        root=root,
        train_dir=paths["train"],
        test_dir=paths["test"],
        memorization_dir=paths["memorization"],
        num_train_rows=len(train_rows),
        num_test=len(test_ids),
        memorization_ids=list(memorization_ids),
    )


def build_demo_dataset(
    output_dir: str,
    num_test: int = 20,
    num_memorization: int = 10,
    memorization_repeats: int = 10,
    size: int = 32,
    seed: int = 0,
) -> DemoDataset:
    """Write the demo set (train with a duplicated memorization subset, held-out test) under ``output_dir``."""
    faces = lfw_faces(size)
    if num_test + num_memorization > len(faces):
        raise ValueError(f"num_test + num_memorization must be at most {len(faces)} (the LFW faces shipped).")
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(faces))]
    test_ids = sorted(order[:num_test])
    train_ids = sorted(order[num_test:])
    memorization_ids = sorted(order[num_test : num_test + num_memorization])
    return write_demo_splits(
        output_dir,
        train_ids,
        test_ids,
        memorization_ids,
        memorization_repeats,
        stem_of=lambda i: f"face_{i:03d}",
        image_of=faces.__getitem__,
        caption_of=face_caption,
    )
