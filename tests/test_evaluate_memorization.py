"""`examples/evaluate_memorization.py` on the embedded tiny pipeline and the demo's digits.

The script's AMD is checked against an independent computation from its saved generations: the training images
are read from the folder with PIL, embedded with the same feature space, and AMD is computed here with plain
torch (minimum cosine distance of each generation to any training image, averaged).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import peft_memcontrol as pm
from peft_memcontrol.evaluation import load_split
from peft_memcontrol.metrics import get_feature_extractor
from peft_memcontrol.sample_data import build_digits_dataset
from peft_memcontrol.tiny_sd import load_tiny_pipeline, tiny_pipeline_path
from peft_memcontrol.training import MemControlTrainer, TrainingConfig, load_training_dataset

from helpers.images import read_metadata, synthetic_images


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import evaluate_memorization as script  # noqa: E402


FAST = ["--device", "cpu", "--num_inference_steps", "3", "--num_generations", "3", "--noise_norm_generations", "1"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return build_digits_dataset(str(root), num_train=8, num_test=5, num_memorization=2, memorization_repeats=3)


def unique_training_images(folder: str) -> torch.Tensor:
    """Each distinct training image once, read with PIL, as [0, 1] NCHW."""
    rows = read_metadata(folder)
    seen, images = set(), []
    for row in rows:
        if row["source_id"] in seen:
            continue
        seen.add(row["source_id"])
        with Image.open(Path(folder) / row["file_name"]) as image:
            images.append(torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0))
    return torch.stack(images).permute(0, 3, 1, 2)


@pytest.mark.slow
def test_scores_match_an_independent_amd(digits, tmp_path):
    out = tmp_path / "eval"
    args = ["--train_data_dir", digits.train_dir, "--test_data_dir", digits.test_dir]
    args += ["--memorization_data_dir", digits.memorization_dir, "--output_dir", str(out), "--save_generations"]
    results = script.main([*args, *FAST, "--extraction_threshold", "0.3", "--min_group_size", "2"])

    saved = json.loads((out / "results.json").read_text())
    assert saved["scores"] == pytest.approx(results["scores"])
    assert saved["counts"] == {"test_images": 5, "attacked_prompts": 2, "reference_images": 8}
    assert saved["settings"]["resolution"] == 32  # the tiny pipeline's native size
    assert len(saved["per_prompt"]) == 2
    assert 0 <= saved["scores"]["extracted"] <= saved["scores"]["flagged"] <= 2
    header, rule, row = (out / "results.md").read_text().splitlines()
    cells = dict(
        zip([cell.strip() for cell in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")])
    )
    assert cells["model"] == "base model" and rule.startswith("|---|---:|")
    assert cells["FID ↓"] == f"{saved['scores']['fid']:.2f}" and cells["AMD ↑"] == f"{saved['scores']['amd']:.4f}"
    assert cells["extracted ↓"] == str(saved["scores"]["extracted"])

    generations = load_file(str(out / "generations.safetensors"))
    assert generations["test"].shape == (5, 3, 32, 32) and generations["attack"].shape == (2, 3, 3, 32, 32)
    assert len(list((out / "generations" / "attack").glob("*.png"))) == 6

    extractor = get_feature_extractor("efficientnet-lite0")
    with torch.no_grad():
        generated = torch.nn.functional.normalize(extractor(generations["attack"].flatten(0, 1)), dim=1)
        training = torch.nn.functional.normalize(extractor(unique_training_images(digits.train_dir)), dim=1)
    amd = (1.0 - generated @ training.T).min(dim=1).values.mean().item()
    assert saved["scores"]["amd"] == pytest.approx(amd, abs=1e-4)
    similarity = (generated @ training.T).max(dim=1).values
    assert saved["scores"]["replication"] == pytest.approx((similarity > 0.5).float().mean().item())


@pytest.mark.slow
def test_adapter_and_attack_prompts_from_training(digits, tmp_path):
    data = load_training_dataset(train_data_dir=digits.train_dir, resolution=32)
    adapter = tmp_path / "adapter"
    trainer = MemControlTrainer.from_pretrained(
        tiny_pipeline_path(),
        data,
        method=pm.SVDiffConfig(),
        config=TrainingConfig(output_dir=str(adapter), max_train_steps=3, train_batch_size=4, learning_rate=5e-2),
    )
    trainer.train()
    trainer.save_adapter()
    trainer.end()

    common = ["--train_data_dir", digits.train_dir, "--test_data_dir", digits.test_dir, *FAST]
    common += ["--num_attack_prompts", "3", "--max_train_images", "4", "--num_fid_images", "4"]
    base = script.main([*common, "--output_dir", str(tmp_path / "base")])
    tuned = script.main([*common, "--adapter_dir", str(adapter), "--output_dir", str(tmp_path / "tuned")])
    # attacked prompts drawn from the training rows; the reference set holds them plus 4 drawn images
    assert base["counts"] == tuned["counts"] == {"test_images": 4, "attacked_prompts": 3, "reference_images": 7}
    assert tuned["label"] == "adapter" and tuned["scores"]["fid"] != base["scores"]["fid"]

    with pytest.raises(FileNotFoundError, match="neither adapter_config.json nor unet/config.json"):
        script.main([*common, "--adapter_dir", str(tmp_path), "--output_dir", str(tmp_path / "none")])


def test_full_fine_tuning_output_replaces_the_unet(digits, tmp_path):
    data = load_training_dataset(train_data_dir=digits.train_dir, resolution=32)
    config = TrainingConfig(
        output_dir=str(tmp_path / "full"), max_train_steps=1, train_batch_size=2, learning_rate=1e-2
    )
    trainer = MemControlTrainer.from_pretrained(tiny_pipeline_path(), data, method="full", config=config)
    trainer.train()
    trainer.save_adapter()
    trainer.end()

    pipeline = load_tiny_pipeline()
    before = {k: v.clone() for k, v in pipeline.unet.state_dict().items()}
    assert script.apply_trained_model(pipeline, str(tmp_path / "full"), torch.float32) == "unet"
    after = pipeline.unet.state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_rows_share_a_source_only_through_source_id(tmp_path):
    """Duplicates with one `source_id` count once; rows without one are distinct images even with one caption."""
    rows = [("a.png", "no acute process", 7), ("b.png", "no acute process", 7), ("c.png", "no acute process", None)]
    rows.append(("d.png", "no acute process", None))
    with open(tmp_path / "metadata.jsonl", "w") as handle:
        for (file_name, text, source_id), image in zip(rows, synthetic_images(len(rows), size=16)):
            image.save(tmp_path / file_name)
            row = {"file_name": file_name, "text": text} | ({} if source_id is None else {"source_id": source_id})
            handle.write(json.dumps(row) + "\n")
    split = load_split(str(tmp_path), resolution=16)
    assert len(split.captions) == 3  # a.png (b.png is the same source), c.png, d.png
    everything = load_split(str(tmp_path), resolution=16, unique=False)
    assert len(everything.captions) == 4
    assert torch.equal(split.images[1:], everything.images[2:])
