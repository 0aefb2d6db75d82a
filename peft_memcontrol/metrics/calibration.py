"""Copy thresholds calibrated on the user's own data, with their false-positive and detection rates.

A copy threshold means something only in the feature space and on the data it was set for. Somepalli et al.'s 0.5
(replication) was set for the SSCD copy-detection embedding, Bai et al.'s 0.1 (MiFID) for Inception pool features;
in the default EfficientNet-Lite0 space (non-negative features) 0.5 flags every unseen face. So the library sets the
threshold from the data at hand:

* **null**: the best cosine similarity of each held-out real image (never trained on, not a copy) to the training
  images. The threshold is the similarity that held-out images exceed at the chosen false-positive rate.
* **power**: near copies of the training images (`near_copies`: Gaussian noise sigma 0.02, Gaussian blur sigma 1,
  JPEG quality 30, a shift by 3% of the side, a 90% central crop resized back) and the share of them above the
  threshold: its detection rate, overall and per transform.

The threshold is a conformal quantile: with n held-out images, the k-th largest null similarity (k = floor(rate *
(n + 1))) is exceeded by a new held-out image with probability k / (n + 1) (exchangeability; no distributional
assumption). That probability is the false-positive rate reported. With fewer than 1 / rate - 1 held-out images the
target cannot be reached; the largest similarity is used and the reachable rate 1 / (n + 1) is reported instead.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .extraction import tiled_l2_distance
from .images import ImageInput, prepare_images
from .neighbours import nearest_neighbours


#: Somepalli et al. (2023): replication threshold on cosine similarity, for the SSCD copy-detection embedding only.
SSCD_REPLICATION_THRESHOLD = 0.5
#: Bai et al. (2021): MiFID's tau on the AMD (cosine distance), for Inception-v3 pool features only.
INCEPTION_MIFID_THRESHOLD = 0.1

NEAR_COPY_TRANSFORMS = ("noise", "blur", "jpeg", "shift", "crop")
NEAR_COPY_DESCRIPTION = "Gaussian noise sigma 0.02, blur sigma 1, JPEG q30, 3% shift, 90% crop"


def _blur(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images)
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _jpeg(images: torch.Tensor, quality: int = 30) -> torch.Tensor:
    pixels = images.mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float().div(255).to(images.device)


def _shift(images: torch.Tensor, fraction: float = 0.03) -> torch.Tensor:
    height, width = images.shape[-2:]
    dy, dx = max(1, round(fraction * height)), max(1, round(fraction * width))
    padded = F.pad(images, (dx, 0, dy, 0), mode="replicate")
    return padded[..., :height, :width]


def _crop(images: torch.Tensor, fraction: float = 0.9) -> torch.Tensor:
    height, width = images.shape[-2:]
    crop_h, crop_w = max(1, round(fraction * height)), max(1, round(fraction * width))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = images[..., top : top + crop_h, left : left + crop_w]
    return F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def near_copies(images: ImageInput, seed: int = 0) -> dict[str, torch.Tensor]:
    """Near copies of ``images`` by each transform of `NEAR_COPY_TRANSFORMS` (see the module docstring), in [0, 1].

    Deterministic for a given ``seed`` (the noise is drawn on the CPU from its own generator).
    """
    images = prepare_images(images)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images.device)
    return {
        "noise": (images + 0.02 * noise).clamp(0, 1),
        "blur": _blur(images).clamp(0, 1),
        "jpeg": _jpeg(images),
        "shift": _shift(images),
        "crop": _crop(images).clamp(0, 1),
    }


@dataclass
class CopyCalibration:
    """A copy threshold on cosine similarity and what it is worth on the data it was calibrated on.

    Attributes:
        threshold: a query whose best cosine similarity to a training image is strictly above it is a copy.
        target_false_positive_rate: the rate asked for.
        false_positive_rate: the expected rate at which unseen, uncopied images are called copies: k / (n + 1).
        detection_rate: share of near copies of training images above the threshold.
        detection_by_transform: the same per transform.
        num_held_out: held-out images of the null distribution.
        num_near_copies: near copies scored.
        source: where the threshold comes from (``"calibrated"``, or the name of a paper's constant).
        null_similarities: the held-out images' best similarities to the training set (for plots and checks).
    """

    threshold: float
    target_false_positive_rate: float
    false_positive_rate: float
    detection_rate: float
    detection_by_transform: dict[str, float]
    num_held_out: int
    num_near_copies: int
    source: str = "calibrated"
    null_similarities: torch.Tensor | None = field(default=None, repr=False)

    @property
    def distance_threshold(self) -> float:
        """The same threshold as a cosine distance (1 - similarity): MiFID's tau in this feature space."""
        return 1.0 - self.threshold

    @property
    def reaches_target(self) -> bool:
        """Whether enough held-out images were given to reach the target false-positive rate."""
        return self.false_positive_rate <= self.target_false_positive_rate + 1e-12

    def describe(self) -> str:
        """One sentence with the threshold and its error rates, for every report."""
        if self.source != "calibrated":
            return (
                f"copy threshold: cosine similarity > {self.threshold:.4f} ({self.source}; valid only in the feature "
                "space it was set for, error rates not measured on this data)."
            )
        text = (
            f"copy threshold: cosine similarity > {self.threshold:.4f} ({self.source} on {self.num_held_out} held-out "
            f"images: false-positive rate {self.false_positive_rate:.1%}, detection of {self.num_near_copies} near "
            f"copies ({NEAR_COPY_DESCRIPTION}) {self.detection_rate:.0%})"
        )
        if not self.reaches_target:
            text += (
                f"; {self.num_held_out} held-out images cannot reach the target rate "
                f"{self.target_false_positive_rate:.1%} (needs {minimum_held_out(self.target_false_positive_rate)})"
            )
        if self.detection_rate < 0.5:
            text += (
                "; this feature space misses most near copies at this image size: a low replication is weak evidence"
            )
        return text + "."

    def to_dict(self) -> dict[str, object]:
        """The scalar fields, JSON-ready."""
        return {
            "threshold": self.threshold,
            "source": self.source,
            "target_false_positive_rate": self.target_false_positive_rate,
            "false_positive_rate": self.false_positive_rate,
            "detection_rate": self.detection_rate,
            "detection_by_transform": dict(self.detection_by_transform),
            "num_held_out": self.num_held_out,
            "num_near_copies": self.num_near_copies,
        }


def minimum_held_out(false_positive_rate: float) -> int:
    """Held-out images needed for a conformal threshold at ``false_positive_rate``: n with floor(rate (n+1)) >= 1."""
    return math.ceil(1.0 / false_positive_rate) - 1


def conformal_threshold(null_similarities: torch.Tensor, false_positive_rate: float) -> tuple[float, float]:
    """The threshold and its expected false-positive rate k / (n + 1), k = max(1, floor(rate (n + 1)))."""
    if not 0.0 < false_positive_rate < 1.0:
        raise ValueError(f"false_positive_rate must be in (0, 1), got {false_positive_rate}.")
    count = null_similarities.numel()
    if count < 1:
        raise ValueError("Calibration needs at least one held-out image.")
    rank = max(1, math.floor(false_positive_rate * (count + 1)))
    ordered = null_similarities.double().sort(descending=True).values
    return float(ordered[rank - 1]), rank / (count + 1)


def calibrate_copy_threshold(
    training_features: torch.Tensor,
    held_out_features: torch.Tensor,
    near_copy_features: dict[str, torch.Tensor],
    false_positive_rate: float = 0.01,
) -> CopyCalibration:
    """Calibrates a copy threshold from features (see the module docstring).

    Args:
        training_features: (N, d) features of the training images (the reference set).
        held_out_features: (M, d) features of real images that were not trained on: the null distribution.
        near_copy_features: per transform, (K, d) features of near copies of training images.
        false_positive_rate: the target rate at which held-out images may be called copies.
    """
    null = nearest_neighbours(held_out_features, training_features).similarities
    threshold, expected_rate = conformal_threshold(null, false_positive_rate)
    detected = {
        name: nearest_neighbours(features, training_features).similarities > threshold
        for name, features in near_copy_features.items()
    }
    total = sum(int(flags.numel()) for flags in detected.values())
    if total == 0:
        raise ValueError("Calibration needs near copies to measure the detection rate.")
    return CopyCalibration(
        threshold=threshold,
        target_false_positive_rate=false_positive_rate,
        false_positive_rate=expected_rate,
        detection_rate=sum(int(flags.sum()) for flags in detected.values()) / total,
        detection_by_transform={name: float(flags.float().mean()) for name, flags in detected.items()},
        num_held_out=int(null.numel()),
        num_near_copies=total,
        null_similarities=null.cpu(),
    )


def calibrate_copy_detection(
    training_images: ImageInput,
    held_out_images: ImageInput,
    embed: Callable[[torch.Tensor], torch.Tensor],
    false_positive_rate: float = 0.01,
    max_near_copies: int | None = 64,
    seed: int = 0,
) -> CopyCalibration:
    """`calibrate_copy_threshold` from images: embeds the training and held-out images and near copies of (up to
    ``max_near_copies``, a seeded sample of) the training images with ``embed`` (images -> (N, d) features, e.g.
    ``lambda x: extract_features(x, get_feature_extractor())`` or a `FeatureBank`'s ``fixed``)."""
    training = prepare_images(training_images)
    sources = training
    if max_near_copies is not None and training.shape[0] > max_near_copies:
        chosen = torch.randperm(training.shape[0], generator=torch.Generator().manual_seed(seed))[:max_near_copies]
        sources = training[chosen.sort().values]
    copies = {name: embed(images) for name, images in near_copies(sources, seed).items()}
    return calibrate_copy_threshold(
        embed(training), embed(prepare_images(held_out_images)), copies, false_positive_rate
    )


def fixed_copy_threshold(threshold: float, source: str) -> CopyCalibration:
    """A fixed threshold, unmeasured on this data, named by its ``source``: for parity runs with a paper's constant
    in the feature space it was set for (``fixed_copy_threshold(SSCD_REPLICATION_THRESHOLD, "Somepalli et al.,
    SSCD")``), or a threshold calibrated elsewhere on the same feature space and data."""
    return CopyCalibration(
        threshold=threshold,
        target_false_positive_rate=float("nan"),
        false_positive_rate=float("nan"),
        detection_rate=float("nan"),
        detection_by_transform={},
        num_held_out=0,
        num_near_copies=0,
        source=source,
    )


@dataclass
class AttackCalibration:
    """What the extraction attack's tiled-L2 threshold can see on this data.

    A model that regenerates a training image perfectly still passes it through its autoencoder, so the closest a
    generation can come to a training image is the image's reconstruction. The threshold must lie above the
    reconstruction distances (else no copy can be flagged: the attack is blind) and below the distances between
    distinct images (else uncopied images count as copies).

    Attributes:
        threshold: the attack's threshold (tiled L2, RMS per tile, [0, 1] pixels).
        detection_rate: share of the attacked images whose reconstruction lies within the threshold of the image.
        false_positive_rate: share of held-out images within the threshold of some attacked image.
        reconstruction_median, reconstruction_max: the reconstructions' distances to their images.
        distinct_quantile_01, distinct_median: 1% quantile and median of each held-out image's distance to its
            nearest attacked image.
        suggested_threshold: midway between the reconstructions' maximum and the distinct images' 1% quantile when
            they do not overlap; ``None`` when they do (no threshold separates copies from distinct images).
    """

    threshold: float
    detection_rate: float
    false_positive_rate: float
    reconstruction_median: float
    reconstruction_max: float
    distinct_quantile_01: float
    distinct_median: float
    suggested_threshold: float | None

    @property
    def blind(self) -> bool:
        """True when the attack cannot flag most perfect copies, or calls more than 5% of distinct images copies."""
        return self.detection_rate < 0.5 or self.false_positive_rate > 0.05

    def describe(self) -> str:
        """One sentence for every report: the threshold, its error rates, and a warning when the attack is blind."""
        text = (
            f"extraction threshold {self.threshold:.3g} (tiled L2): the autoencoder's own reconstructions of the "
            f"attacked images lie within it for {self.detection_rate:.0%} (median {self.reconstruction_median:.3f}, "
            f"max {self.reconstruction_max:.3f}); held-out images within it of an attacked image: "
            f"{self.false_positive_rate:.0%} (1% quantile of their distances {self.distinct_quantile_01:.3f})"
        )
        if self.blind:
            remedy = (
                f"try --extraction_threshold {self.suggested_threshold:.3g}"
                if self.suggested_threshold is not None
                else "no threshold separates reconstructions from distinct images on this data"
            )
            text += f". WARNING: the attack cannot tell a copy from a distinct image here ({remedy})"
        return text + "."

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields, with ``blind``."""
        return {**{name: getattr(self, name) for name in self.__dataclass_fields__}, "blind": self.blind}


def calibrate_extraction_threshold(
    attacked_images: ImageInput,
    reconstructions: ImageInput,
    held_out_images: ImageInput,
    threshold: float,
    grid_size: int = 4,
) -> AttackCalibration:
    """Measures what ``threshold`` can see (see `AttackCalibration`).

    Args:
        attacked_images: the training images the attack looks for.
        reconstructions: the same images passed through the model's autoencoder, in the same order and size.
        held_out_images: real images that were not trained on; resized to the attacked images' size if needed.
        threshold: the attack's tiled-L2 threshold.
        grid_size: the attack's grid.
    """
    attacked, rebuilt = prepare_images(attacked_images), prepare_images(reconstructions)
    if attacked.shape != rebuilt.shape:
        raise ValueError(f"Reconstructions {tuple(rebuilt.shape)} must match the images {tuple(attacked.shape)}.")
    held_out = prepare_images(held_out_images)
    if held_out.shape[-2:] != attacked.shape[-2:]:
        held_out = F.interpolate(
            held_out, size=tuple(attacked.shape[-2:]), mode="bilinear", align_corners=False, antialias=True
        )
    own = torch.stack([tiled_l2_distance(a[None], b[None], grid_size)[0, 0] for a, b in zip(attacked, rebuilt)])
    distinct = tiled_l2_distance(held_out, attacked, grid_size).min(dim=1).values
    reconstruction_max, distinct_low = float(own.max()), float(distinct.quantile(0.01))
    return AttackCalibration(
        threshold=threshold,
        detection_rate=float((own < threshold).float().mean()),
        false_positive_rate=float((distinct < threshold).float().mean()),
        reconstruction_median=float(own.median()),
        reconstruction_max=reconstruction_max,
        distinct_quantile_01=distinct_low,
        distinct_median=float(distinct.median()),
        suggested_threshold=(reconstruction_max + distinct_low) / 2 if reconstruction_max < distinct_low else None,
    )
