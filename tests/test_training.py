"""Tests of the trainer, its data conventions and the mitigations (on the shipped tiny pipeline, CPU)."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from peft_memcontrol.latents import encode_latents
from peft_memcontrol.tiny_sd import load_tiny_pipeline
from peft_memcontrol.training import (
    CaptionWordRepetition,
    ImageCaptionDataset,
    RandomWordAddition,
    RandomWordReplacement,
    StepBatchSampler,
    TrainingConfig,
    build_proxy_set,
    collate_image_captions,
    drop_captions,
    load_training_dataset,
    threshold_keep_mask,
)
from peft_memcontrol.training.data import mix_seed
from peft_memcontrol.tuners import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig

from helpers.images import synthetic_images, write_image_folder
from helpers.training import TINY_SLOTS, assert_same_training_state, make_trainer


# ---------------------------------------------------------------- data
def test_image_folder_and_csv_give_the_same_samples(tmp_path):
    root = write_image_folder(str(tmp_path / "folder"), n=5)
    with open(tmp_path / "data.csv", "w") as f:
        f.write("path,caption\n")
        for i in range(5):
            f.write(f"folder/{i:03d}.png,a photo of thing {i}\n")
    folder = load_training_dataset(train_data_dir=root, resolution=16)
    table = load_training_dataset(train_csv=str(tmp_path / "data.csv"), resolution=16)
    assert len(folder) == len(table) == 5
    for i in range(5):
        a, b = folder[i], table[i]
        assert a["caption"] == b["caption"] == f"a photo of thing {i}"
        assert a["pixel_values"].shape == (3, 16, 16)
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert a["pixel_values"].min() >= -1 and a["pixel_values"].max() <= 1


def test_hub_format_dataset_gives_the_same_samples_as_the_folder(tmp_path):
    """--dataset_name: a data set in the Hub's layout (parquet shards with an image and a text column), here a local
    repository folder, which `datasets.load_dataset` reads exactly as a downloaded Hub repository."""
    import datasets

    root = write_image_folder(str(tmp_path / "folder"), n=5)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    table = datasets.Dataset.from_dict(
        {
            "image": [os.path.join(root, f"{i:03d}.png") for i in range(5)],
            "caption": [f"a photo of thing {i}" for i in range(5)],
        },
        features=features,
    )
    repository = tmp_path / "user--faces"
    (repository / "data").mkdir(parents=True)
    table.to_parquet(str(repository / "data" / "train-00000-of-00001.parquet"))
    cache = str(tmp_path / "cache")
    folder = load_training_dataset(train_data_dir=root, resolution=16)
    hub = load_training_dataset(dataset_name=str(repository), cache_dir=cache, resolution=16)
    assert len(hub) == len(folder) == 5
    for i in range(5):
        assert hub[i]["caption"] == folder[i]["caption"]
        assert torch.equal(hub[i]["pixel_values"], folder[i]["pixel_values"])
    with pytest.raises(ValueError, match=r"--caption_column 'text' is not a column.*\['image', 'caption'\]"):
        load_training_dataset(dataset_name=str(repository), cache_dir=cache, caption_column="text")


def test_missing_caption_column_names_column_and_flag(tmp_path):
    root = write_image_folder(str(tmp_path / "folder"), n=2, caption_key="caption")
    with pytest.raises(ValueError, match=r"no 'text' column.*--caption_column"):
        load_training_dataset(train_data_dir=root)
    assert load_training_dataset(train_data_dir=root, caption_column="caption").captions[1] == "a photo of thing 1"


def test_exactly_one_data_source_required(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_training_dataset()
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        load_training_dataset(train_data_dir=str(tmp_path))


def test_step_batch_sampler_shards_and_resumes():
    single = StepBatchSampler(10, batch_size=6, num_steps=5, seed=3)
    ranks = [StepBatchSampler(10, 3, 5, seed=3, num_processes=2, process_index=r) for r in range(2)]
    for step in range(5):
        assert ranks[0].batch_for_step(step) + ranks[1].batch_for_step(step) == single.batch_for_step(step)
    # Each epoch (10 consecutive stream positions) is a permutation of the data set.
    stream = [i for step in range(5) for i, _ in single.batch_for_step(step)]
    for epoch in range(3):
        assert sorted(stream[epoch * 10 : epoch * 10 + 10]) == list(range(10))
    resumed = StepBatchSampler(10, 6, 5, seed=3, start_step=2)
    assert list(resumed) == [single.batch_for_step(s) for s in (2, 3, 4)]


def test_proxy_set_counts():
    dataset = ImageCaptionDataset(synthetic_images(40, 8), [f"c{i}" for i in range(40)])
    proxy = build_proxy_set(dataset, fraction=0.1, num_memorization=3, repeats=5, seed=0)
    assert len(proxy.dataset) == math.ceil(0.1 * 40) + 3 * 5 == 19
    assert len(proxy.memorization_dataset) == 3
    assert not set(proxy.fraction_indices) & set(proxy.memorization_indices)
    for i in proxy.memorization_indices:
        assert proxy.dataset.captions.count(f"c{i}") == 5
    fixed = build_proxy_set(dataset, fraction=0.0, memorization_indices=[7, 9], repeats=2)
    assert fixed.dataset.captions == ["c7", "c7", "c9", "c9"]


# ---------------------------------------------------------------- mitigations
WORDS = ["apple", "river", "stone", "cloud", "lamp"]


def _expected_word_addition(caption: str, generator: torch.Generator, num_words: int) -> str:
    """Independent re-statement of the documented draw order: word, then position, per inserted word."""
    words = caption.split()
    for _ in range(num_words):
        word = WORDS[torch.randint(len(WORDS), (1,), generator=generator).item()]
        words.insert(torch.randint(len(words) + 1, (1,), generator=generator).item(), word)
    return " ".join(words)


def test_random_word_addition_fresh_draw_each_step():
    transform = RandomWordAddition(num_words=4, vocabulary=WORDS)
    caption = "a photo of a cat"
    out = transform(caption, 0, torch.Generator().manual_seed(11))
    assert out == _expected_word_addition(caption, torch.Generator().manual_seed(11), 4)
    words = out.split()
    assert len(words) == 9
    # The original words keep their order (a subsequence), the 4 new ones come from the vocabulary.
    it = iter(words)
    assert all(w in it for w in caption.split())
    assert sorted(words) == sorted(caption.split() + [w for w in words if w in WORDS])
    other = transform(caption, 0, torch.Generator().manual_seed(12))
    assert other != out


def test_random_word_addition_static_is_fixed_per_sample():
    transform = RandomWordAddition(num_words=4, vocabulary=WORDS, static=True, seed=5)
    a = transform("a photo of a cat", 3, torch.Generator().manual_seed(1))
    b = transform("a photo of a cat", 3, torch.Generator().manual_seed(2))
    assert a == b == _expected_word_addition("a photo of a cat", torch.Generator().manual_seed(mix_seed(5, 3)), 4)
    assert transform("a photo of a cat", 4, torch.Generator()) != a


def test_word_replacement_and_repetition():
    caption = "one two three four five six"
    assert RandomWordReplacement(probability=0.0, vocabulary=WORDS)(caption, 0, torch.Generator()) == caption
    replaced = RandomWordReplacement(probability=1.0, vocabulary=WORDS)(caption, 0, torch.Generator().manual_seed(0))
    assert all(w in WORDS for w in replaced.split()) and len(replaced.split()) == 6
    repeated = CaptionWordRepetition(num_words=2)(caption, 0, torch.Generator().manual_seed(0)).split()
    assert len(repeated) == 8 and set(repeated) <= set(caption.split())


def test_caption_dropout_exact():
    captions = [f"c{i}" for i in range(20)]
    out = drop_captions(captions, 0.3, torch.Generator().manual_seed(4))
    draws = torch.rand(20, generator=torch.Generator().manual_seed(4))
    assert out == ["" if d < 0.3 else c for c, d in zip(captions, draws.tolist())]
    assert sum(o == "" for o in out) == int((draws < 0.3).sum())


@pytest.mark.parametrize(("batch", "dropped"), [(8, 1), (10, 1), (11, 1), (20, 2), (30, 3)])
def test_threshold_auto_drops_top_ten_percent(batch, dropped):
    norms = torch.randperm(batch, generator=torch.Generator().manual_seed(batch)).float() + 0.5
    kept = threshold_keep_mask(norms, "auto")
    assert int((~kept).sum()) == dropped
    # The dropped ones are exactly the largest norms.
    assert set(torch.nonzero(~kept).flatten().tolist()) == set(norms.argsort()[batch - dropped :].tolist())


def test_threshold_number_is_strict():
    norms = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5])
    assert threshold_keep_mask(norms, 1.5).tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="auto"):
        threshold_keep_mask(norms, "top")


# ---------------------------------------------------------------- the trainer
@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    root = write_image_folder(str(tmp_path_factory.mktemp("data") / "train"), n=12)
    return load_training_dataset(train_data_dir=root, resolution=32)


def _run_resume(dataset, method_factory, tmp_path, **kwargs):
    uninterrupted = make_trainer(dataset, method_factory(), str(tmp_path / "a"), max_train_steps=4, **kwargs)
    result = uninterrupted.train()
    first = make_trainer(
        dataset, method_factory(), str(tmp_path / "b"), max_train_steps=2, checkpointing_steps=2, **kwargs
    )
    first.train()
    assert os.path.isfile(tmp_path / "b" / "checkpoint-2" / "trainable_parameters.safetensors")
    resumed = make_trainer(
        dataset, method_factory(), str(tmp_path / "b"), max_train_steps=4, resume_from_checkpoint="latest", **kwargs
    )
    resumed_result = resumed.train()
    assert resumed_result.global_step == result.global_step == 4
    assert resumed_result.losses == result.losses[2:]
    assert_same_training_state(uninterrupted, resumed)


def test_resume_continues_with_identical_state(folder_dataset, tmp_path):
    _run_resume(
        folder_dataset, lambda: "full", tmp_path, train_batch_size=2, caption_transforms=[RandomWordAddition()]
    )


def test_resume_with_an_adapter_continues_with_identical_state(folder_dataset, tmp_path):
    _run_resume(folder_dataset, DiffFitConfig, tmp_path, train_batch_size=2)


def test_svdiff_norm_shifts_get_their_own_learning_rate(folder_dataset, tmp_path):
    trainer = make_trainer(folder_dataset, SVDiffConfig(), str(tmp_path), learning_rate=3e-4)
    rates = sorted(group["lr"] for group in trainer.optimizer.param_groups)
    assert rates == [1e-6, 3e-4]
    n_grouped = sum(len(group["params"]) for group in trainer.optimizer.param_groups)
    assert n_grouped == len(trainer.trainable_parameters())
    assert all(not p.requires_grad for n, p in trainer.base_unet.named_parameters() if "mc_" not in n)


def test_missing_resume_dir_is_a_clear_error(folder_dataset, tmp_path):
    trainer = make_trainer(folder_dataset, "full", str(tmp_path), resume_from_checkpoint=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="does not exist.*latest"):
        trainer.train()


def test_nan_loss_names_the_step(folder_dataset, tmp_path):
    trainer = make_trainer(
        folder_dataset, "full", str(tmp_path), learning_rate=1e30, max_grad_norm=0.0, max_train_steps=3
    )
    with pytest.raises(FloatingPointError, match=r"at step 1 \(micro-step 1\)"):
        trainer.train()


def test_threshold_filtering_drops_exact_counts(folder_dataset, tmp_path):
    trainer = make_trainer(
        folder_dataset, "full", str(tmp_path), train_batch_size=10, max_train_steps=1, noise_norm_threshold="auto"
    )
    result = trainer.train()
    assert (result.seen_samples, result.dropped_samples) == (10, 1)
    strict = make_trainer(folder_dataset, "full", str(tmp_path / "s"), max_train_steps=1, noise_norm_threshold=-1.0)
    assert strict.train().dropped_samples == 4  # every norm is above -1: the whole batch is dropped
    assert strict.train().losses == []  # already at max_train_steps: nothing more to do


def _record_prompts(trainer) -> list[str]:
    """Make the trainer's prompt encoder record the captions it encodes; returns the record."""
    seen: list[str] = []
    original = trainer.family.encode_prompts
    trainer.family.encode_prompts = lambda captions: (seen.extend(captions), original(captions))[1]
    return seen


def test_trainer_applies_caption_transforms_and_dropout(folder_dataset, tmp_path):
    transform = RandomWordAddition(num_words=2, static=True, seed=1)
    trainer = make_trainer(
        folder_dataset, "full", str(tmp_path), caption_transforms=[transform], caption_dropout_probability=0.0
    )
    seen = _record_prompts(trainer)
    trainer.train()
    # The trainer filled the tokenizer's words into a copy of its own; the caller's transform is untouched.
    assert transform.vocabulary is None
    own = trainer.caption_transforms[0]
    assert own is not transform and own.vocabulary is not None and "photo" in own.vocabulary
    assert trainer.config.caption_transforms[0] is transform
    sampler = StepBatchSampler(12, 4, 2, seed=0)
    indices = [i for step in range(2) for i, _ in sampler.batch_for_step(step)]
    assert seen == [own(f"a photo of thing {i}", i, torch.Generator()) for i in indices]


def test_compute_loss_overrides_caption_dropout_without_touching_the_config(folder_dataset, tmp_path):
    trainer = make_trainer(folder_dataset, "full", str(tmp_path), caption_dropout_probability=1.0)
    plain = make_trainer(folder_dataset, "full", str(tmp_path / "plain"), caption_dropout_probability=0.0)
    batch = collate_image_captions([folder_dataset[i] for i in range(4)])
    seen = _record_prompts(trainer)
    trainer.compute_loss(batch, micro_step=0)
    assert seen == [""] * 4  # the config's dropout drops every caption
    seen.clear()
    loss = trainer.compute_loss(batch, micro_step=0, caption_dropout_probability=0.0)[0]
    assert seen == [f"a photo of thing {i}" for i in range(4)]
    assert trainer.config.caption_dropout_probability == 1.0
    assert torch.equal(loss, plain.compute_loss(batch, micro_step=0)[0])


def test_full_fine_tuning_trains_every_unet_parameter(folder_dataset, tmp_path):
    trainer = make_trainer(folder_dataset, "full", str(tmp_path), max_train_steps=1)
    before = {n: p.detach().clone() for n, p in trainer.base_unet.named_parameters()}
    trainer.train()
    assert len(trainer.trainable_parameters()) == len(before)
    changed = sum(not torch.equal(before[n], p) for n, p in trainer.base_unet.named_parameters())
    assert changed > 0.9 * len(before)
    assert all(not p.requires_grad for p in trainer.family.vae.parameters())
    assert all(not p.requires_grad for p in trainer.family.text_encoder.parameters())


def test_v_prediction_snr_accumulation_checkpointing_bf16(folder_dataset, tmp_path):
    trainer = make_trainer(
        folder_dataset,
        DiffFitConfig(),
        str(tmp_path),
        train_batch_size=2,
        prediction_type="v_prediction",
        snr_gamma=5.0,
        gradient_accumulation_steps=2,
        gradient_checkpointing=True,
        mixed_precision="bf16",
    )
    result = trainer.train()
    assert trainer.noise_scheduler.config.prediction_type == "v_prediction"
    assert result.global_step == 2 and len(result.losses) == 2
    assert result.seen_samples == 2 * 2 * 2  # steps x accumulation x batch
    assert all(math.isfinite(x) for x in result.losses)
    assert trainer.base_unet.is_gradient_checkpointing
    # As diffusers' cast_training_params leaves a LoRA UNet: frozen parts in bf16, trained parameters in float32.
    trainable = trainer.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for n, p in trainer.unwrapped_model.named_parameters() if n not in trainable]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert trainer.family.vae.dtype == trainer.family.text_encoder.dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["masked_attention", "memcontrol"])
def test_adapter_trains_and_only_its_parameters_change(folder_dataset, tmp_path, method):
    """One step with masked attention (its backward once crashed on channels-last latents) and a MemControl mask."""
    mask = {slot: i % 2 == 0 for i, slot in enumerate(TINY_SLOTS)}
    config = MaskedAttentionConfig() if method == "masked_attention" else MemControlConfig(mask=mask, method="svdiff")
    trainer = make_trainer(folder_dataset, config, str(tmp_path), max_train_steps=1)
    model = trainer.unwrapped_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= set(trainer.trainable_parameters())


def test_tensorboard_logs_the_losses_the_trainer_returns(folder_dataset, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    trainer = make_trainer(folder_dataset, SVDiffConfig(), str(tmp_path), max_train_steps=3, report_to="tensorboard")
    assert [tracker.name for tracker in trainer.accelerator.trackers] == [] and trainer.accelerator.log_with
    result = trainer.train()
    trainer.end()
    run_dir = tmp_path / "logs" / trainer.config.tracker_project_name
    event_files = [path for path in run_dir.iterdir() if path.is_file() and "tfevents" in path.name]
    assert len(event_files) == 1, event_files
    events = event_accumulator.EventAccumulator(str(event_files[0]))
    events.Reload()
    logged = events.Scalars("train_loss")
    assert [event.step for event in logged] == [1, 2, 3]
    assert [event.value for event in logged] == pytest.approx(result.losses, rel=1e-6)
    assert [event.value for event in events.Scalars("lr")] == pytest.approx([1e-3] * 3)


# ---------------------------------------------------------------- configuration and latents
def test_every_training_config_field_is_documented():
    for field in dataclasses.fields(TrainingConfig):
        assert field.metadata.get("help"), field.name


def test_encode_latents_samples_or_takes_the_mode_then_shifts_and_scales():
    vae = load_tiny_pipeline().vae
    vae.register_to_config(shift_factor=0.25)
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        mode = encode_latents(vae, pixels)
        sample = encode_latents(vae, pixels, sample_posterior=True, generator=torch.Generator().manual_seed(3))
    scale = vae.config.scaling_factor
    assert torch.allclose(mode, (posterior.mean - 0.25) * scale)
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(sample, (posterior.mean + posterior.std * eps - 0.25) * scale)
