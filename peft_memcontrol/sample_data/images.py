"""Real images that ship inside pip packages (scikit-learn, scikit-image), turned into captioned 32 x 32 samples.

They feed the tiny pipeline's pretraining (digits and photos) and the demo fine-tuning set (LFW faces, a domain the
tiny pipeline never saw). Everything is deterministic: the same seed gives the same images on every machine.
Needs ``scikit-image`` and ``scikit-learn`` (``pip install scikit-image scikit-learn``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: skimage.data photos shipped inside the wheel (no download), with the caption subject of each.
SKIMAGE_PHOTOS: dict[str, str] = {
    "astronaut": "an astronaut",
    "brick": "a brick wall",
    "camera": "a cameraman",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "coins": "coins",
    "colorwheel": "a color wheel",
    "grass": "grass",
    "gravel": "gravel",
    "hubble_deep_field": "galaxies in space",
    "immunohistochemistry": "stained tissue",
    "moon": "the moon surface",
    "page": "a page of text",
    "rocket": "a rocket",
    "text": "printed text",
    "clock": "a clock",
}


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ImportError(
            f"Building the tiny pipeline's data needs {module}: pip install scikit-image scikit-learn"
        ) from err


def _to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / max(hi - lo, 1e-8) * 255.0).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.shape[-1] == 4:
        array = array[..., :3]
    return array


def digit_samples(size: int = 32) -> list[tuple[Image.Image, str]]:
    """scikit-learn's 1,797 handwritten digits (8 x 8), upsampled, white ink on black, captioned by their class."""
    datasets = _require("sklearn.datasets")
    digits = datasets.load_digits()
    out = []
    for pixels, label in zip(digits.images, digits.target):
        array = (pixels / 16.0 * 255.0).round().astype(np.uint8)
        image = Image.fromarray(array, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
        out.append((image, f"a handwritten digit {DIGIT_WORDS[int(label)]}"))
    return out


def photo_samples(crops_per_photo: int = 24, size: int = 32, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """Crops of scikit-image's and scikit-learn's photos at random scales (the first is the whole photo)."""
    skdata = _require("skimage.data")
    sources = [(getattr(skdata, name)(), subject) for name, subject in SKIMAGE_PHOTOS.items()]
    sklearn_datasets = _require("sklearn.datasets")
    sample = sklearn_datasets.load_sample_images()
    for filename, array in zip(sample.filenames, sample.images):
        sources.append((array, "a chinese temple" if "china" in filename else "a flower"))
    rng = np.random.default_rng(seed)
    out = []
    for array, subject in sources:
        image = Image.fromarray(_to_rgb_uint8(array))
        w, h = image.size
        for k in range(crops_per_photo):
            # Crop side: the whole short side for k == 0, else between a third and all of it.
            side = min(w, h) if k == 0 else int(rng.integers(min(w, h) // 3, min(w, h) + 1))
            left = (w - side) // 2 if k == 0 else int(rng.integers(0, w - side + 1))
            top = (h - side) // 2 if k == 0 else int(rng.integers(0, h - side + 1))
            crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            out.append((crop, f"a photo of {subject}"))
    return out


def lfw_faces(size: int = 32) -> list[Image.Image]:
    """The 100 face images (25 x 25, grayscale) of scikit-image's LFW subset, upsampled to ``size``."""
    skdata = _require("skimage.data")
    faces = skdata.lfw_subset()[:100]
    return [Image.fromarray(_to_rgb_uint8(face)).resize((size, size), Image.BICUBIC) for face in faces]
