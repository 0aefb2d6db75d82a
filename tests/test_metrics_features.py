"""The image convention, the feature spaces and their offline errors, and feature sharing in evaluate_generations."""

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from peft_memcontrol.metrics import (
    FrechetDistance,
    ReplicationRate,
    average_min_cosine_distance,
    evaluate_generations,
    extract_features,
    fixed_copy_threshold,
    frechet_distance,
    get_feature_extractor,
    prepare_images,
    replication_rate,
)


def test_conversions_of_the_image_convention():
    uint8 = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)  # 1 x 1 x 1 x 2, grayscale
    converted = prepare_images(uint8)
    assert converted.shape == (1, 3, 1, 2) and converted.dtype == torch.float32
    assert converted[0, :, 0, 1].tolist() == [1.0, 1.0, 1.0] and converted[0, :, 0, 0].tolist() == [0.0] * 3
    array = np.random.default_rng(0).random((2, 5, 6, 3), dtype=np.float32)  # NHWC, as output_type="np"
    assert torch.equal(prepare_images(array), torch.from_numpy(array).permute(0, 3, 1, 2))
    single = torch.rand(3, 4, 4)
    assert torch.equal(prepare_images(single), single[None])
    assert torch.equal(prepare_images([single, single]), torch.stack([single, single]))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(0, 3, 8, 8), "empty batch"),
        (torch.rand(2, 4, 8, 8), "1 \\(grayscale\\) or 3"),
        (torch.rand(2, 3, 8, 8) * 2 - 1, "\\(images \\+ 1\\) / 2"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.ones(1, 3, 8, 8, dtype=torch.int32), "uint8"),
        ([torch.rand(3, 8, 8), torch.rand(3, 4, 4)], "same channels and size"),
        ("not an image", "Cannot read"),
    ],
)
def test_bad_images_raise_clear_errors(images, message):
    with pytest.raises((ValueError, TypeError), match=message):
        prepare_images(images)


class MeanColour(nn.Module):
    """A transparent feature space: the mean of each channel, plus 1 so no vector is zero."""

    num_features = 3

    def forward(self, images):
        return images.mean(dim=(2, 3)) + 1.0


def test_a_user_module_and_a_callable_are_feature_spaces():
    images = torch.rand(5, 3, 8, 8)
    expected = images.mean(dim=(2, 3)) + 1.0
    torch.testing.assert_close(extract_features(images, get_feature_extractor(MeanColour()), batch_size=2), expected)
    probed = get_feature_extractor(lambda x: x.mean(dim=(2, 3)) + 1.0)
    assert probed.num_features == 3
    torch.testing.assert_close(extract_features(images, probed), expected)


def test_constant_and_grayscale_images_are_embedded_by_the_default_space():
    extractor = get_feature_extractor()
    constant = torch.full((2, 1, 32, 32), 0.5)
    features = extract_features(constant, extractor)
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    torch.testing.assert_close(features, extract_features(constant.expand(-1, 3, -1, -1), extractor))


def test_efficientnet_features_separate_a_copy_from_another_photo():
    from skimage import data

    photos = [torch.from_numpy(getattr(data, name)()).permute(2, 0, 1) for name in ("chelsea", "coffee")]
    photos = [torch.nn.functional.interpolate(p[None].float(), size=(64, 64))[0].to(torch.uint8) for p in photos]
    extractor = get_feature_extractor("efficientnet-lite0")
    cat, coffee = extract_features(photos, extractor)
    noisy_cat = extract_features((photos[0].float() / 255 + 0.02 * torch.rand(3, 64, 64)).clamp(0, 1), extractor)
    result = average_min_cosine_distance(noisy_cat, torch.stack([coffee, cat]))
    assert result.indices.item() == 1  # one-element results come back 0-d, as from any torchmetrics Metric
    assert result.amd.item() < 0.05
    assert average_min_cosine_distance(coffee[None], cat[None]).amd.item() > 5 * result.amd.item()


def test_inception_without_torch_fidelity_names_what_is_missing():
    if importlib.util.find_spec("torch_fidelity") is not None:
        pytest.skip("torch-fidelity is installed here")
    with pytest.raises(ImportError, match="torch-fidelity"):
        get_feature_extractor("inception")


def test_transformers_model_missing_from_cache_names_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError, match="huggingface-cli download openai/clip-vit-large-patch14"):
        get_feature_extractor("clip")
    with pytest.raises(ValueError, match="Unknown feature space"):
        get_feature_extractor("resnet")


def test_a_local_transformers_clip_model_is_a_feature_space(tmp_path):
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    extractor = get_feature_extractor(str(tmp_path))
    images = torch.rand(3, 3, 32, 32)
    features = extract_features(images, extractor)
    assert features.shape == (3, extractor.num_features)
    # The same image gives the same features, different images different ones.
    again = extract_features(images[[2, 0]], extractor)
    torch.testing.assert_close(again, features[[2, 0]], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(features[0], features[1])


def test_evaluate_generations_embeds_each_image_once_and_agrees_with_the_metrics():
    calls = []

    class CountingMeanColour(MeanColour):
        def forward(self, images):
            calls.append(images.shape[0])
            return super().forward(images)

    generator = torch.Generator().manual_seed(0)
    generated, training, real = (torch.rand(n, 3, 8, 8, generator=generator) for n in (6, 7, 5))
    scores = evaluate_generations(
        generated,
        training,
        real,
        feature=CountingMeanColour(),
        calibration=fixed_copy_threshold(0.9, "a test constant"),
    )
    assert sum(calls) == 6 + 7 + 5
    features = {name: MeanColour()(x) for name, x in (("g", generated), ("t", training), ("r", real))}
    torch.testing.assert_close(scores.fid, frechet_distance(features["r"], features["g"]))
    torch.testing.assert_close(scores.amd.amd, average_min_cosine_distance(features["g"], features["t"]).amd)
    torch.testing.assert_close(scores.replication.rate, replication_rate(features["g"], features["t"], 0.9).rate)
    fid = FrechetDistance(feature=MeanColour())
    fid.update(real, real=True)
    fid.update(generated, real=False)
    torch.testing.assert_close(fid.compute(), scores.fid)
    metric = ReplicationRate(feature=MeanColour(), threshold=0.9)
    metric.update(generated, real=False)
    metric.update(training, real=True)
    torch.testing.assert_close(metric.compute().rate, scores.replication.rate)
    calls.clear()  # a training and a real set embedded once serve further models as features
    precomputed = evaluate_generations(
        generated,
        features["t"],
        features["r"],
        feature=CountingMeanColour(),
        calibration=fixed_copy_threshold(0.9, "a test constant"),
    )
    assert sum(calls) == 6
    for name in ("fid", "mifid"):
        torch.testing.assert_close(getattr(precomputed, name), getattr(scores, name))
    torch.testing.assert_close(precomputed.amd.amd, scores.amd.amd)
    assert torch.equal(precomputed.amd.indices, scores.amd.indices)
