"""The search workers' encoding cache: candidates after the first skip the frozen encoders, with bit-identical
training and scores."""

from __future__ import annotations

from dataclasses import replace

import torch

from peft_memcontrol import SVDiffConfig
from peft_memcontrol.evaluation import EvaluationSettings, load_evaluation_data
from peft_memcontrol.sample_data import build_digits_dataset, build_faces_dataset
from peft_memcontrol.search import FullFineTune, GenomeSpace
from peft_memcontrol.search.inner_loop import SEARCH_EVALUATION, InnerLoop, ProxyDataSpec
from peft_memcontrol.training import EncodingCache, TrainingConfig


def test_cached_encodings_give_bit_identical_candidates(tmp_path):
    data = build_faces_dataset(str(tmp_path / "data"), num_test=4, num_memorization=2, memorization_repeats=2)
    space = GenomeSpace.from_layout("sd15-reference-13")
    first, second = (space.decode(genome) for genome in space.seed_genomes()[:2])
    results = {}
    for reuse in (True, False):
        loop = InnerLoop(
            ProxyDataSpec(data.train_dir, test_data_dir=data.test_dir, fraction=0.05, num_memorization=2, repeats=2),
            objectives=["val_loss", "noise_norm"],
            training=TrainingConfig(max_train_steps=3, train_batch_size=2, learning_rate=1e-2),
            evaluation=replace(SEARCH_EVALUATION, num_inference_steps=2),
            reuse_base_model=reuse,
        )
        results[reuse] = [loop(first), loop(second)]
        if reuse:
            encodings = loop.load().encodings
            # the second candidate replays the first one's 3 steps of images and captions (and the test batches)
            assert encodings.hits >= 6 and encodings.misses == len(encodings) > 0
    assert results[True] == results[False]  # exact floats: the cache changes no bit


def test_posteriors_are_keyed_by_content_device_and_dtype():
    cache = EncodingCache()
    batch = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    other = batch.clone()
    other[1, 2, 7, 7] += 1e-6  # one value differs in the last bits
    moments = {}
    for name, pixels in (("batch", batch), ("same bytes", batch.clone()), ("other", other), ("half", batch.half())):
        moments[name] = cache.posterior(pixels, lambda p=pixels: (p.float().mean(), p.float().std()))
    assert moments["same bytes"] is moments["batch"]
    assert moments["other"] is not moments["batch"] and moments["half"] is not moments["batch"]
    assert (cache.hits, cache.misses) == (1, 3)


def test_cache_stops_adding_at_its_memory_budget():
    cache = EncodingCache(max_bytes=3 * 4 * 10)
    calls = []

    def compute(index):
        calls.append(index)
        return torch.full((10,), float(index))

    for _repeat in range(2):
        for index in range(5):
            value = cache.prompts([f"caption {index}"], ("cpu", "float32"), lambda i=index: compute(i))
            assert torch.equal(value, torch.full((10,), float(index)))
    assert len(cache) == 3 and cache.num_bytes == 120
    assert calls == [0, 1, 2, 3, 4, 3, 4]  # the first three are kept; the later two are computed each time
    assert (cache.hits, cache.misses) == (3, 7)


def test_full_fine_tunes_on_one_folder_share_encodings_bit_identically(tmp_path):
    """The demo's rows: `FullFineTune` runs on one training folder with one seed draw the same batches, so a shared
    cache serves every run after the first, and changes no score."""
    data = build_digits_dataset(
        str(tmp_path / "data"), num_train=8, num_test=4, num_memorization=2, memorization_repeats=2
    )
    evaluation = EvaluationSettings(num_generations=2, num_inference_steps=2, noise_norm_generations=1, image_size=32)
    training = TrainingConfig(max_train_steps=3, train_batch_size=2, learning_rate=1e-2, report_to=None)
    methods = ["full", SVDiffConfig()]
    scores, calibration = {}, None
    for shared in (EncodingCache(), None):
        runner = FullFineTune(
            data.train_dir, load_evaluation_data(data), evaluation, 32, calibration=calibration, encodings=shared
        )
        scores[shared is not None] = [
            runner.run(method, replace(training, output_dir=str(tmp_path / f"{shared is None}-{index}"))).scores
            for index, method in enumerate(methods)
        ]
        calibration = runner.calibration  # measured once, by the first run
        if shared is not None:
            # the second run replays the first one's 3 batches of images and captions
            assert shared.hits >= 6 and shared.misses == len(shared) > 0
    cached, fresh = ([run.table_values() for run in runs] for runs in (scores[True], scores[False]))
    assert cached == fresh  # exact floats
