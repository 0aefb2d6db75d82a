"""Write a data set as three diffusers image folders: ``train/`` with a duplicated subset, ``test/`` and
``memorization/``; the layout of both sample sets and of every data set the demo and the tests build.

Every folder has diffusers' ``metadata.jsonl`` (``file_name``, ``text``) plus ``source_id`` (which source image a
row is) and ``memorized`` (whether it belongs to the duplicated subset).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image


FIRST_NAMES = ("Alice", "Bruno", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia")
LAST_NAMES = ("Moreau", "Okafor", "Lindqvist", "Tanaka", "Silva", "Novak", "Haddad", "Kowalski", "Reyes", "Byrne")


def made_up_name(index: int) -> str:
    """A made-up person's name, distinct for the indices 0..99 (captions use it to make every sample unique)."""
    return f"{FIRST_NAMES[index % 10]} {LAST_NAMES[(index // 10) % 10]}"


@dataclass
class ImageFolderSplits:
    """Paths and sizes of the image folders written by `write_splits`."""

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


def write_splits(
    output_dir: str,
    train_ids: list[int],
    test_ids: list[int],
    memorization_ids: list[int],
    memorization_repeats: int,
    stem_of: Callable[[int], str],
    image_of: Callable[[int], Image.Image],
    caption_of: Callable[[int], str],
) -> ImageFolderSplits:
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
    return ImageFolderSplits(
        root=root,
        train_dir=paths["train"],
        test_dir=paths["test"],
        memorization_dir=paths["memorization"],
        num_train_rows=len(train_rows),
        num_test=len(test_ids),
        memorization_ids=list(memorization_ids),
    )
