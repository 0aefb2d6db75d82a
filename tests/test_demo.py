"""``memcontrol demo --quick``: the whole demo on the tiny pipeline, through the console entry point; its report files
exist and parse, the table has one row per method with finite values, and the presets and flags are wired."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from peft_memcontrol.cli import build_parser, main
from peft_memcontrol.demo import DemoConfig
from peft_memcontrol.sample_data import build_digits_dataset


METHODS = [
    "full fine-tuning",
    "SVDiff (all slots)",
    "DiffFit (all slots)",
    "masked attention tuning (all slots)",
    "full + random word addition",
    "full + Wen et al. filtering",
    "MemControl (searched mask)",
]
NUMERIC = ["trainable_share", "fid", "amd", "mifid", "extracted", "flagged", "replication", "noise_norm", "time_s"]


def test_presets_and_flags():
    quick = DemoConfig.preset_config("quick", max_train_steps=7, seed=None)
    assert quick.preset == "quick" and quick.max_train_steps == 7 and quick.seed == 0
    assert DemoConfig.preset_config("default").max_train_steps > quick.max_train_steps
    with pytest.raises(ValueError, match="Unknown preset"):
        DemoConfig.preset_config("huge")
    args = build_parser().parse_args(
        ["demo", "--quick", "--device", "cpu", "--population_size", "8", "--num_workers", "1"]
    )
    assert args.quick and args.device == "cpu" and args.population_size == 8 and args.num_workers == 1
    assert args.handler.__name__ == "run_demo"


def test_digits_transfer_set_is_deterministic_and_captions_are_unique(tmp_path):
    first = build_digits_dataset(
        str(tmp_path / "a"), num_train=10, num_test=4, num_memorization=2, memorization_repeats=3
    )
    second = build_digits_dataset(
        str(tmp_path / "b"), num_train=10, num_test=4, num_memorization=2, memorization_repeats=3
    )
    text = (Path(first.train_dir) / "metadata.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == first.num_train_rows == 8 + 2 * 3
    assert sum(row["memorized"] for row in rows) == 6
    unique = {row["source_id"]: row["text"] for row in rows}
    assert len(set(unique.values())) == len(unique) == 10
    assert text == (Path(second.train_dir) / "metadata.jsonl").read_text()


@pytest.mark.slow
def test_quick_demo_writes_a_parsable_report(tmp_path, capsys):
    out = tmp_path / "demo"
    # the quick preset, made smaller still: this test checks the report, not the numbers (README times the preset)
    smaller = ["--max_train_steps", "10", "--search_train_steps", "3", "--num_inference_steps", "4"]
    smaller += ["--num_generations", "2", "--fidelity_front", "0", "--fidelity_other", "0"]  # the knee only
    assert main(["demo", "--quick", "--device", "cpu", "--no_progress", *smaller, "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| method |" in printed and "Report in" in printed

    for name in ("results.md", "results.csv", "transfer.md", "transfer.csv", "nearest.png", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "search" / "front.png").is_file()
    assert (out / "nearest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == METHODS
    for row in rows:
        for column in NUMERIC:
            assert math.isfinite(float(row[column])), (row["method"], column, row[column])
    assert float(rows[0]["trainable_share"]) == 1.0
    assert 0 < float(rows[-1]["trainable_share"]) < 0.05

    with open(out / "transfer.csv", newline="") as handle:
        transfer = list(csv.DictReader(handle))
    assert [row["method"] for row in transfer] == ["full fine-tuning", "MemControl (searched mask)"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["preset"] == "quick"
    assert [row["method"] for row in summary["results"]] == METHODS
    assert summary["search"]["num_units"] == len(summary["search"]["mask"]) > 0
    table = (out / "results.md").read_text()
    assert all(f"| {method} |" in table for method in METHODS)
    assert (
        "Thresholds of this table, measured on its data:" in table and "copy threshold: cosine similarity >" in table
    )
    assert "## Does the search's inner loop rank masks like the full fine-tune?" in table
    assert summary["fidelity"]["candidates"][0]["role"] == "knee" and summary["calibration"]
    assert len(summary["fidelity"]["candidates"]) == 1 and summary["config"]["fidelity_front"] == 0
    assert "No rank correlation: 1 fully fine-tuned mask(s)" in table  # no correlation of one mask, and no crash


def test_extra_held_out_digits_leave_the_training_set_unchanged(tmp_path):
    plain = build_digits_dataset(str(tmp_path / "a"), num_train=10, num_test=4, num_memorization=2)
    extra = build_digits_dataset(str(tmp_path / "b"), num_train=10, num_test=4, num_memorization=2, num_extra_test=30)
    assert (Path(plain.train_dir) / "metadata.jsonl").read_text() == (
        Path(extra.train_dir) / "metadata.jsonl"
    ).read_text()
    plain_test = [json.loads(line) for line in (Path(plain.test_dir) / "metadata.jsonl").read_text().splitlines()]
    extra_test = [json.loads(line) for line in (Path(extra.test_dir) / "metadata.jsonl").read_text().splitlines()]
    assert extra_test[:4] == plain_test and len(extra_test) == 34
    trained = {
        json.loads(line)["source_id"] for line in (Path(extra.train_dir) / "metadata.jsonl").read_text().splitlines()
    }
    assert not trained & {row["source_id"] for row in extra_test}
