"""Every row of an image folder (or CSV) is checked when the folder is read, not when a batch draws it.

Broken files are made from real images (scikit-image's ``camera`` and ``coins``, written by PIL): a PNG cut in
half, a PNG with a flipped byte, a JPEG cut in half, a text file, a missing file, a folder. File names that lead
outside the data folder point at valid images, so only the path rule can refuse them.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from peft_memcontrol.training import ImageCaptionDataset, load_training_dataset

from helpers.images import write_image_folder


def _picture(name: str) -> np.ndarray:
    """A real 8-bit grayscale photo from the scikit-image wheel, subsampled to about 128 px."""
    import skimage.data

    return getattr(skimage.data, name)()[::4, ::4]


def _write_rows(folder: str, names: list[str]) -> None:
    """``metadata.jsonl`` with one row per file name, captions ``"row <i>"``."""
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        for i, name in enumerate(names):
            f.write(json.dumps({"file_name": name, "text": f"row {i}"}) + "\n")


@pytest.fixture
def broken_folder(tmp_path) -> str:
    """Two good images and one of each kind of bad row."""
    folder = tmp_path / "data"
    folder.mkdir()
    Image.fromarray(_picture("camera")).save(folder / "good.png")
    Image.fromarray(_picture("coins")).save(folder / "good.jpg", quality=95)
    png = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    corrupt = bytearray(png)
    corrupt[len(png) // 2] ^= 0xFF
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    jpeg = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.txt").write_text("not an image")
    (folder / "subfolder").mkdir()
    _write_rows(
        str(folder),
        [
            "good.png",
            "truncated.png",
            "corrupt.png",
            "good.jpg",
            "truncated.jpg",
            "notes.txt",
            "gone.png",
            "subfolder",
        ],
    )
    return str(folder)


def test_all_bad_rows_are_reported_at_read_with_file_names(broken_folder):
    with pytest.raises(ValueError) as caught:
        load_training_dataset(train_data_dir=broken_folder, resolution=32)
    message = str(caught.value)
    assert "metadata.jsonl: 6 of 8 rows" in message
    listed = message.splitlines()[1:]
    expected = {
        2: ("truncated.png", "Truncated"),
        3: ("corrupt.png", "broken PNG file"),
        5: ("truncated.jpg", "truncated"),
        6: ("notes.txt", "cannot identify image file"),
        7: ("gone.png", "file not found"),
        8: ("subfolder", "not a file"),
    }
    assert len(listed) == len(expected)
    for row, (line, (name, problem)) in zip(listed, expected.items()):
        assert row.startswith(f"  line {line} ('{name}'): ") and problem in row, row


def test_rows_are_counted_as_lines_of_the_file(tmp_path):
    folder = write_image_folder(str(tmp_path / "data"), n=3)
    with open(os.path.join(folder, "metadata.jsonl"), "a") as f:
        f.write("\n" + json.dumps({"file_name": "missing.png", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"1 of 4 rows[\s\S]*line 5 \('missing.png'\): file not found"):
        ImageCaptionDataset.from_image_folder(folder)


@pytest.mark.parametrize("kind", ["absolute", "parent", "nested parent"])
def test_file_names_outside_the_folder_are_refused(tmp_path, kind):
    outside = tmp_path / "outside.png"
    Image.fromarray(_picture("camera")).save(outside)  # a valid image: only the path rule can refuse it
    folder = write_image_folder(str(tmp_path / "data"), n=2)
    name = {"absolute": str(outside), "parent": "../outside.png", "nested parent": "sub/../../outside.png"}[kind]
    with open(os.path.join(folder, "metadata.jsonl"), "a") as f:
        f.write(json.dumps({"file_name": name, "text": "x"}) + "\n")
    with pytest.raises(
        ValueError, match=r"1 of 3 rows[\s\S]*line 3 \(.*outside\.png'\): (absolute path|points outside)"
    ):
        load_training_dataset(train_data_dir=folder, resolution=32)


def test_paths_inside_the_folder_are_accepted(tmp_path):
    folder = write_image_folder(str(tmp_path / "data"), n=2)
    os.makedirs(os.path.join(folder, "sub"))
    Image.fromarray(_picture("coins")).save(os.path.join(folder, "sub", "coins.png"))
    with open(os.path.join(folder, "metadata.jsonl"), "a") as f:
        f.write(json.dumps({"file_name": "sub/../sub/coins.png", "text": "coins"}) + "\n")
    dataset = load_training_dataset(train_data_dir=folder, resolution=32)
    assert len(dataset) == 3 and dataset[2]["pixel_values"].shape == (3, 32, 32)


def test_csv_rows_are_checked_too(tmp_path):
    folder = write_image_folder(str(tmp_path / "data"), n=2)
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    path = tmp_path / "data" / "train.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows([["000.png", "a"], ["notes.txt", "b"], ["001.png", "c"], ["gone.png", "d"]])
    with pytest.raises(ValueError) as caught:
        load_training_dataset(train_csv=str(path), resolution=32)
    message = str(caught.value)
    assert "train.csv: 2 of 4 rows" in message
    assert (
        "line 3 ('notes.txt'): UnidentifiedImageError" in message and "line 5 ('gone.png'): file not found" in message
    )
    assert "000.png" not in message and folder in message


def test_a_file_broken_after_the_check_is_named_when_drawn(tmp_path):
    folder = write_image_folder(str(tmp_path / "data"), n=2)
    dataset = load_training_dataset(train_data_dir=folder, resolution=32)
    path = tmp_path / "data" / "001.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"001\.png"):
        dataset[1]
