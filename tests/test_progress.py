"""The evaluation shows a progress bar, diffusers-style, for every long step, and none when it is told not to.

`evaluate_model` runs on the embedded tiny pipeline and the demo's digits; the bars tqdm writes to stderr are read
back, and their totals are checked against the counts of the data and of the generations the scores kept.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from peft_memcontrol.evaluation import (
    EvaluationSettings,
    FeatureBank,
    calibrate_evaluation,
    evaluate_model,
    load_evaluation_data,
)
from peft_memcontrol.evaluation.features import EMBEDDING_BATCH_SIZE
from peft_memcontrol.metrics import extract_features, get_feature_extractor
from peft_memcontrol.sample_data import build_digits_dataset
from peft_memcontrol.tiny_sd import load_tiny_pipeline


SETTINGS = EvaluationSettings(
    num_generations=3, num_inference_steps=2, noise_norm_generations=1, generation_batch_size=2, min_group_size=2
)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The digits' data and the tiny pipeline (its own per-call bars off, as the evaluation script sets them)."""
    folders = build_digits_dataset(
        str(tmp_path_factory.mktemp("digits")), num_train=6, num_test=5, num_memorization=2, memorization_repeats=2
    )
    pipeline = load_tiny_pipeline(device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, load_evaluation_data(folders)


def final_counts(stderr: str) -> dict[str, str]:
    """The last ``done/total`` tqdm wrote for each bar description."""
    counts = {}
    for line in re.split(r"[\r\n]", stderr):
        match = re.match(r"^(?P<desc>[^:|]+(?:: [^:|]+)?): +\d+%\|.*?\| (?P<count>\d+/\d+) ", line)
        if match:
            counts[match["desc"]] = match["count"]
    return counts


def test_every_long_step_shows_a_bar_with_its_image_count(scored, capfd):
    pipeline, data = scored
    scores = evaluate_model(pipeline, data, SETTINGS, keep_generations=True, progress=True)
    counts = final_counts(capfd.readouterr().err)

    num_test, num_attacked = len(data.test.captions), len(data.memorization.captions)
    num_attack_images = sum(len(images) for images in scores.attack_generations)
    assert num_attack_images == num_attacked * SETTINGS.num_generations == 6
    assert counts["Generating for the held-out prompts"] == f"{len(scores.test_generations)}/{num_test}" == "5/5"
    assert counts["Generating for the attacked prompts"] == f"{num_attack_images}/{num_attack_images}"
    assert counts["Calibrating: VAE reconstructions"] == f"{num_attacked}/{num_attacked}"
    assert counts["Extraction attack"] == f"{num_attack_images}/{num_attack_images}"
    assert counts["Noise-norm score"] == f"{num_attacked}/{num_attacked}"  # the metric's own bar, counting prompts


def test_embedding_shows_a_bar_and_keeps_the_features(scored, capfd):
    _, data = scored
    images = data.training.images.repeat(12, 1, 1, 1)[:70]  # more than one batch of EMBEDDING_BATCH_SIZE
    assert len(images) == 70 > EMBEDDING_BATCH_SIZE
    extractor = get_feature_extractor()
    features = FeatureBank(extractor).embed(images, progress=True)
    assert final_counts(capfd.readouterr().err) == {"Embedding images": "70/70"}
    assert torch.equal(features, extract_features(images, extractor))


def test_no_bar_without_progress_and_one_calibration_serves_every_model(scored, capfd):
    pipeline, data = scored
    scores = evaluate_model(pipeline, data, SETTINGS)
    assert final_counts(capfd.readouterr().err) == {}

    # the demo calibrates each domain once and scores every model with it: the same scores as calibrating per model
    calibration = calibrate_evaluation(pipeline, data, SETTINGS)
    assert calibration.image_size == (32, 32) == tuple(data.training.images.shape[-2:])
    reused = evaluate_model(pipeline, data, SETTINGS, calibration=calibration)
    assert reused.table_values() == scores.table_values()
    assert reused.calibration.to_dict() == scores.calibration.to_dict()

    with pytest.raises(ValueError, match="measured on 16x16 px images but the model generates 32x32 px"):
        evaluate_model(pipeline, data, SETTINGS, calibration=replace(calibration, image_size=(16, 16)))
