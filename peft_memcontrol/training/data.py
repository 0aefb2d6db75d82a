"""Image-caption data for the trainer: the diffusers data conventions, deterministic batches, proxy sets.

Three sources give the same `ImageCaptionDataset`:

* an image folder with ``metadata.jsonl`` or ``metadata.csv`` files (diffusers' / ``datasets``' ``imagefolder``
  convention, subfolders included),
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

from .image_folders import find_metadata_files


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

#: PIL modes of 8-bit images, read exactly as ``image.convert("RGB")`` reads them (not ``LAB``: Pillow converts
#: it to RGB channel by channel, a mid gray to blue).
EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV")
#: PIL modes of integer images deeper than 8 bits: 16-bit PNGs and TIFFs (``I;16*``), 32-bit integer TIFFs (``I``).
INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
#: The bit depths an integer image is scaled by (detectors and DICOM exports store 8, 10, 12, 14 or 16 bits).
STORED_BIT_DEPTHS = (8, 10, 12, 14, 16)
#: What `check_image_file` and the loader report a file as unreadable for (``verify`` raises `SyntaxError`).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def mix_seed(*values: int) -> int:
    """Combine integers into one 63-bit seed (SplitMix64-style), stable across platforms and Python versions."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def stored_bit_depth(image: Image.Image, source: str = "image") -> int:
    """The bits an integer image (`INTEGER_MODES`) uses: the smallest of `STORED_BIT_DEPTHS` that holds its largest
    value. Values below 0 or above 65535 are refused, naming ``source``."""
    values = np.asarray(image)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(
            f"{source}: mode {image.mode} image with values in [{low}, {high}]; only 0 to 65535 (up to 16 bits) can be "
            "scaled by bit depth. Save it as a 16-bit grayscale PNG, or as a float TIFF scaled into [0, 1]."
        )
    return next(depth for depth in STORED_BIT_DEPTHS if high < 2**depth)


def data_bit_depth(images: Sequence[Image.Image | str]) -> int:
    """The one bit depth the integer images among ``images`` (PIL images or paths) are scaled by: the largest
    `stored_bit_depth` among them, or 8 when none is an integer image.

    One depth for the whole data set, so that equal pixel values mean equal intensities in every image: a 12-bit
    X-ray that happens to stay below 1024 is not scaled by 1023 while its neighbours are scaled by 4095. Only
    integer images are decoded (an 8-bit file's header says its mode).
    """
    depths = []
    for image in images:
        if isinstance(image, str):
            with Image.open(image) as opened:
                if opened.mode in INTEGER_MODES:
                    depths.append(stored_bit_depth(opened, image))
        elif image.mode in INTEGER_MODES:
            depths.append(stored_bit_depth(image))
    return max(depths, default=8)


def normalize_image(image: Image.Image, source: str = "image", bit_depth: int | None = None) -> Image.Image:
    """Return a new image holding ``image``'s pixels as 8-bit ``L`` or ``RGB``, or as ``F`` (grayscale) in [0, 1].

    ``convert("RGB")`` clips instead of scaling: a 16-bit X-ray (mode ``I;16``, 12-bit values) comes out almost
    all white and a float image in [0, 1] (mode ``F``) all black. So every image the trainer, the evaluation and
    ``examples/prepare_mimic_cxr.py`` read goes through this function, which scales by bit depth:

    * 8-bit images (`EIGHT_BIT_MODES`): ``L`` stays ``L``, any other becomes ``image.convert("RGB")``, exactly as
      they were always read.
    * Integer images deeper than 8 bits (`INTEGER_MODES`): divided by ``2**bit_depth - 1``. File headers do not say
      how many of a 16-bit container's bits are used, so the data decide: a data set passes its `data_bit_depth`
      (the smallest of 8, 10, 12, 14, 16 bits that holds the largest value of any of its images: a 12-bit X-ray
      set exported as 16-bit PNGs is divided by 4095, a set that uses all 16 bits by 65535); without ``bit_depth``
      the image's own `stored_bit_depth` is used. Values below 0, above 65535 or above ``2**bit_depth - 1`` are
      refused.
    * Float images (``F``): values in [0, 1] are used as they are; anything else (outside [0, 1], NaN) is refused.
    * Any other mode (``LAB``, ...) is refused.

    Refusals raise a `ValueError` that names ``source`` (the file), the mode and the fix.
    """
    mode = image.mode
    check_image_mode(mode, source)
    if mode in EIGHT_BIT_MODES:
        return image.copy() if mode == "L" else image.convert("RGB")
    if mode in INTEGER_MODES:
        own_depth = stored_bit_depth(image, source)
        if bit_depth is not None and own_depth > bit_depth:
            raise ValueError(
                f"{source}: a {own_depth}-bit image in a data set scaled as {bit_depth}-bit; its values would pass 1. "
                "Build the data set from all its images, so that their common bit depth is found."
            )
        bits = own_depth if bit_depth is None else bit_depth
        values = np.asarray(image)
        return Image.fromarray((values.astype(np.float64) / (2**bits - 1)).astype(np.float32))
    values = np.asarray(image)  # mode F, the one mode left
    if not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
        raise ValueError(
            f"{source}: float image (mode F) with values in [{values.min()}, {values.max()}]; float images must "
            "hold values in [0, 1]. Rescale it into [0, 1], or save it as an 8- or 16-bit integer image."
        )
    return image.copy()


def check_image_mode(mode: str, source: str = "image") -> None:
    """Refuse a PIL mode `normalize_image` cannot scale (``LAB``, ...), naming ``source`` and the fix."""
    if mode not in (*EIGHT_BIT_MODES, *INTEGER_MODES, "F"):
        raise ValueError(
            f"{source}: images of PIL mode {mode} are not supported. Save it as an 8-bit RGB or grayscale image, or "
            "as a 16-bit grayscale PNG."
        )


def check_image_file(path: str) -> int | None:
    """Raise what would make the image at ``path`` fail when a batch draws it: missing, not an image, truncated or
    corrupt, or of a mode or value range `normalize_image` refuses. Return the `stored_bit_depth` of an integer
    image (``None`` for other modes), so that a data set finds its `data_bit_depth` in the same pass.

    Cheap enough for every row of a data set: a PNG is checked with ``verify`` (every chunk's checksum, no
    decoding), a JPEG is decoded at an eighth of its size, other formats are decoded; the pixels are looked at only
    for integer and float images (their bit depth, their range).
    """
    if not os.path.lexists(path):
        raise FileNotFoundError("file not found")
    if not os.path.isfile(path):
        raise IsADirectoryError("not a file")
    with Image.open(path) as image:
        mode = image.mode
        if image.format == "PNG":
            image.verify()
        else:
            image.draft(mode, (1, 1))
            image.load()
    check_image_mode(mode, path)
    if mode in INTEGER_MODES:
        with Image.open(path) as image:
            return stored_bit_depth(image, path)
    if mode == "F":
        with Image.open(path) as image:
            normalize_image(image, path)
    return None


def image_to_tensor(
    image: Image.Image,
    resolution: int | None,
    center_crop: bool = True,
    random_flip: bool = False,
    aug_seed: int = 0,
    source: str = "image",
    bit_depth: int | None = None,
) -> torch.Tensor:
    """Resize (shorter side), crop to a square and scale an image to a ``3 x H x W`` tensor in [-1, 1].

    The same transforms as diffusers' training scripts, without torchvision. Random crop and flip draw from
    ``aug_seed``, so an augmentation is a pure function of the sample and the step. Pixels are scaled by bit depth
    (`normalize_image` with ``bit_depth``; ``source`` names the image in its errors): 8-bit images as
    ``x / 127.5 - 1``, deeper grayscale ones resized in float and repeated to 3 channels.
    """
    image = normalize_image(image, source, bit_depth)
    if image.mode == "L":
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
    if image.mode == "F":
        gray = np.asarray(image, dtype=np.float32) * 2.0 - 1.0
        array = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    if random_flip and rng.random() < 0.5:
        tensor = tensor.flip(-1)
    return tensor


class ImageCaptionDataset(Dataset):
    """Images (PIL images or file paths) with one caption each.

    Items are dicts ``{"pixel_values", "caption", "index"}``. An item can be asked for as ``dataset[i]`` or as
    ``dataset[(i, aug_seed)]``; the second form is what `StepBatchSampler` yields. Integer images deeper than 8 bits
    are all scaled by one ``bit_depth`` (default: `data_bit_depth` of the images, found when the set is built).
    """

    def __init__(
        self,
        images: Sequence[Image.Image | str],
        captions: Sequence[str],
        resolution: int | None = None,
        center_crop: bool = True,
        random_flip: bool = False,
        metadata: Sequence[dict[str, Any]] | None = None,
        bit_depth: int | None = None,
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
        self.bit_depth = bit_depth if bit_depth is not None else data_bit_depth(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> Image.Image:
        """Return sample ``index`` as stored (decoded, not yet scaled), opening it from disk if it is a path.

        A file that cannot be read raises an `OSError` that names it (Pillow's "image file is truncated" does not).
        """
        image = self.images[index]
        if isinstance(image, str):
            try:
                with Image.open(image) as opened:
                    opened.load()
                    return opened
            except OSError as err:
                raise OSError(f"{image}: {err}") from err
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = key if isinstance(key, tuple) else (key, 0)
        image = self.images[index]
        source = image if isinstance(image, str) else f"sample {index}"
        pixel_values = image_to_tensor(
            self.load_image(index),
            self.resolution,
            self.center_crop,
            self.random_flip,
            aug_seed,
            source,
            self.bit_depth,
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
            self.bit_depth,
        )

    @classmethod
    def from_image_folder(
        cls, root: str, image_column: str | None = None, caption_column: str = "text", **kwargs: Any
    ) -> ImageCaptionDataset:
        """Read an image folder as ``datasets``' ``imagefolder`` does: the rows of every ``metadata.jsonl`` (one JSON
        object a line) or every ``metadata.csv`` (a header, then one row a line) in ``root`` and its subfolders, with
        ``file_name`` and a caption column.

        A row's file name is relative to the folder of its metadata file, and must stay inside it (no absolute path,
        no ``..`` leading out; a symbolic link inside is followed); rows of a subfolder's file keep their path
        relative to ``root`` as file name. Files are read in path order (``root``'s first). As in ``imagefolder``,
        all metadata files of a folder are of one kind, and a subfolder named like a held-out split (``test``,
        ``validation``, ...) is refused rather than mixed into the training rows.

        Every row is checked once here rather than when a batch draws it, hours into training: its image must be
        one `check_image_file` accepts. All bad rows are reported in one error.
        """
        image_column = image_column or "file_name"
        images, captions, metadata, problems = [], [], [], []
        checks: dict[tuple[str, int], tuple[str | None, int | None]] = {}
        for metadata_path in find_metadata_files(root):
            folder = os.path.dirname(metadata_path)
            rows = read_metadata_rows(metadata_path)
            _check_columns([row for _, row in rows], metadata_path, image_column, caption_column)
            file_checks = {}
            for line, row in rows:
                path = os.path.join(folder, str(row[image_column]))
                file_checks[line] = _inspect(path, outside=_outside_folder(row[image_column]))
                images.append(path)
                captions.append(row[caption_column])
                if folder != root:
                    row = {**row, image_column: os.path.relpath(path, root).replace(os.sep, "/")}
                metadata.append(row)
            problems.append(_bad_rows_report(metadata_path, image_column, dict(rows), file_checks))
            checks.update({(metadata_path, line): check for line, check in file_checks.items()})
        problems = [problem for problem in problems if problem]
        if problems:
            raise ValueError("\n".join(problems))
        kwargs.setdefault("bit_depth", _common_bit_depth(checks))
        return cls(images, captions, metadata=metadata, **kwargs)

    @classmethod
    def from_csv(
        cls, path: str, image_column: str | None = None, caption_column: str | None = None, **kwargs: Any
    ) -> ImageCaptionDataset:
        """Read a CSV with a header; image paths are taken relative to the CSV's folder unless absolute.

        Defaults to the reference code's layout: the first column is the path and the second the caption. Every
        image is checked once here (`check_image_file`), and all unreadable rows are reported in one error.
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
        # line 1 is the header (a caption with a line break would shift the numbers; the file names are exact)
        checks = {line: _inspect(image) for line, image in enumerate(images, 2)}
        problems = _bad_rows_report(path, image_column, dict(enumerate(rows, 2)), checks)
        if problems:
            raise ValueError(problems)
        kwargs.setdefault("bit_depth", _common_bit_depth(checks))
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


def _outside_folder(file_name: Any) -> str | None:
    """Why ``file_name`` (a metadata row's) does not name a file inside the data folder, or ``None`` when it does."""
    if not isinstance(file_name, str) or not file_name:
        return f"the file name must be a non-empty string, got {file_name!r}"
    if os.path.isabs(file_name) or os.path.splitdrive(file_name)[0]:
        return "absolute path: file names must be relative to the data folder"
    normalized = os.path.normpath(file_name)
    if normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
        return "points outside the data folder ('..')"
    return None


def _inspect(path: str, outside: str | None = None) -> tuple[str | None, int | None]:
    """What is wrong with a row's image as one line (``outside``, why its name leaves the data folder, or what
    `check_image_file` finds; ``None`` when nothing is), and the image's bit depth."""
    if outside:
        return outside, None
    try:
        return None, check_image_file(path)
    except (FileNotFoundError, IsADirectoryError, ValueError) as err:
        return str(err).replace(f"{path}: ", ""), None
    except IMAGE_ERRORS as err:
        return f"{type(err).__name__}: {err}", None


def _common_bit_depth(checks: dict[Any, tuple[str | None, int | None]]) -> int:
    """The `data_bit_depth` of checked rows: the largest integer image's bit depth, 8 when there is none."""
    return max((depth for _, depth in checks.values() if depth is not None), default=8)


def _bad_rows_report(
    source: str, image_column: str, rows: dict[int, dict[str, Any]], checks: dict[int, tuple[str | None, int | None]]
) -> str | None:
    """The error listing every row of ``source`` with a problem (line, file name, what is wrong); ``None`` when no
    row has one."""
    bad = {line: problem for line, (problem, _) in checks.items() if problem}
    if not bad:
        return None
    listing = "\n".join(f"  line {line} ({rows[line][image_column]!r}): {problem}" for line, problem in bad.items())
    return (
        f"{source}: {len(bad)} of {len(rows)} rows name an image that cannot be used. Fix or remove these rows:"
        f"\n{listing}"
    )


def read_metadata_rows(path: str) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a ``metadata.jsonl`` (blank lines skipped) or ``metadata.csv`` (after its header), each with its
    line number in the file."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.endswith(".csv"):
            reader = csv.DictReader(f)
            # reader.line_num is the row's last line: a caption with a line break spans several
            rows = [(reader.line_num, row) for row in reader]
            if not rows:
                raise ValueError(f"{path} has no rows below its header.")
            return rows
        rows = []
        for line_number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((line_number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_number}: not valid JSON ({err}).") from err
        return rows


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
