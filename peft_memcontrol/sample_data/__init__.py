"""Small real data sets built offline from images that ship inside pip packages (scikit-learn's digits,
scikit-image's photos and LFW faces), written as diffusers image folders: the demo's data, the guides' examples and
the tiny pipeline's pretraining images."""

from .digits import build_digits_dataset, digit_caption
from .faces import build_faces_dataset, face_caption
from .images import digit_samples, lfw_faces, photo_samples
from .splits import ImageFolderSplits, made_up_name, write_splits


__all__ = [
    "ImageFolderSplits",
    "build_digits_dataset",
    "build_faces_dataset",
    "digit_caption",
    "digit_samples",
    "face_caption",
    "lfw_faces",
    "made_up_name",
    "photo_samples",
    "write_splits",
]
