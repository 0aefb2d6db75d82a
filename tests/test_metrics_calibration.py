"""Copy thresholds calibrated on real images, the extraction attack's blind-spot check, and duplicate groups.

Each is checked against an independent computation: the conformal rate by simulation, the blur against scipy, the
tiled distances by a loop over tiles, duplicate groups against planted copies and a brute-force component search.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.ndimage
import torch

from peft_memcontrol.metrics import (
    SSCD_REPLICATION_THRESHOLD,
    MemorizationInformedFID,
    ReplicationRate,
    calibrate_copy_detection,
    calibrate_extraction_threshold,
    evaluate_generations,
    extract_features,
    find_duplicate_groups,
    fixed_copy_threshold,
    get_feature_extractor,
    mifid,
    near_copies,
    nearest_neighbours,
    prepare_images,
    replication_rate,
)
from peft_memcontrol.metrics.calibration import conformal_threshold, minimum_held_out
from peft_memcontrol.sample_data import lfw_faces


@pytest.fixture(scope="module")
def faces():
    return prepare_images(lfw_faces())


@pytest.fixture(scope="module")
def face_features(faces):
    extractor = get_feature_extractor()
    return extract_features(faces, extractor), extractor


def test_conformal_threshold_keeps_its_rate_on_new_null_draws():
    generator = torch.Generator().manual_seed(0)
    for count, rate in ((40, 0.05), (199, 0.01), (10, 0.01)):
        rank = max(1, int(rate * (count + 1)))
        exceed, trials = 0, 4000
        for _ in range(trials):
            null = torch.randn(count + 1, generator=generator)
            threshold, expected = conformal_threshold(null[:count], rate)
            assert int((null[:count] > threshold).sum()) == rank - 1  # brute-force count on the calibration set
            exceed += bool(null[count] > threshold)
        assert expected == pytest.approx(rank / (count + 1))
        assert exceed / trials == pytest.approx(expected, abs=4 * (expected / trials) ** 0.5)
    assert minimum_held_out(0.01) == 99 and minimum_held_out(0.05) == 19


def test_near_copies_blur_matches_scipy_and_the_rest_stay_close(faces):
    images = faces[:4]
    copies = near_copies(images, seed=3)
    expected = scipy.ndimage.gaussian_filter(images.double().numpy(), sigma=(0, 0, 1, 1), mode="mirror", truncate=3.0)
    torch.testing.assert_close(copies["blur"], torch.from_numpy(expected).float(), atol=1e-5, rtol=0)
    for name, copy in copies.items():
        difference = (copy - images).abs()
        assert copy.shape == images.shape and 0 < difference.mean() < 0.1, name
    again = near_copies(images, seed=3)
    assert all(torch.equal(again[name], copies[name]) for name in copies)
    assert torch.equal(copies["shift"][..., 1:, 1:], images[..., :-1, :-1])  # 3% of 32 px rounds to 1 px


@pytest.mark.slow
def test_calibrated_threshold_holds_on_unseen_faces_where_the_papers_constant_flags_all(faces, face_features):
    features, extractor = face_features
    training, calibration_set, unseen = slice(0, 20), slice(20, 60), slice(60, 100)
    calibration = calibrate_copy_detection(
        faces[training],
        faces[calibration_set],
        lambda images: extract_features(images, extractor),
        false_positive_rate=0.05,
    )
    assert calibration.false_positive_rate == pytest.approx(2 / 41) and calibration.reaches_target
    unseen_rate = replication_rate(features[unseen], features[training], calibration.threshold).rate.item()
    # 40 unseen faces at an expected rate of 4.9%: more than 7 flagged has probability < 0.5%
    assert unseen_rate <= 7 / 40
    assert replication_rate(features[unseen], features[training], SSCD_REPLICATION_THRESHOLD).rate.item() == 1.0
    # planted near copies of training faces: the shifted and cropped ones are found
    assert calibration.detection_by_transform["shift"] >= 0.8 and calibration.detection_by_transform["crop"] >= 0.8
    detected = nearest_neighbours(
        extract_features(near_copies(faces[training])["shift"], extractor), features[training]
    )
    assert (detected.indices == torch.arange(20)).all()
    assert "false-positive rate 4.9%" in calibration.describe() and "misses most near copies" in calibration.describe()


def tiled_rms_loop(a: np.ndarray, b: np.ndarray, grid: int) -> float:
    """Tiled RMS distance of two CHW images by explicit loops over the tiles."""
    rows = np.array_split(np.arange(a.shape[1]), grid)
    columns = np.array_split(np.arange(a.shape[2]), grid)
    worst = 0.0
    for r, c in itertools.product(rows, columns):
        tile = (slice(None), slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1))
        worst = max(worst, float(np.sqrt(((a[tile] - b[tile]) ** 2).mean())))
    return worst


def test_extraction_calibration_measures_reconstructions_and_distinct_images(faces):
    attacked, held_out = faces[:6], faces[50:70]
    rebuilt = (attacked + 0.03 * torch.randn(attacked.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    own = [tiled_rms_loop(a.numpy(), b.numpy(), 4) for a, b in zip(attacked, rebuilt)]
    distinct = [min(tiled_rms_loop(h.numpy(), a.numpy(), 4) for a in attacked) for h in held_out]
    result = calibrate_extraction_threshold(attacked, rebuilt, held_out, threshold=0.15)
    assert result.reconstruction_max == pytest.approx(max(own), abs=1e-5)
    assert result.reconstruction_median == pytest.approx(float(torch.tensor(own).median()), abs=1e-5)
    assert result.distinct_median == pytest.approx(float(torch.tensor(distinct).median()), abs=1e-5)
    assert result.detection_rate == 1.0 and result.false_positive_rate == 0.0 and not result.blind
    assert max(own) < result.suggested_threshold < float(torch.tensor(distinct).quantile(0.01))
    blind = calibrate_extraction_threshold(attacked, rebuilt, held_out, threshold=min(own) / 2)
    assert blind.blind and blind.detection_rate == 0.0 and "WARNING" in blind.describe()
    assert f"{result.suggested_threshold:.3g}" in blind.describe()


def test_duplicate_groups_are_the_planted_copies(faces, face_features):
    features, _ = face_features
    order = [0, 1, 2, 0, 3, 0, 2, 4, 5]  # face 0 three times, face 2 twice
    images, rows = faces[order], features[order]
    exact = find_duplicate_groups(images)
    assert [(group.indices, group.exact) for group in exact] == [([0, 3, 5], True), ([2, 6], True)]
    shifted = torch.cat([images, near_copies(faces[4:5])["shift"]])  # a near copy of face 4 (row 7)
    near_features = torch.cat([rows, extract_features(shifted[-1:], get_feature_extractor())])
    threshold = 0.92  # distinct faces here reach 0.896, the shifted copy 0.942
    groups = find_duplicate_groups(shifted, near_features, threshold)
    # brute force: connected components of (equal pixels or similarity > threshold)
    unit = torch.nn.functional.normalize(near_features.double(), dim=1)
    linked = (unit @ unit.T > threshold) | (shifted.flatten(1)[:, None] == shifted.flatten(1)[None]).all(-1)
    components, seen = [], set()
    for start in range(len(shifted)):
        if start in seen:
            continue
        component, frontier = {start}, [start]
        while frontier:
            node = frontier.pop()
            for other in torch.nonzero(linked[node]).flatten().tolist():
                if other not in component:
                    component.add(other)
                    frontier.append(other)
        seen |= component
        if len(component) > 1:
            components.append(sorted(component))
    assert sorted(group.indices for group in groups) == sorted(components)
    assert [7, 9] in [group.indices for group in groups]
    assert next(g for g in groups if g.indices == [7, 9]).exact is False


def test_no_copy_threshold_is_applied_outside_its_feature_space(face_features):
    features, _ = face_features
    with pytest.raises(TypeError):
        ReplicationRate(feature=None)  # no default threshold
    with pytest.raises(ValueError, match="set for Inception pool features"):
        MemorizationInformedFID(feature=None, num_features=8)
    with pytest.raises(ValueError, match="No copy threshold"):
        evaluate_generations(features[:4], features[4:10], features[10:20], feature=lambda x: x.mean((2, 3)))
    fixed = fixed_copy_threshold(SSCD_REPLICATION_THRESHOLD, "Somepalli et al., SSCD")
    assert "valid only in the feature space it was set for" in fixed.describe()


def test_mifid_of_exact_copies_is_fully_penalized():
    assert mifid(50.0, 0.0, 0.1).item() == float("inf")
    assert mifid(50.0, 1e-7, 0.1).item() == float("inf")
    assert mifid(50.0, 0.05, 0.1).item() == pytest.approx(1000.0)
