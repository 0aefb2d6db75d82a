"""Images deeper than 8 bits are scaled by bit depth, never clipped; 8-bit images read exactly as before.

The fixtures are real pictures (scikit-image's ``camera``) written as the files X-ray exports produce: 12-bit
values in 16-bit PNGs and TIFFs, full 16-bit PNGs, 32-bit integer TIFFs and float TIFFs in [0, 1]. Each expected
tensor is computed with numpy from the array that was written, not by the package.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from peft_memcontrol.training import ImageCaptionDataset, image_to_tensor, load_training_dataset


HEIGHT, WIDTH = 96, 128  # a landscape picture: the loader center-crops it to 96 x 96


def _camera() -> np.ndarray:
    """scikit-image's 512 x 512 camera photo (8-bit), subsampled to ``HEIGHT x WIDTH``."""
    import skimage.data

    return skimage.data.camera()[::4, ::4][:HEIGHT, :WIDTH]


def _write_folder(root: str, name: str, array: np.ndarray) -> str:
    """An image folder with one image, written by PIL from ``array``."""
    os.makedirs(root, exist_ok=True)
    Image.fromarray(array).save(os.path.join(root, name))
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        f.write(json.dumps({"file_name": name, "text": "a chest x-ray"}) + "\n")
    return root


def _expected(unit: np.ndarray) -> torch.Tensor:
    """The ``3 x 96 x 96`` tensor in [-1, 1] of a [0, 1] grayscale array: center crop, ``2x - 1``, 3 channels."""
    left = (WIDTH - HEIGHT) // 2
    crop = unit[:, left : left + HEIGHT].astype(np.float64) * 2.0 - 1.0
    return torch.from_numpy(np.repeat(crop[None], 3, axis=0)).float()


CASES = {
    # name: (file name, array written, the array scaled into [0, 1] by the documented rule)
    "12-bit in a 16-bit PNG": ("xray.png", lambda c: (c / 255 * 4095).round().astype(np.uint16), 4095),
    "12-bit in a big-endian 16-bit TIFF": ("xray.tif", lambda c: (c / 255 * 4095).round().astype(">u2"), 4095),
    # a darker 12-bit picture (largest value 3000) is still divided by 4095, not brightened to its own maximum
    "12-bit, largest value 3000": ("xray.png", lambda c: (c / 255 * 3000).round().astype(np.uint16), 4095),
    "16-bit PNG": ("xray.png", lambda c: c.astype(np.uint16) * 257, 65535),
    "10-bit in a 32-bit integer TIFF": ("xray.tif", lambda c: (c / 255 * 1023).round().astype(np.int32), 1023),
}


@pytest.mark.parametrize("case", list(CASES))
def test_integer_images_are_scaled_by_bit_depth(tmp_path, case):
    name, make, scale = CASES[case]
    array = make(_camera())
    folder = _write_folder(str(tmp_path / "data"), name, array)
    with Image.open(os.path.join(folder, name)) as written:
        assert written.mode in ("I;16", "I;16B", "I")  # the modes convert("RGB") clipped
    dataset = load_training_dataset(train_data_dir=folder, resolution=HEIGHT)
    expected = _expected(array.astype(np.float64) / scale)
    torch.testing.assert_close(dataset[0]["pixel_values"], expected, atol=1e-6, rtol=0)
    assert (dataset[0]["pixel_values"] >= 1.0).float().mean() < 0.01  # convert("RGB") made most pixels white


def test_float_image_in_unit_range_is_used_as_is(tmp_path):
    unit = (_camera() / 255.0).astype(np.float32)
    folder = _write_folder(str(tmp_path / "data"), "xray.tif", unit)
    dataset = load_training_dataset(train_data_dir=folder, resolution=HEIGHT)
    torch.testing.assert_close(dataset[0]["pixel_values"], _expected(unit), atol=1e-6, rtol=0)


def test_in_memory_16_bit_image_is_scaled(tmp_path):
    """Images handed over as PIL objects (a Hugging Face data set decodes 16-bit PNGs to ``I;16``) too."""
    array = (_camera() / 255 * 4095).round().astype(np.uint16)
    tensor = image_to_tensor(Image.fromarray(array), HEIGHT)
    torch.testing.assert_close(tensor, _expected(array / 4095), atol=1e-6, rtol=0)


def test_resized_16_bit_image_keeps_its_range(tmp_path):
    array = (_camera() / 255 * 4095).round().astype(np.uint16)
    tensor = image_to_tensor(Image.fromarray(array), 32)
    unit = _expected(array / 4095)
    assert tensor.shape == (3, 32, 32)
    # a bilinear downscale keeps the mean and the range of the picture
    assert abs(tensor.mean().item() - unit.mean().item()) < 0.02
    assert unit.min() - 1e-6 <= tensor.min() and tensor.max() <= unit.max() + 1e-6


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (lambda c: c.astype(np.float32), r"\[[0-9.]+, 255\.0\].*\[0, 1\]"),
        (lambda c: np.full(c.shape, np.nan, np.float32), "nan"),
    ],
    ids=["0-255 floats", "NaN"],
)
def test_float_image_outside_unit_range_is_refused_at_read(tmp_path, values, message):
    folder = _write_folder(str(tmp_path / "data"), "xray.tif", values(_camera()))
    with pytest.raises(ValueError, match=rf"xray\.tif.*mode F.*{message}"):
        load_training_dataset(train_data_dir=folder, resolution=HEIGHT)


def test_unsupported_mode_is_refused_naming_file_and_mode(tmp_path):
    folder = str(tmp_path / "data")
    os.makedirs(folder)
    Image.new("LAB", (WIDTH, HEIGHT), (50, 0, 0)).save(os.path.join(folder, "lab.tif"))
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        f.write(json.dumps({"file_name": "lab.tif", "text": "a chest x-ray"}) + "\n")
    with pytest.raises(ValueError, match=r"lab\.tif.*mode LAB.*16-bit grayscale PNG"):
        load_training_dataset(train_data_dir=folder, resolution=HEIGHT)
    with pytest.raises(ValueError, match=r"sample 0.*mode LAB"):
        ImageCaptionDataset([Image.new("LAB", (8, 8))], ["a"])[0]


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "RGBA", "1", "LA"])
def test_eight_bit_images_read_as_before(tmp_path, mode):
    """8-bit images give exactly ``convert("RGB")``'s pixels / 127.5 - 1, after the same bilinear resize."""
    camera = _camera()
    rgb = np.stack([camera, camera[::-1], 255 - camera], axis=-1)
    image = Image.fromarray(rgb).convert(mode)
    path = str(tmp_path / "image.png")
    image.save(path)
    dataset = ImageCaptionDataset([path], ["a"], resolution=48)
    with Image.open(path) as reopened:
        resized = reopened.convert("RGB").resize((64, 48), Image.BILINEAR).crop((8, 0, 56, 48))
    expected = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    assert torch.equal(dataset[0]["pixel_values"], expected)


def test_one_bit_depth_scales_every_image_of_a_data_set(tmp_path):
    """A dark 12-bit X-ray (largest value 900 < 1024) beside a bright one is divided by 4095 like its neighbour, not
    by 1023: equal stored values mean equal intensities in every image of a data set."""
    bright = (_camera() / 255 * 4095).round().astype(np.uint16)
    dark = (_camera() / 255 * 900).round().astype(np.uint16)
    folder = tmp_path / "data"
    folder.mkdir()
    rows = []
    for name, array in (("bright.png", bright), ("dark.png", dark)):
        Image.fromarray(array).save(folder / name)
        rows.append(json.dumps({"file_name": name, "text": f"a chest x-ray {name}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    dataset = load_training_dataset(train_data_dir=str(folder), resolution=HEIGHT)
    assert dataset.bit_depth == 12
    torch.testing.assert_close(dataset[1]["pixel_values"], _expected(dark / 4095), atol=1e-6, rtol=0)
    assert dataset.subset([1]).bit_depth == 12
    in_memory = ImageCaptionDataset([Image.fromarray(bright), Image.fromarray(dark)], ["a", "b"], resolution=HEIGHT)
    torch.testing.assert_close(in_memory[1]["pixel_values"], _expected(dark / 4095), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="12-bit image in a data set scaled as 10-bit"):
        ImageCaptionDataset([Image.fromarray(bright)], ["a"], resolution=HEIGHT, bit_depth=10)[0]
