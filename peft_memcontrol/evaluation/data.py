"""What a model is scored on: image folders read as `SplitImages`, and the three splits of an `EvaluationData`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..training import load_training_dataset


@dataclass
class SplitImages:
    """Images (``[0, 1]``, NCHW) and captions of one data folder; ``file_names`` name each row's file when known."""

    images: torch.Tensor
    captions: list[str]
    file_names: list[str] | None = None


@dataclass
class EvaluationData:
    """What every model is scored on: held-out images, the memorized subset, and the unique training images."""

    test: SplitImages
    memorization: SplitImages
    training: SplitImages


def dataset_split(dataset: Any, indices: Sequence[int] | None = None, progress: bool = False) -> SplitImages:
    """Images in ``[0, 1]`` (NCHW) and captions of a training-convention data set (pixel values in ``[-1, 1]``).

    Args:
        dataset: a `peft_memcontrol.training.ImageCaptionDataset` (or any data set of such items).
        indices: the samples to read, in order; ``None``: all of them.
        progress: show a progress bar.
    """
    indices = range(len(dataset)) if indices is None else indices
    items = [dataset[int(i)] for i in tqdm(indices, desc="Reading images", unit="image", disable=not progress)]
    images = torch.stack([item["pixel_values"] for item in items]).float().add(1.0).div(2.0).clamp(0.0, 1.0)
    return SplitImages(images, [item["caption"] for item in items])


def load_split(
    folder: str,
    resolution: int,
    unique: bool = True,
    max_images: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SplitImages:
    """Images and captions of an image folder; with ``unique``, each ``source_id`` only once.

    A row without ``source_id`` is its own source (keyed by ``file_name``): rows that share a caption, such as the
    many X-rays whose impression reads "No acute cardiopulmonary process.", are different images and all count.

    ``max_images`` keeps a seeded random subset of those rows (in folder order), chosen before any image is read,
    so a large folder never has to fit in memory. ``progress`` shows a bar while the images are read.
    """
    dataset = load_training_dataset(train_data_dir=folder, resolution=resolution)
    seen, indices = set(), []
    for index, row in enumerate(dataset.metadata):
        key = ("source_id", row["source_id"]) if "source_id" in row else ("file_name", row.get("file_name", index))
        if unique and key in seen:
            continue
        seen.add(key)
        indices.append(index)
    if max_images is not None and len(indices) > max_images:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}.")
        chosen = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:max_images]
        indices = [indices[i] for i in sorted(chosen.tolist())]
    split = dataset_split(dataset, indices, progress)
    split.file_names = [str(dataset.metadata[i].get("file_name", i)) for i in indices]
    return split


def load_evaluation_data(folders: Any, resolution: int = 32) -> EvaluationData:
    """The three splits of a data set written as image folders (``test_dir``, ``memorization_dir``, ``train_dir``:
    a `peft_memcontrol.sample_data.ImageFolderSplits`, for one)."""
    return EvaluationData(
        test=load_split(folders.test_dir, resolution),
        memorization=load_split(folders.memorization_dir, resolution),
        training=load_split(folders.train_dir, resolution),
    )
