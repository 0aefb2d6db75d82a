"""Synthetic images and image folders, so that tests need no image package or download."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def synthetic_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    """``n`` deterministic RGB images (smooth random blobs)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        low = rng.random((4, 4, 3))
        array = np.kron(low, np.ones((size // 4, size // 4, 1)))
        images.append(Image.fromarray((array * 255).round().astype(np.uint8)))
    return images


def write_image_folder(root: str, n: int = 12, size: int = 32, caption_key: str = "text") -> str:
    """An image folder with ``metadata.jsonl`` (diffusers convention), captions ``"a photo of thing <i>"``."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        for i, image in enumerate(synthetic_images(n, size)):
            image.save(os.path.join(root, f"{i:03d}.png"))
            f.write(json.dumps({"file_name": f"{i:03d}.png", caption_key: f"a photo of thing {i}"}) + "\n")
    return root


def read_metadata(folder: str | os.PathLike) -> list[dict]:
    """The rows of an image folder's ``metadata.jsonl``, blank lines skipped."""
    with open(os.path.join(folder, "metadata.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
