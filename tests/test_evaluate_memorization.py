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
from peft_memcontrol.cli import main as cli_main
from peft_memcontrol.evaluation import load_split
from peft_memcontrol.metrics import get_feature_extractor
from peft_memcontrol.sample_data import build_digits_dataset, lfw_faces
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
    # every training row is the reference set: 8 images, 2 of them with 3 copies each
    assert saved["counts"] == {
        "test_images": 5,
        "attacked_prompts": 2,
        "attacked_duplicate_groups": 0,
        "reference_images": 12,
    }
    assert saved["settings"]["resolution"] == 32  # the tiny pipeline's native size
    assert len(saved["per_prompt"]) == 2
    assert 0 <= saved["scores"]["extracted"] <= saved["scores"]["flagged"] <= 2
    header, rule, row = (out / "results.md").read_text().splitlines()[:3]
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
    threshold = saved["calibration"]["copy"]["threshold"]
    assert saved["scores"]["replication"] == pytest.approx((similarity > threshold).float().mean().item())
    # the threshold is the largest held-out similarity (5 held-out images cannot reach 1%: rate 1/6)
    with torch.no_grad():
        held_out = torch.nn.functional.normalize(extractor(load_split(digits.test_dir, 32).images), dim=1)
    assert threshold == pytest.approx((held_out @ training.T).max().item(), abs=1e-5)
    assert saved["calibration"]["copy"]["false_positive_rate"] == pytest.approx(1 / 6)

    # the nearest-neighbour picture's images: each prompt's representative is one of its own generations, beside
    # the memorized image nearest to it in tiled L2 (brute force over tiles here), at the distance results.json says
    assert (out / "nearest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "nearest.png" in (
        out / "results.md"
    ).read_text()
    pictured = load_file(str(out / "prompt_records.safetensors"))
    memorized = load_split(digits.memorization_dir, 32).images
    for index, record in enumerate(saved["per_prompt"]):
        generation = pictured["generation"][index]
        assert any(torch.equal(generation, candidate) for candidate in generations["attack"][index])
        tiles = [
            ((generation - image)[:, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].pow(2).mean().sqrt().item())
            for image in memorized
            for i, j in [(i, j) for i in range(4) for j in range(4)]
        ]
        distances = [max(tiles[16 * k : 16 * k + 16]) for k in range(len(memorized))]
        nearest = min(range(len(memorized)), key=distances.__getitem__)
        assert torch.equal(pictured["training"][index], memorized[nearest])
        assert record["distance"] == pytest.approx(distances[nearest], abs=1e-5)


@pytest.mark.slow
def test_adapter_and_attack_prompts_from_training(digits, tmp_path, capsys):
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
    card_before = (adapter / "README.md").read_text()
    tuned = script.main(
        [*common, "--adapter_dir", str(adapter), "--output_dir", str(tmp_path / "tuned"), "--update_model_card"]
    )
    # the adapter's card gains the evaluation section (the scores of results.json) and keeps everything else
    card = (adapter / "README.md").read_text()
    assert "## Memorization and quality" in card and "## Memorization and quality" not in card_before
    assert f"| FID ↓ | {tuned['scores']['fid']:.6g} |" in card and f"| verdict | {tuned['verdict']} |" in card
    assert card_before.split("## How to load it")[0] == card.split("## How to load it")[0]
    with pytest.raises(ValueError, match="give --adapter_dir"):
        script.parse_args([*common, "--update_model_card"])
    # attacked prompts: one per duplicate group among the 4 drawn rows, then random rows among them
    assert base["counts"] == tuned["counts"]
    assert base["counts"]["test_images"] == 4 and base["counts"]["reference_images"] == 4
    assert base["counts"]["attacked_prompts"] == 3
    assert tuned["label"] == "adapter" and tuned["scores"]["fid"] != base["scores"]["fid"]

    # `memcontrol report`: both runs in one table, each row holding its own run's scores and verdict
    report_path = tmp_path / "report.md"
    assert cli_main(["report", str(tmp_path / "base"), str(tmp_path / "tuned"), "--output", str(report_path)]) == 0
    report = report_path.read_text()
    for run in (base, tuned):
        row = next(line for line in report.splitlines() if line.startswith(f"| {run['label']} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1:4] == [
            f"{run['scores']['fid']:.2f}",
            f"{run['scores']['kid']:.4f}",
            f"{run['scores']['kid_se']:.4f}",
        ]
        assert cells[5] == f"{run['scores']['amd']:.4f}" and cells[6] == str(run["scores"]["extracted"])
        assert run["verdict"] in report
    # ... with their generations side by side: one column per run (plus the training image), one row per prompt
    picture = tmp_path / "report-nearest.png"
    assert picture.is_file() and "![" in report and picture.name in report
    width, height = Image.open(picture).size  # figsize (1.3 per column, 1.55 per row + 0.5) inches at 100 dpi
    assert width == pytest.approx(100 * 1.3 * 3, abs=1) and height == pytest.approx(100 * (1.55 * 3 + 0.5), abs=1)
    # a run scored with another attack threshold cannot share the table
    other = tmp_path / "other"
    other.mkdir()
    changed = json.loads((tmp_path / "tuned" / "results.json").read_text())
    changed["settings"]["extraction_threshold"] = 0.5
    (other / "results.json").write_text(json.dumps(changed))
    capsys.readouterr()
    assert cli_main(["report", str(tmp_path / "base"), str(other)]) == 2
    error = capsys.readouterr().err
    assert "settings.extraction_threshold: 0.15" in error and "--allow_different_settings" in error
    # a hand-edited results.json without a score column is refused by name, not with a bare KeyError
    del changed["scores"]["kid"]
    changed["settings"]["extraction_threshold"] = 0.15
    (other / "results.json").write_text(json.dumps(changed))
    assert cli_main(["report", str(tmp_path / "base"), str(other)]) == 2
    assert "has no numeric score for ['kid']" in capsys.readouterr().err

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


def write_faces_with_hidden_duplicates(root: Path) -> tuple[Path, Path, dict[str, list[str]]]:
    """A user's folder: 24 distinct LFW faces, three of them exported 5 more times under other names (no
    ``source_id``), and 20 held-out faces. Returns the two folders and the planted groups' file names."""
    faces = lfw_faces(32)
    train, test = root / "train", root / "test"
    planted: dict[str, list[str]] = {}
    for folder in (train, test):
        folder.mkdir(parents=True)
    rows = [(i, f"face_{i:02d}.png") for i in range(24)]
    rows += [(i, f"export_{i}_{k}.png") for i in (3, 11, 17) for k in range(5)]
    with open(train / "metadata.jsonl", "w") as handle:
        for index, file_name in rows:
            faces[index].save(train / file_name)
            handle.write(json.dumps({"file_name": file_name, "text": f"a photo of person {index}"}) + "\n")
            if index in (3, 11, 17):
                planted.setdefault(f"a photo of person {index}", []).append(file_name)
    with open(test / "metadata.jsonl", "w") as handle:
        for index in range(60, 80):
            faces[index].save(test / f"held_{index}.png")
            handle.write(json.dumps({"file_name": f"held_{index}.png", "text": f"a photo of person {index}"}) + "\n")
    return train, test, planted


@pytest.mark.slow
def test_duplicates_are_found_and_attacked_without_being_told(tmp_path):
    train, test, planted = write_faces_with_hidden_duplicates(tmp_path / "data")
    out = tmp_path / "eval"
    results = script.main(
        ["--train_data_dir", str(train), "--test_data_dir", str(test), "--output_dir", str(out), *FAST]
        + ["--num_attack_prompts", "5", "--false_positive_rate", "0.05"]
    )
    exact = [group["file_names"] for group in results["duplicate_groups"] if group["exact"]]
    assert exact == list(planted.values())  # the planted groups, largest first, nothing else exact
    threshold = results["calibration"]["copy"]["threshold"]
    # any other group links distinct files above the calibrated threshold (its false-positive rate at work)
    assert all(g["min_similarity"] > threshold for g in results["duplicate_groups"] if not g["exact"])
    attacked = [record["prompt"] for record in results["per_prompt"]]
    assert attacked[:3] == list(planted) and len(attacked) == 5  # the 3 largest groups first
    assert results["counts"]["attacked_duplicate_groups"] >= 3 and results["counts"]["reference_images"] == 39

    # the attack's calibration, recomputed: the tiny VAE's reconstructions of the attacked faces, by hand
    pipeline = load_tiny_pipeline()
    attacked_images = torch.stack([_read(train / planted[prompt][0]) for prompt in planted])
    with torch.no_grad():
        latents = pipeline.vae.encode(attacked_images * 2 - 1).latent_dist.mean
        rebuilt = (pipeline.vae.decode(latents).sample.clamp(-1, 1) + 1) / 2
    distances = [tiled_rms(a.numpy(), b.numpy()) for a, b in zip(attacked_images, rebuilt)]
    calibration = results["calibration"]
    assert calibration["attack"]["reconstruction_max"] >= max(distances) - 1e-4  # 3 of the 5 attacked images
    report = (out / "results.md").read_text()
    assert ("WARNING" in report) == calibration["attack"]["blind"]
    assert results["verdict"] in report and "copy threshold: cosine similarity >" in report
    assert "5 rows" not in report and "6 rows, exact copies: face_03.png, export_3_0.png" in report


def _read(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def tiled_rms(a: np.ndarray, b: np.ndarray, grid: int = 4) -> float:
    """The attack's distance by explicit loops over a 4 x 4 grid of tiles (RMS per tile, max over tiles)."""
    rows, columns = np.array_split(np.arange(a.shape[1]), grid), np.array_split(np.arange(a.shape[2]), grid)
    return max(
        float(
            np.sqrt(
                ((a[:, r[0] : r[-1] + 1, c[0] : c[-1] + 1] - b[:, r[0] : r[-1] + 1, c[0] : c[-1] + 1]) ** 2).mean()
            )
        )
        for r in rows
        for c in columns
    )
