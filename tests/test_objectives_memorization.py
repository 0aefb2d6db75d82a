"""The prompt-independent memorization objective ``copy_similarity``: its arithmetic in a real inner loop, and the case
that blinds the noise norm (a UNet fully fine-tuned on one face copies it for any prompt)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from peft_memcontrol.evaluation import EvaluationSettings, SplitImages, dataset_split, feature_bank, generate
from peft_memcontrol.metrics import (
    calibrate_copy_detection,
    extract_features,
    get_feature_extractor,
    nearest_neighbours,
)
from peft_memcontrol.sample_data import build_faces_dataset, lfw_faces
from peft_memcontrol.sample_data.faces import face_caption
from peft_memcontrol.search import GenomeSpace
from peft_memcontrol.search.inner_loop import InnerLoop, ProxyDataSpec
from peft_memcontrol.search.objectives import BUILTIN_OBJECTIVES, ObjectiveContext, copy_similarity, noise_norm
from peft_memcontrol.tiny_sd import load_tiny_pipeline
from peft_memcontrol.training import ImageCaptionDataset, MemControlTrainer, MemorizationMonitor, TrainingConfig


FAST_SAMPLING = EvaluationSettings(num_inference_steps=4, generation_batch_size=8, num_fid_images=4)


def brute_force_copy_similarity(
    pipeline: Any, settings: EvaluationSettings, memorization: SplitImages, unrelated: Sequence[str]
) -> float:
    """The objective spelled out: both prompt groups generated (seeded per group), then for every generation the
    largest cosine similarity to any memorization image, one pair at a time in float64, averaged."""
    generated = torch.cat(
        [generate(pipeline, memorization.captions, settings), generate(pipeline, unrelated, settings)]
    )
    bank = feature_bank(settings.feature)
    queries, references = bank.embed(generated).double(), bank.embed(memorization.images).double()
    best = [max(float(q @ r / (q.norm() * r.norm())) for r in references) for q in queries]
    return sum(best) / len(best)


def test_copy_similarity_in_a_real_inner_loop_matches_a_brute_force_loop(tmp_path):
    data = build_faces_dataset(str(tmp_path / "data"), num_test=4, num_memorization=2, memorization_repeats=2)
    expected: dict[str, float] = {}

    def brute_force(context: ObjectiveContext) -> float:
        pipe, memorization, test = context.pipeline(), context.memorization, context.test_dataset
        # unrelated prompts: "" and as many held-out captions as memorization prompts (2 of the 4)
        test_captions = [test[i]["caption"] for i in range(len(memorization.captions))]
        expected["with_test_set"] = brute_force_copy_similarity(
            pipe, context.settings, memorization, ["", *test_captions]
        )
        expected["without_test_set"] = brute_force_copy_similarity(pipe, context.settings, memorization, [""])
        expected["objective_without_test_set"] = copy_similarity(replace(context, test_dataset=None, cache={}))
        expected["kid"] = brute_force_kid(context)
        return 0.0

    def brute_force_kid(context: ObjectiveContext) -> float:
        """The unbiased squared MMD with the kernel (x.y / d + 1)^3, pair by pair, on the generations ``kid`` used
        (it runs before ``brute_force``)."""
        test = dataset_split(context.test_dataset, range(4))
        real = context.features.embed(test.images).double()
        fake = context.features.embed(context.cache["test_generations"]).double()
        d, n = real.shape[1], real.shape[0]

        def mean_kernel(a, b, skip_diagonal):
            values = [
                float((a[i] @ b[j] / d + 1) ** 3) for i in range(n) for j in range(n) if not (skip_diagonal and i == j)
            ]
            return sum(values) / len(values)

        return mean_kernel(real, real, True) + mean_kernel(fake, fake, True) - 2 * mean_kernel(real, fake, False)

    loop = InnerLoop(
        ProxyDataSpec(data.train_dir, test_data_dir=data.test_dir, fraction=0.05, num_memorization=2, repeats=2),
        objectives=["copy_similarity", "kid", brute_force],
        training=TrainingConfig(max_train_steps=2, train_batch_size=2),
        evaluation=FAST_SAMPLING,
    )
    space = GenomeSpace.from_layout("sd15-reference-13")
    scores = loop(space.decode(space.genome_from_bits([1] * space.num_unit_genes)))

    assert BUILTIN_OBJECTIVES["copy_similarity"] is copy_similarity
    assert set(scores) == {"copy_similarity", "kid", "brute_force"}
    assert scores["kid"] == pytest.approx(expected["kid"], rel=1e-4, abs=1e-6)
    assert scores["copy_similarity"] == pytest.approx(expected["with_test_set"], abs=1e-5)
    assert expected["objective_without_test_set"] == pytest.approx(expected["without_test_set"], abs=1e-5)
    # the held-out captions' generations count: leaving them out changes the score
    assert abs(expected["with_test_set"] - expected["without_test_set"]) > 1e-4
    assert -1.0 <= scores["copy_similarity"] <= 1.0


def memorization_scores(trainer: MemControlTrainer, face: SplitImages, test: Any) -> dict[str, float]:
    """``copy_similarity`` and ``noise_norm`` of the trainer's current UNet, the face as the memorization subset."""
    settings = EvaluationSettings(num_inference_steps=10, generation_batch_size=8)
    context = ObjectiveContext(
        candidate=None,
        peft_config=None,
        trainer=trainer,
        training=None,
        memorization=face,
        test_dataset=test,
        trainable_share=1.0,
        settings=settings,
        features=feature_bank(settings.feature),
    )
    return {"copy_similarity": copy_similarity(context), "noise_norm": noise_norm(context)}


MONITORED_PROMPTS = [face_caption(0), "", "a photo of a person"]


def centred_pixels(images: torch.Tensor) -> torch.Tensor:
    """Each image's pixels minus their mean: cosine similarity is then the pixels' correlation. At 32 px it tells a
    copy of the face from another face (near copies detected 100%), where EfficientNet-Lite0 features cannot (the test
    below asserts both)."""
    pixels = torch.as_tensor(images).float().flatten(1)
    return pixels - pixels.mean(dim=1, keepdim=True)


def memorization_monitor(face: SplitImages, held_out: Any) -> MemorizationMonitor:
    """A monitor of the face's caption and two unrelated prompts, every 100 steps, its threshold calibrated at a 2%
    false-positive rate on the 99 other faces."""
    calibration = calibrate_copy_detection(face.images, held_out, centred_pixels, false_positive_rate=0.02)
    assert calibration.detection_rate == 1.0
    return MemorizationMonitor(
        MONITORED_PROMPTS, face.images, calibration, centred_pixels, 100, num_inference_steps=10
    )


def monitor_generations(trainer: MemControlTrainer) -> torch.Tensor:
    """The monitor's generations redone by hand: the same prompts, seed and settings, through the trainer's pipeline."""
    pipeline = trainer.pipeline()
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipeline(
        MONITORED_PROMPTS, num_inference_steps=10, guidance_scale=7.5, generator=generator, output_type="pt"
    ).images


@pytest.mark.slow
def test_copy_similarity_rises_when_the_unet_memorizes_one_face_while_the_noise_norm_falls():
    """Issue 14's case: fully fine-tuning the tiny UNet on one face and its caption until generations converge on
    it (200 steps at 2e-3). The noise norm reads this as *less* memorization; ``copy_similarity`` must rise."""
    faces = lfw_faces(32)
    train = ImageCaptionDataset([faces[0]] * 2, [face_caption(0)] * 2, resolution=32)
    test = ImageCaptionDataset(faces[50:54], [face_caption(i) for i in range(50, 54)], resolution=32)
    face = dataset_split(train, [0])
    pipe = load_tiny_pipeline()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = MemControlTrainer(
            unet=pipe.unet,
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
            train_dataset=train,
            method="full",
            config=TrainingConfig(
                output_dir=output_dir,
                max_train_steps=200,
                train_batch_size=2,
                learning_rate=2e-3,
                report_to=None,
                show_progress=False,
            ),
        )
        before = memorization_scores(trainer, face, test)
        monitor = memorization_monitor(face, faces[1:])
        result = trainer.train(monitor=monitor)
        after = memorization_scores(trainer, face, test)

    # measured: copy_similarity 0.414 -> 0.788, noise_norm 2.063 -> 1.126
    assert after["copy_similarity"] > before["copy_similarity"] + 0.2, (before, after)
    assert after["noise_norm"] < before["noise_norm"], (before, after)
    # the monitor's logged verdict changes: no copy before training, the face copied for every prompt at the end;
    # its similarities are the brute-force ones of the same seeded generations
    checks = result.memorization_checks
    assert [check["step"] for check in checks] == [0, 100, 200] and not result.stopped_at_copy
    assert checks[0]["copies"] == 0 and checks[-1]["copies"] == len(MONITORED_PROMPTS), checks
    reference = face.images.double().flatten(1).numpy()
    generated = monitor_generations(trainer).double().flatten(1).numpy()
    expected = [max(float(np.corrcoef(q, r)[0, 1]) for r in reference) for q in generated]
    assert checks[-1]["similarities"] == pytest.approx(expected, abs=1e-4)
    # EfficientNet-Lite0 features at 32 px: the threshold at 2% finds under half the near copies and lies above every
    # final generation, so a monitor in that space would report no copy (the monitor warns about such a threshold)
    extractor = get_feature_extractor()
    embed = lambda images: extract_features(images, extractor)  # noqa: E731
    blind = calibrate_copy_detection(face.images, faces[1:], embed, false_positive_rate=0.02)
    features = embed(monitor_generations(trainer))
    assert blind.detection_rate < 0.5
    assert nearest_neighbours(features, embed(face.images)).similarities.max() < blind.threshold
