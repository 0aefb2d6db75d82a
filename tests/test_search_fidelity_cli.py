"""``memcontrol search`` measures proxy fidelity itself: a real search on the tiny pipeline, whose sampled masks are
fully fine-tuned and evaluated after it. The correlations in ``fidelity.json`` are recomputed with scipy from the
numbers it records, each candidate's full scores are recomputed by a separate training and `evaluate_model`, and
reruns reuse finished candidates only under the same full-run settings."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from peft_memcontrol.cli import main
from peft_memcontrol.evaluation import EvaluationData, dataset_split, evaluate_model, load_split
from peft_memcontrol.sample_data import build_digits_dataset
from peft_memcontrol.search.fidelity import DEFAULT_FULL_COUNTERPARTS
from peft_memcontrol.search.inner_loop import SEARCH_EVALUATION
from peft_memcontrol.tiny_sd import tiny_pipeline_path
from peft_memcontrol.training import MemControlTrainer, TrainingConfig, build_proxy_set, load_training_dataset
from peft_memcontrol.tuners import MemControlConfig


SEED = 0
FULL_STEPS = 3
RING_COLOUR = (148, 103, 189)
"""matplotlib's ``C4``, the colour ``front.png`` rings the fully fine-tuned candidates in (no other mark uses it)."""


def ring_pixels(path) -> int:
    """Pixels of ``RING_COLOUR`` in a PNG."""
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(image - RING_COLOUR).sum(axis=2) < 30).sum())


def search_args(data, folder, *extra) -> list[str]:
    """A 3-candidate search (no generation after the first), every candidate fully fine-tuned after it."""
    return [
        "search",
        "--train_data_dir",
        data.train_dir,
        "--test_data_dir",
        data.test_dir,
        "--population_size",
        "3",
        "--generations",
        "0",
        "--max_train_steps",
        "2",
        "--train_batch_size",
        "2",
        "--proxy_fraction",
        "0.3",
        "--proxy_num_memorization",
        "2",
        "--proxy_repeats",
        "2",
        "--num_inference_steps",
        "2",
        "--num_extraction_generations",
        "2",
        "--num_fid_images",
        "4",
        "--noise_runs",
        "1",
        "--no_base_model_scores",
        "--surrogate",
        "none",
        "--fidelity_front",
        "3",
        "--fidelity_other",
        "3",
        "--fidelity_train_steps",
        str(FULL_STEPS),
        "--seed",
        str(SEED),
        "--output_dir",
        str(folder),
        "--no_progress",
        *extra,
    ]


def independent_full_scores(data, candidates, folder) -> list[dict]:
    """Each candidate trained on every training row for `FULL_STEPS` steps and scored by `evaluate_model`, written
    out here: the proxy set's memorized rows attacked, every held-out image, the distinct training images."""
    dataset = load_training_dataset(train_data_dir=data.train_dir, resolution=32)
    proxy = build_proxy_set(dataset, fraction=0.3, num_memorization=2, repeats=2, seed=SEED)
    evaluation_data = EvaluationData(
        test=load_split(data.test_dir, 32),
        memorization=dataset_split(proxy.memorization_dataset),
        training=load_split(data.train_dir, 32),
    )
    settings = replace(SEARCH_EVALUATION, num_generations=2, num_inference_steps=2, num_fid_images=None, seed=SEED)
    scores, calibration = [], None
    for index, candidate in enumerate(candidates):
        config = MemControlConfig(method=candidate["method"], mask=candidate["mask"])
        training = TrainingConfig(
            output_dir=str(folder / f"run-{index}"),
            max_train_steps=FULL_STEPS,
            train_batch_size=2,
            learning_rate=candidate["learning_rate"],
            seed=SEED,
            report_to=None,
            show_progress=False,
        )
        trainer = MemControlTrainer.from_pretrained(tiny_pipeline_path(), dataset, config, training)
        trainer.train()
        trainer.model.eval()
        # one calibration serves every model on the same data (it depends on the data and the VAE only)
        result = evaluate_model(trainer.pipeline(), evaluation_data, settings, calibration=calibration)
        calibration = result.calibration
        scores.append(result.table_values())
    return scores


@pytest.mark.slow
def test_search_measures_proxy_fidelity_and_reuses_it_only_under_the_same_settings(tmp_path, capsys, caplog):
    data = build_digits_dataset(str(tmp_path / "data"), num_train=8, num_test=4, num_memorization=2)
    folder = tmp_path / "search"
    assert main(search_args(data, folder)) == 0
    printed = capsys.readouterr().out
    first = json.loads((folder / "fidelity.json").read_text())
    candidates = first["candidates"]
    assert first["measured"] and len(candidates) == 3 and all(c["status"] == "ok" for c in candidates)
    assert first["settings"]["train_steps"] == FULL_STEPS and first["settings"]["num_memorized_images"] == 2
    assert ring_pixels(folder / "front.png") > 50  # the plot is drawn again with the fully fine-tuned ones ringed

    # the inner-loop scores are the journal's, the full ones those of a separate training and evaluation
    journal = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()[1:]]
    values = {record["key"]: record["values"] for record in journal}
    for candidate in candidates:
        assert list(candidate["proxy"].values()) == values[candidate["key"]]
    assert [c["full"] for c in candidates] == independent_full_scores(data, candidates, tmp_path)  # bit for bit

    # each correlation is scipy's Spearman rho of the recorded numbers, the full metric signed by its counterpart
    assert [row["objective"] for row in first["rows"]] == ["copy_similarity", "kid"]
    for row in first["rows"]:
        counterpart = DEFAULT_FULL_COUNTERPARTS[row["objective"]]
        assert (row["metric"], row["sign"]) == tuple(counterpart)
        proxy = [c["proxy"][row["objective"]] for c in candidates]
        full = [counterpart.sign * c["full"][row["metric"]] for c in candidates]
        assert row["correlation"]["rho"] == pytest.approx(stats.spearmanr(proxy, full).statistic, abs=1e-12)
        low, high = row["correlation"]["low"], row["correlation"]["high"]
        assert -1 <= low <= high <= 1
        assert row["verdict"] == "too few"  # 3 candidates: a correlation, no verdict
        correlation = row["correlation"]
        line = (
            f"proxy fidelity, {row['objective']} vs full {counterpart.label}: rho {correlation['rho']:.2f}, 95% CI "
            f"[{low:.2f}, {high:.2f}], n=3: too few"
        )
        assert line in printed
    markdown = (folder / "fidelity.md").read_text()
    assert "| `copy_similarity` | `-amd` | 3 |" in markdown and f"for {FULL_STEPS} steps" in markdown

    # a rerun after a kill that lost the last candidate: the two finished ones are reused as they are, the third
    # trained again, to the same scores
    stored = json.loads((folder / "fidelity.json").read_text())
    stored["candidates"] = stored["candidates"][:2]
    (folder / "fidelity.json").write_text(json.dumps(stored))
    assert main(search_args(data, folder)) == 0
    again = json.loads((folder / "fidelity.json").read_text())
    assert again["candidates"][:2] == candidates[:2]  # the seconds too: nothing retrained
    retrained = again["candidates"][2]
    assert retrained["full"] == candidates[2]["full"] and retrained["train_seconds"] != candidates[2]["train_seconds"]
    assert again["rows"] == first["rows"]

    # other full-run settings: nothing is reused
    with caplog.at_level(logging.INFO, logger="peft_memcontrol.search.stored"):
        assert (
            main(
                search_args(
                    data, folder, "--fidelity_train_steps", "4", "--fidelity_front", "1", "--fidelity_other", "0"
                )
            )
            == 0
        )
    assert "fidelity.json was measured under other settings" in caplog.text
    longer = json.loads((folder / "fidelity.json").read_text())
    (candidate,) = longer["candidates"]
    before = next(c for c in candidates if c["key"] == candidate["key"])
    assert longer["settings"]["train_steps"] == 4 and not longer["measured"]  # one candidate: no correlation
    assert candidate["full"] != before["full"] and candidate["train_seconds"] != before["train_seconds"]


def test_no_fidelity_candidates_and_synthetic_searches_say_it_is_not_measured(tmp_path, capsys):
    for name, extra in (
        ("skipped", ["--synthetic", "6", "--fidelity_front", "0", "--fidelity_other", "0"]),
        ("synthetic", ["--synthetic", "6"]),
    ):
        folder = tmp_path / name
        args = ["search", "--population_size", "4", "--generations", "0", "--output_dir", str(folder), *extra]
        assert main([*args, "--no_progress"]) == 0
        printed = capsys.readouterr().out
        stored = json.loads((folder / "fidelity.json").read_text())
        assert not stored["measured"] and stored["candidates"] == []
        assert f"proxy fidelity not measured: {stored['reason']}" in printed
        assert f"Proxy fidelity not measured: {stored['reason']}." in (folder / "fidelity.md").read_text()
    assert (
        "no candidate was to be fully fine-tuned"
        in json.loads((tmp_path / "skipped" / "fidelity.json").read_text())["reason"]
    )
    assert "SyntheticMaskProblem" in json.loads((tmp_path / "synthetic" / "fidelity.json").read_text())["reason"]


def test_invalid_fidelity_flags_are_refused_before_the_search(tmp_path, capsys):
    for flag, value in (("--fidelity_front", "-1"), ("--fidelity_train_steps", "0")):
        args = ["search", "--synthetic", "6", "--output_dir", str(tmp_path), "--no_progress", flag, value]
        assert main(args) == 2
        assert f"{flag} must be at least" in capsys.readouterr().err
    assert not (tmp_path / "journal.jsonl").exists()
