"""Image folders read as ``datasets``' ``imagefolder`` reads them: ``metadata.csv`` as well as ``metadata.jsonl``, and
metadata files in subfolders, with every row checked when the folder is read.

The images are real photos from the scikit-image wheel; each folder is compared with an independent reading of the
same files: the ``metadata.jsonl`` reading of the same folder, and ``datasets.load_dataset("imagefolder")``.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from peft_memcontrol.training import ImageCaptionDataset, load_training_dataset


PHOTOS = ("camera", "coins", "astronaut", "moon", "coffee")


def _photo(name: str) -> np.ndarray:
    """A real 8-bit photo (grayscale or RGB) from the scikit-image wheel, subsampled to 64 px or so."""
    import skimage.data

    return getattr(skimage.data, name)()[::8, ::8]


def _write_metadata(folder: str, kind: str, rows: list[dict[str, str]]) -> None:
    """``metadata.<kind>`` (``jsonl`` or ``csv``) in ``folder`` with ``rows``."""
    path = os.path.join(folder, f"metadata.{kind}")
    with open(path, "w", newline="", encoding="utf-8") as f:
        if kind == "jsonl":
            f.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _photo_folder(root: str, kind: str, layout: dict[str, tuple[str, ...]]) -> str:
    """A folder of photos with one metadata file per subfolder of ``layout`` (``""``: the root). Captions hold a
    comma, a quote and a line break, which a CSV must quote."""
    for subfolder, names in layout.items():
        folder = os.path.join(root, subfolder)
        os.makedirs(folder, exist_ok=True)
        for name in names:
            Image.fromarray(_photo(name)).save(os.path.join(folder, f"{name}.png"))
        rows = [{"file_name": f"{name}.png", "text": f'a "{name}", photo\nin /{subfolder}'} for name in names]
        _write_metadata(folder, kind, rows)
    return root


def _items(dataset: ImageCaptionDataset) -> list[tuple[str, torch.Tensor]]:
    return [(item["caption"], item["pixel_values"]) for item in (dataset[i] for i in range(len(dataset)))]


def test_a_metadata_csv_reads_as_the_jsonl_of_the_same_folder(tmp_path):
    layout = {"": PHOTOS}
    from_csv = load_training_dataset(train_data_dir=_photo_folder(str(tmp_path / "csv"), "csv", layout), resolution=32)
    from_jsonl = load_training_dataset(
        train_data_dir=_photo_folder(str(tmp_path / "jsonl"), "jsonl", layout), resolution=32
    )
    assert len(from_csv) == len(PHOTOS) == len(from_jsonl)
    assert from_csv.metadata == from_jsonl.metadata
    for (csv_caption, csv_pixels), (jsonl_caption, jsonl_pixels) in zip(_items(from_csv), _items(from_jsonl)):
        assert csv_caption == jsonl_caption and "\n" in csv_caption
        assert torch.equal(csv_pixels, jsonl_pixels)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_metadata_files_in_subfolders_are_read_as_imagefolder_reads_them(tmp_path, kind):
    datasets = pytest.importorskip("datasets")
    layout = {"": PHOTOS[:2], "b": PHOTOS[2:3], os.path.join("a", "deep"): PHOTOS[3:]}
    root = _photo_folder(str(tmp_path / "data"), kind, layout)
    ours = load_training_dataset(train_data_dir=root, resolution=None)
    # root's rows first, then the subfolders in path order; file names relative to the data folder
    assert [row["file_name"] for row in ours.metadata] == [
        "camera.png",
        "coins.png",
        "a/deep/moon.png",
        "a/deep/coffee.png",
        "b/astronaut.png",
    ]
    reference = datasets.load_dataset("imagefolder", data_dir=root, split="train", cache_dir=str(tmp_path / "cache"))
    expected = sorted(
        (caption, image.convert("RGB").tobytes()) for caption, image in zip(reference["text"], reference["image"])
    )
    read = sorted(
        (caption, pixels.add(1).mul(127.5).round().byte().permute(1, 2, 0).numpy().tobytes())
        for caption, pixels in _items(ours)
    )
    assert [caption for caption, _ in read] == [caption for caption, _ in expected]
    assert all(ours_bytes == reference_bytes for (_, ours_bytes), (_, reference_bytes) in zip(read, expected))


def test_every_csv_row_is_checked_with_its_line_in_its_own_file(tmp_path):
    root = _photo_folder(str(tmp_path / "data"), "csv", {"": PHOTOS[:2], "sub": PHOTOS[2:3]})
    outside = tmp_path / "outside.png"
    Image.fromarray(_photo("camera")).save(outside)  # a valid image: only the path rule can refuse it
    sub = os.path.join(root, "sub")
    _write_metadata(
        sub,
        "csv",
        [
            {"file_name": "astronaut.png", "text": "fine"},
            {"file_name": "../camera.png", "text": "leaves its metadata file's folder"},
            {"file_name": "gone.png", "text": "missing"},
        ],
    )
    with pytest.raises(ValueError) as caught:
        load_training_dataset(train_data_dir=root, resolution=32)
    message = str(caught.value)
    assert f"{os.path.join(sub, 'metadata.csv')}: 2 of 3 rows" in message
    assert "line 3 ('../camera.png'): points outside the data folder" in message
    assert "line 4 ('gone.png'): file not found" in message
    assert "astronaut" not in message


def test_folders_imagefolder_would_not_train_on_as_one_set_are_refused(tmp_path):
    both = _photo_folder(str(tmp_path / "both"), "csv", {"": PHOTOS[:1]})
    _photo_folder(both, "jsonl", {"sub": PHOTOS[1:2]})
    with pytest.raises(ValueError, match="both metadata.jsonl and metadata.csv"):
        load_training_dataset(train_data_dir=both, resolution=32)

    splits = _photo_folder(str(tmp_path / "splits"), "jsonl", {"train": PHOTOS[:2], "test": PHOTOS[2:3]})
    with pytest.raises(ValueError, match=r"held-out split.*train/ subfolder"):
        load_training_dataset(train_data_dir=splits, resolution=32)
    assert len(load_training_dataset(train_data_dir=os.path.join(splits, "train"), resolution=32)) == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    Image.fromarray(_photo("camera")).save(empty / "camera.png")
    with pytest.raises(FileNotFoundError, match=r"no metadata.jsonl or metadata.csv[\s\S]*--train_csv"):
        load_training_dataset(train_data_dir=str(empty), resolution=32)
