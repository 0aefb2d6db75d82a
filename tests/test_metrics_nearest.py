"""AMD, replication, FID and MiFID against independent computations (brute-force loops, closed forms)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from peft_memcontrol.metrics import (
    AverageMinCosineDistance,
    FrechetDistance,
    MemorizationInformedFID,
    ReplicationRate,
    average_min_cosine_distance,
    frechet_distance,
    mifid,
    nearest_neighbours,
    replication_rate,
)


def brute_force_nearest(queries, references):
    """Best cosine similarity and its index for each query, by a plain Python loop."""
    best = []
    for query in queries.tolist():
        scores = []
        for reference in references.tolist():
            dot = sum(a * b for a, b in zip(query, reference))
            scores.append(dot / (math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in reference))))
        index = max(range(len(scores)), key=scores.__getitem__)
        best.append((scores[index], index))
    return best


@pytest.fixture
def features():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(37, 12, generator=generator), torch.randn(53, 12, generator=generator)


@pytest.mark.parametrize("direction", ["generated_to_training", "training_to_generated"])
def test_amd_equals_brute_force_in_both_directions(features, direction):
    generated, training = features
    queries, references = (generated, training) if direction == "generated_to_training" else (training, generated)
    expected = brute_force_nearest(queries, references)
    result = average_min_cosine_distance(
        generated, training, direction=direction, query_chunk_size=5, reference_chunk_size=7
    )
    assert result.distances.tolist() == pytest.approx([1 - similarity for similarity, _ in expected], abs=1e-5)
    assert result.indices.tolist() == [index for _, index in expected]
    assert result.amd.item() == pytest.approx(np.mean([1 - similarity for similarity, _ in expected]), abs=1e-5)


def test_chunk_sizes_do_not_change_the_result(features):
    generated, training = features
    full = nearest_neighbours(generated, training, query_chunk_size=10_000, reference_chunk_size=10_000)
    for query_chunk, reference_chunk in [(1, 1), (4, 53), (36, 52)]:
        chunked = nearest_neighbours(generated, training, query_chunk, reference_chunk)
        torch.testing.assert_close(chunked.similarities, full.similarities)
        assert torch.equal(chunked.indices, full.indices)


def test_exact_copies_have_zero_amd_and_point_to_their_source(features):
    _, training = features
    result = average_min_cosine_distance(training[[4, 9, 4]], training)
    assert result.indices.tolist() == [4, 9, 4]
    assert result.amd.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("threshold", [0.2, 0.5])
def test_replication_rate_equals_brute_force(features, threshold):
    generated, training = features
    similarities = [similarity for similarity, _ in brute_force_nearest(generated, training)]
    result = replication_rate(generated, training, threshold=threshold)
    assert result.rate.item() == pytest.approx(sum(s > threshold for s in similarities) / len(similarities))
    assert result.percentile_95.item() == pytest.approx(np.percentile(similarities, 95), abs=1e-5)


def test_metric_accumulates_over_updates_like_one_call(features):
    generated, training = features
    metric = ReplicationRate(feature=None, threshold=0.3)
    for part in generated.split(10):
        metric.update(part, real=False)
    for part in training.split(20):
        metric.update(part, real=True)
    expected = replication_rate(generated, training, threshold=0.3)
    torch.testing.assert_close(metric.compute().similarities, expected.similarities)


def test_reset_can_keep_training_features(features):
    generated, training = features
    metric = AverageMinCosineDistance(feature=None, reset_training_features=False)
    metric.update(training, real=True)
    metric.update(generated[:5], real=False)
    metric.compute()
    metric.reset()
    metric.update(generated[5:], real=False)
    expected = average_min_cosine_distance(generated[5:], training)
    torch.testing.assert_close(metric.compute().amd, expected.amd)


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_adds_its_squared_norm(features):
    _, training = features
    assert frechet_distance(training, training).item() == 0.0
    shift = torch.linspace(-1, 1, training.shape[1])
    # Same covariance, means apart by `shift`: FID = ||shift||^2 exactly.
    assert frechet_distance(training, training + shift).item() == pytest.approx(shift.square().sum().item(), rel=1e-4)
    assert frechet_distance(training, training + 2 * shift) > frechet_distance(training, training + shift)


def test_fid_matches_the_closed_form_with_scipy(features):
    generated, training = features
    a, b = training.double().numpy(), generated.double().numpy()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    assert frechet_distance(training, generated).item() == pytest.approx(expected, rel=1e-3)


def test_mifid_divides_by_amd_only_below_the_threshold(features):
    assert mifid(10.0, 0.05, 0.1).item() == pytest.approx(200.0)
    assert mifid(10.0, 0.5, 0.1).item() == pytest.approx(10.0)
    generated, training = features
    metric = MemorizationInformedFID(feature=None, num_features=training.shape[1], threshold=1.0)
    metric.update(generated, real=False)
    metric.update(training, real=True)
    fid = frechet_distance(training, generated)
    amd = average_min_cosine_distance(generated, training).amd
    assert metric.compute().item() == pytest.approx((fid / amd).item(), rel=1e-5)


def test_bad_feature_inputs_raise_clear_errors(features):
    generated, training = features
    with pytest.raises(ValueError, match="widths differ"):
        nearest_neighbours(generated, training[:, :5])
    with pytest.raises(ValueError, match="do not match earlier updates"):
        average_min_cosine_distance(generated, training[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        average_min_cosine_distance(torch.full((2, 12), float("nan")), training)
    with pytest.raises(ValueError, match="all-zero"):
        average_min_cosine_distance(torch.zeros(2, 12), training)
    with pytest.raises(ValueError, match="empty"):
        average_min_cosine_distance(generated[:0], training)
    with pytest.raises(ValueError, match="direction must be one of"):
        AverageMinCosineDistance(feature=None, direction="generated_to_train")
    metric = AverageMinCosineDistance(feature=None)
    with pytest.raises(RuntimeError, match="at least one generated"):
        metric.compute()
    metric.update(generated, real=False)
    with pytest.raises(ValueError, match="do not match earlier updates"):
        metric.update(training[:, :3], real=True)
    fid = FrechetDistance(feature=None, num_features=12)
    with pytest.raises(ValueError, match="width 12"):
        fid.update(training[:, :3], real=True)
    with pytest.raises(RuntimeError, match="More than one sample"):
        frechet_distance(training[:1], generated)
