"""Robustness of the metrics on inputs that used to give silent wrong results or never finish (issue 14, item 9)."""

import itertools
import math
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peft_memcontrol.metrics import AverageMinCosineDistance, average_min_cosine_distance, largest_group
from peft_memcontrol.metrics.extraction import ExtractionAttackConfig
from peft_memcontrol.metrics.features import as_features, get_feature_extractor
from peft_memcontrol.metrics.images import prepare_images
from peft_memcontrol.metrics.neighbours import nearest_neighbours


def digit_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Real non-negative 64-d vectors: 40 scikit-learn digits as queries, the next 160 as references."""
    from sklearn.datasets import load_digits

    digits = torch.from_numpy(load_digits().data).float()
    return digits[:40], digits[40:200]


def brute_force_best_cosine(queries: torch.Tensor, references: torch.Tensor) -> list[float]:
    """Each query's highest cosine similarity, one pair at a time in Python float64 arithmetic."""
    best = []
    for query in queries.double().tolist():
        query_norm = math.sqrt(sum(value * value for value in query))
        similarities = []
        for reference in references.double().tolist():
            reference_norm = math.sqrt(sum(value * value for value in reference))
            similarities.append(sum(a * b for a, b in zip(query, reference)) / (query_norm * reference_norm))
        best.append(max(similarities))
    return best


@pytest.mark.parametrize("scale", [1.0, 1e20, 1e-25])
def test_cosine_similarity_ignores_the_scale_of_features(scale):
    # Float32 norms overflow at 1e20 (every similarity became 0) and underflow at 1e-25 (rows refused as all-zero).
    queries, references = digit_features()
    expected = torch.tensor(brute_force_best_cosine(queries, references), dtype=torch.float64)
    result = nearest_neighbours(queries * scale, references * scale, query_chunk_size=7, reference_chunk_size=13)
    assert result.similarities.dtype == torch.float32
    assert torch.allclose(result.similarities.double(), expected, atol=1e-6)
    chosen = F.cosine_similarity(queries.double(), references.double()[result.indices], dim=1)
    assert torch.allclose(chosen, expected, atol=1e-6)


def test_amd_of_exact_copies_of_huge_features_is_zero():
    _, references = digit_features()
    huge = references * 1e20
    assert average_min_cosine_distance(huge, huge).amd.item() == pytest.approx(0.0, abs=1e-6)


def test_float64_features_beyond_the_float32_range_are_refused():
    queries, references = digit_features()
    with pytest.raises(ValueError, match="float32 range"):
        nearest_neighbours(queries.double() * 1e40, references.double())


def camera_64() -> torch.Tensor:
    """scikit-image's camera man, a real 512 x 512 grayscale photo, as a 64 x 64 float image in [0, 1]."""
    from skimage import data

    photo = torch.from_numpy(data.camera()).float().div(255.0)[None, None]
    return F.interpolate(photo, size=(64, 64), mode="area")[0, 0]


def pooled_features():
    """A real feature space of width 48: 4 x 4 average pooling of the three channels."""
    return get_feature_extractor(nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()))


def test_a_single_grayscale_image_is_not_read_as_features():
    image = camera_64()
    extractor = pooled_features()
    assert extractor.num_features == 48
    with pytest.raises(
        ValueError, match=r"single 2-D image .*64x64 grayscale image read as 64 features.*\[None, None\]"
    ):
        as_features(image, extractor)
    amd = AverageMinCosineDistance(feature=extractor)
    with pytest.raises(ValueError, match="single 2-D image"):
        amd.update(image, real=False)
    mirrored = torch.flip(image, dims=[1])
    amd.update(image[None, None], real=False)  # the fix the message names
    amd.update(mirrored[None, None], real=True)
    pooled = [F.adaptive_avg_pool2d(picture.expand(3, 64, 64), 4).flatten() for picture in (image, mirrored)]
    expected = 1.0 - F.cosine_similarity(pooled[0], pooled[1], dim=0)
    assert amd.compute().amd.item() == pytest.approx(expected.item(), abs=1e-6)


def test_two_dimensional_features_of_the_right_width_pass_unchanged():
    features = torch.rand(5, 48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(as_features(features, pooled_features()), features)
    assert torch.equal(as_features(camera_64(), None), camera_64())  # feature=None: the metric checks widths


@pytest.mark.parametrize(
    ("low", "high", "hint"),
    [(0.0, 255.0, r"\[0, 255\].*divide by 255"), (-1.0, 1.0, r"\[-1, 1\].*\(images \+ 1\) / 2"), (-3.0, 7.0, None)],
)
def test_out_of_range_float_images_get_the_hint_that_fits(low, high, hint):
    from skimage import data

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float().div(255.0)  # real RGB photo in [0, 1]
    images = photo * (high - low) + low
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]") as error:
        prepare_images(images)
    if hint is None:
        assert "look like" not in str(error.value)
    else:
        assert error.match(hint)
    if low == 0.0:
        assert torch.allclose(prepare_images(images / 255.0), photo, atol=1e-6)


def random_link_matrix(size: int, density: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    upper = torch.triu(torch.rand(size, size, generator=generator) < density, diagonal=1)
    return upper | upper.T | torch.eye(size, dtype=torch.bool)


def threshold_link_matrix(size: int, density: float, dimensions: int, seed: int) -> torch.Tensor:
    """Points linked when closer than the ``density`` quantile of their distances: the structure of real links."""
    points = torch.rand(size, dimensions, generator=torch.Generator().manual_seed(seed))
    distances = torch.cdist(points, points)
    pairs = distances[torch.triu(torch.ones(size, size, dtype=torch.bool), diagonal=1)]
    return distances <= torch.quantile(pairs, density)


def is_clique(linked: torch.Tensor, nodes: list[int]) -> bool:
    return all(linked[a, b] for a, b in itertools.combinations(nodes, 2))


def brute_force_clique_size(linked: torch.Tensor) -> int:
    """The largest subset whose pairs are all linked, trying every subset from the largest size down."""
    nodes = range(linked.shape[0])
    for size in range(linked.shape[0], 0, -1):
        if any(is_clique(linked, list(subset)) for subset in itertools.combinations(nodes, size)):
            return size
    return 0


@pytest.mark.parametrize("density", [0.2, 0.5, 0.8])
def test_maximum_clique_equals_brute_force_on_small_graphs(density):
    for seed in range(11):
        size = 2 + seed
        for linked in (random_link_matrix(size, density, seed), threshold_link_matrix(size, density, 2, seed)):
            group = largest_group(linked, "clique")
            assert group == sorted(group)
            assert is_clique(linked, group)
            assert len(group) == brute_force_clique_size(linked), (size, density, seed)


def test_maximum_clique_of_500_generations_at_link_density_0_3_is_exact_and_fast():
    # The Bron-Kerbosch search this replaced took 41 s on this graph and found a clique of 26.
    linked = threshold_link_matrix(500, 0.3, 32, seed=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact: no lower-bound warning
        group = largest_group(linked, "clique")
    assert time.perf_counter() - start < 10.0
    assert len(group) == 26
    assert is_clique(linked, group)


def test_a_spent_clique_budget_warns_and_keeps_a_true_clique():
    linked = random_link_matrix(200, 0.5, seed=1)
    with pytest.warns(UserWarning, match="lower bound"):
        group = largest_group(linked, "clique", clique_search_budget=1_000)
    assert len(group) >= 2
    assert is_clique(linked, group)
    assert len(largest_group(linked, "clique")) >= len(group)
    with pytest.raises(ValueError, match="clique_search_budget"):
        ExtractionAttackConfig(clique_search_budget=0)


def test_a_group_larger_than_the_recursion_limit_is_found():
    linked = torch.ones(1500, 1500, dtype=torch.bool)
    assert largest_group(linked, "clique") == list(range(1500))
