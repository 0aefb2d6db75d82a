"""Image-caption data for the trainer: the diffusers data conventions, deterministic batches, proxy sets.

Three sources give the same `ImageCaptionDataset`:

* an image folder with a ``metadata.jsonl`` (diffusers' / ``datasets``' ``imagefolder`` convention),
* a CSV file of image path and caption (the layout the MemControl reference code reads),
* a Hugging Face data set (``datasets.load_dataset``; the ``datasets`` package is only needed for this one).

Batches are drawn by `StepBatchSampler`, which computes every batch (and every augmentation seed) from the seed
and the step number alone. That is what makes resuming from a checkpoint exact and the runs of several processes
disjoint without a distributed sampler.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def mix_seed(*values: int) -> int:
    """Combine integers into one 63-bit seed (SplitMix64-style), stable across platforms and Python versions."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def image_to_tensor(
    image: Image.Image,
    resolution: int | None,
    center_crop: bool = True,
    random_flip: bool = False,
    aug_seed: int = 0,
) -> torch.Tensor:
    """Resize (shorter side), crop to a square and scale an image to a ``3 x H x W`` tensor in [-1, 1].

    The same transforms as diffusers' training scripts, without torchvision. Random crop and flip draw from
    ``aug_seed``, so an augmentation is a pure function of the sample and the step.
    """
    image = image.convert("RGB")
    rng = np.random.default_rng(aug_seed)
    if resolution is not None:
        w, h = image.size
        scale = resolution / min(w, h)
        new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        if center_crop:
            left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
        else:
            left = int(rng.integers(0, new_w - resolution + 1))
            top = int(rng.integers(0, new_h - resolution + 1))
        image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    if random_flip and rng.random() < 0.5:
        tensor = tensor.flip(-1)
    return tensor


class ImageCaptionDataset(Dataset):
    """Images (PIL images or file paths) with one caption each.

    Items are dicts ``{"pixel_values", "caption", "index"}``. An item can be asked for as ``dataset[i]`` or as
    ``dataset[(i, aug_seed)]``; the second form is what `StepBatchSampler` yields.
    """

    def __init__(
        self,
        images: Sequence[Image.Image | str],
        captions: Sequence[str],
        resolution: int | None = None,
        center_crop: bool = True,
        random_flip: bool = False,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        if len(images) != len(captions):
            raise ValueError(f"Got {len(images)} images but {len(captions)} captions: they must pair up one to one.")
        if len(images) == 0:
            raise ValueError("The training data set is empty: check the data directory, CSV file or data set name.")
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(
                    f"Caption of sample {i} is {type(caption).__name__}, not a string: check --caption_column."
                )
        self.images = list(images)
        self.captions = list(captions)
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.metadata = list(metadata) if metadata is not None else [{} for _ in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> Image.Image:
        """Return sample ``index`` as a PIL image, opening it from disk if it is a path."""
        image = self.images[index]
        if isinstance(image, str):
            with Image.open(image) as opened:
                return opened.convert("RGB")
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = key if isinstance(key, tuple) else (key, 0)
        pixel_values = image_to_tensor(
            self.load_image(index), self.resolution, self.center_crop, self.random_flip, aug_seed
        )
        return {"pixel_values": pixel_values, "caption": self.captions[index], "index": index}

    def subset(self, indices: Sequence[int]) -> ImageCaptionDataset:
        """Return a data set made of the given samples (repeats allowed), keeping the transforms."""
        return ImageCaptionDataset(
            [self.images[i] for i in indices],
            [self.captions[i] for i in indices],
            self.resolution,
            self.center_crop,
            self.random_flip,
            [self.metadata[i] for i in indices],
        )

    @classmethod
    def from_image_folder(
        cls, root: str, image_column: str | None = None, caption_column: str = "text", **kwargs: Any
    ) -> ImageCaptionDataset:
        """Read ``root/metadata.jsonl`` (one JSON object a line with ``file_name`` and a caption column)."""
        metadata_path = os.path.join(root, "metadata.jsonl")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--train_data_dir {root} does not exist.")
        if not os.path.isfile(metadata_path):
            raise FileNotFoundError(
                f"{metadata_path} not found: an image folder needs a metadata.jsonl with one line per image, "
                'such as {"file_name": "0001.png", "text": "a photo of ..."}.'
            )
        image_column = image_column or "file_name"
        rows = []
        with open(metadata_path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{metadata_path}, line {line_number}: not valid JSON ({err}).") from err
        _check_columns(rows, metadata_path, image_column, caption_column)
        images = [os.path.join(root, row[image_column]) for row in rows]
        return cls(images, [row[caption_column] for row in rows], metadata=rows, **kwargs)

    @classmethod
    def from_csv(
        cls, path: str, image_column: str | None = None, caption_column: str | None = None, **kwargs: Any
    ) -> ImageCaptionDataset:
        """Read a CSV with a header; image paths are taken relative to the CSV's folder unless absolute.

        Defaults to the reference code's layout: the first column is the path and the second the caption.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CSV file {path} does not exist.")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f"{path} has no rows below its header.")
        columns = list(rows[0].keys())
        image_column = image_column or columns[0]
        caption_column = caption_column or (columns[1] if len(columns) > 1 else "text")
        _check_columns(rows, path, image_column, caption_column)
        base = os.path.dirname(os.path.abspath(path))
        images = [os.path.join(base, row[image_column]) for row in rows]
        return cls(images, [row[caption_column] for row in rows], metadata=rows, **kwargs)

    @classmethod
    def from_hf_dataset(
        cls, dataset: Any, image_column: str | None = None, caption_column: str | None = None, **kwargs: Any
    ) -> ImageCaptionDataset:
        """Wrap one split of a Hugging Face ``datasets.Dataset`` (images decoded to PIL by ``datasets``)."""
        columns = list(dataset.column_names)
        image_column = image_column or columns[0]
        caption_column = caption_column or (columns[1] if len(columns) > 1 else "text")
        for name, flag in ((image_column, "--image_column"), (caption_column, "--caption_column")):
            if name not in columns:
                raise ValueError(f"{flag} '{name}' is not a column of the data set; its columns are {columns}.")
        return cls(list(dataset[image_column]), list(dataset[caption_column]), **kwargs)


def _check_columns(rows: list[dict[str, Any]], source: str, image_column: str, caption_column: str) -> None:
    """Raise a clear error naming the missing column and the flag that selects it."""
    columns = sorted(rows[0].keys()) if rows else []
    for name, flag in ((image_column, "--image_column"), (caption_column, "--caption_column")):
        for line, row in enumerate(rows, 1):
            if name not in row:
                raise ValueError(
                    f"{source}: row {line} has no '{name}' column (columns: {columns}). "
                    f"Pass the right name with {flag}."
                )


def load_training_dataset(
    train_data_dir: str | None = None,
    dataset_name: str | None = None,
    train_csv: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    dataset_config_name: str | None = None,
    cache_dir: str | None = None,
    resolution: int | None = None,
    center_crop: bool = True,
    random_flip: bool = False,
    max_train_samples: int | None = None,
) -> ImageCaptionDataset:
    """Load training data from exactly one of an image folder, a CSV file or a Hugging Face data set name."""
    given = [x for x in (train_data_dir, dataset_name, train_csv) if x]
    if len(given) != 1:
        raise ValueError("Pass exactly one of --train_data_dir, --dataset_name or --train_csv.")
    transform = {"resolution": resolution, "center_crop": center_crop, "random_flip": random_flip}
    if train_data_dir:
        dataset = ImageCaptionDataset.from_image_folder(
            train_data_dir, image_column, caption_column or "text", **transform
        )
    elif train_csv:
        dataset = ImageCaptionDataset.from_csv(train_csv, image_column, caption_column, **transform)
    else:
        try:
            import datasets
        except ImportError as err:
            raise ImportError(
                '--dataset_name needs the `datasets` package: pip install "peft-memcontrol[datasets]"'
            ) from err
        hf = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)["train"]
        dataset = ImageCaptionDataset.from_hf_dataset(hf, image_column, caption_column, **transform)
    if max_train_samples is not None:
        dataset = dataset.subset(range(min(max_train_samples, len(dataset))))
    return dataset


@dataclass
class ProxySet:
    """A proxy training set (method.md, inner loop): a random part of the data plus a repeated memorization subset.

    Attributes:
        dataset: the proxy training data (memorization samples appear ``repeats`` times).
        memorization_indices: indices into the *original* data set of the memorization subset.
        fraction_indices: indices into the original data set of the random part.
        memorization_dataset: the memorization subset once each (what the memorization reward scores).
    """

    dataset: ImageCaptionDataset
    memorization_indices: list[int]
    fraction_indices: list[int]
    memorization_dataset: ImageCaptionDataset


def build_proxy_set(
    dataset: ImageCaptionDataset,
    fraction: float = 0.01,
    num_memorization: int | None = None,
    memorization_indices: Sequence[int] | None = None,
    repeats: int = 50,
    seed: int = 0,
) -> ProxySet:
    """Build the search's proxy data set: ``fraction`` of the data plus a memorization subset repeated ``repeats`` times.

    The memorization subset is either given (``memorization_indices``) or drawn (``num_memorization`` samples); the
    random part is drawn from the remaining samples. Duplication is what provokes memorization (Carlini et al. 2023),
    so the proxy set does it on purpose.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(dataset))]
    if memorization_indices is None:
        if num_memorization is None:
            raise ValueError("Pass memorization_indices or num_memorization.")
        memorization_indices = order[:num_memorization]
    memorization_indices = [int(i) for i in memorization_indices]
    chosen = set(memorization_indices)
    rest = [i for i in order if i not in chosen]
    fraction_indices = sorted(rest[: math.ceil(fraction * len(dataset))]) if fraction > 0 else []
    indices = fraction_indices + [i for i in memorization_indices for _ in range(repeats)]
    return ProxySet(
        dataset=dataset.subset(indices),
        memorization_indices=memorization_indices,
        fraction_indices=fraction_indices,
        memorization_dataset=dataset.subset(memorization_indices),
    )


class StepBatchSampler:
    """Yield the batch of each micro-step as a pure function of ``(seed, step)``.

    The sample stream is the concatenation of seeded permutations of the data set (one per epoch); micro-step ``s``
    takes the global batch ``stream[s * B : (s + 1) * B]`` with ``B = batch_size * num_processes``, and process ``r``
    keeps its slice. Each element is ``(index, aug_seed)``. Starting at ``start_step`` therefore resumes the exact
    stream, and processes never see the same slot.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        num_steps: int,
        seed: int = 0,
        start_step: int = 0,
        num_processes: int = 1,
        process_index: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError("Cannot sample batches from an empty data set.")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.num_steps = num_steps
        self.seed = seed
        self.start_step = start_step
        self.num_processes = num_processes
        self.process_index = process_index
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {
                epoch: np.random.default_rng(mix_seed(self.seed, epoch)).permutation(self.num_samples)
            }
        return self._permutations[epoch]

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """The ``(index, aug_seed)`` pairs this process trains on at micro-step ``step``."""
        global_batch = self.batch_size * self.num_processes
        first = step * global_batch + self.process_index * self.batch_size
        batch = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_samples)
            batch.append((int(self._permutation(epoch)[offset]), mix_seed(self.seed, position, 1)))
        return batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.num_steps):
            yield self.batch_for_step(step)

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step)


def collate_image_captions(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack pixel values; keep captions as strings (they are randomized and tokenized in the training step)."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]).contiguous(),
        "captions": [item["caption"] for item in items],
        "indices": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }
