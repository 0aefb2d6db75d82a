"""A search folder is resumed only by the search that wrote it, and a search that finds nothing fails loudly.

The journal's first line records the settings of its evaluations; a resume with other settings (the evaluator's, the
search's, before or after the first checkpoint), an old journal without that header, malformed journal lines and a
damaged checkpoint are refused with the file, the line or field, and the way out named. A search in which no
candidate succeeds says so in its result, and ``memcontrol search`` exits non-zero with the counts and first error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys

import pytest

from peft_memcontrol._version import __version__
from peft_memcontrol.cli import build_parser, main
from peft_memcontrol.search import GenomeSpace, InnerLoop, MaskSearcher, SearchConfig, SyntheticMaskProblem
from peft_memcontrol.search.inner_loop import ProxyDataSpec
from peft_memcontrol.search.journal import Journal
from peft_memcontrol.training import TrainingConfig


UNITS = tuple(f"unit.{i}" for i in range(10))
CONFIG = SearchConfig(population_size=6, generations=2, seed=0)


class WithoutSettings:
    """An evaluator without the optional ``settings()`` hook (the closed-form problem behind a plain callable)."""

    objectives = SyntheticMaskProblem.objectives

    def __init__(self) -> None:
        self.problem = SyntheticMaskProblem(10)

    def __call__(self, candidate, budget: float = 1.0) -> dict[str, float]:
        return self.problem(candidate, budget)


def searcher(folder, evaluator=None, config=CONFIG, **kwargs) -> MaskSearcher:
    space = GenomeSpace(units=UNITS, learning_rate_bounds=None)
    evaluator = evaluator if evaluator is not None else SyntheticMaskProblem(10)
    return MaskSearcher(space, evaluator, config=config, output_dir=folder, progress=False, **kwargs)


def journal_lines(folder) -> list[str]:
    with open(os.path.join(folder, "journal.jsonl"), encoding="utf-8") as handle:
        return handle.read().splitlines(keepends=True)


def write_lines(folder, lines) -> None:
    with open(os.path.join(folder, "journal.jsonl"), "w", encoding="utf-8") as handle:
        handle.writelines(lines)


def search_flags() -> set[str]:
    """Every option string of ``memcontrol search`` (to check that messages name real flags)."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(subparsers.choices["search"]._option_string_actions)


def assert_real_flags(message: str) -> None:
    named = set(re.findall(r"--[a-z_]+", message))
    assert named and named <= search_flags(), named - search_flags()


# ------------------------------------------------------------------ the header


def test_journal_starts_with_the_settings_of_its_evaluations(tmp_path):
    result = searcher(tmp_path).run()
    lines = journal_lines(tmp_path)
    header = json.loads(lines[0])
    assert header["journal"] == "peft-memcontrol-search-journal/1"
    assert header["peft_memcontrol"] == __version__
    assert header["evaluator"] == {
        "type": "peft_memcontrol.search.synthetic.SyntheticMaskProblem",
        "settings": {"num_bits": 10, "seed": 0, "noise": 0.0, "learning_rate_optimum": 1e-4, "failures": {}},
    }
    assert header["constraint"] is None
    assert header["objectives"] == ["memorization", "quality"]
    assert header["space"]["units"] == list(UNITS)
    assert header["config"]["population_size"] == 6 and "generations" not in header["config"]
    # The records follow, one per evaluation, as the search returned them.
    assert [json.loads(line) for line in lines[1:]] == result.records


def test_inner_loop_settings_hold_what_changes_scores_and_leave_out_where_runs_go():
    data = ProxyDataSpec("faces", test_data_dir="faces-test")
    settings = InnerLoop(data, training=TrainingConfig(max_train_steps=3, output_dir="a")).settings()
    assert settings["data"] == {
        "train_data_dir": "faces",
        "test_data_dir": "faces-test",
        "pretrained_model_name_or_path": None,
        "resolution": None,
        "fraction": 0.01,
        "num_memorization": 10,
        "repeats": 50,
        "seed": 0,
    }
    assert settings["objectives"] == ["copy_similarity", "kid"]
    training = settings["training"]
    assert training["max_train_steps"] == 3 and training["learning_rate"] == 1e-4 and training["seed"] == 0
    assert "output_dir" not in training and "show_progress" not in training
    evaluation = settings["evaluation"]
    assert evaluation["feature"] == "efficientnet-lite0" and evaluation["num_fid_images"] == 100
    assert "feature_device" not in evaluation
    assert json.loads(json.dumps(settings)) == settings  # plain JSON data
    moved = InnerLoop(data, training=TrainingConfig(max_train_steps=3, output_dir="b", show_progress=False))
    assert moved.settings() == settings  # where a run writes does not change its scores


# ------------------------------------------------------------------ resuming with other settings


def test_resume_with_other_inner_loop_steps_is_refused_before_anything_is_trained(tmp_path):
    """The issue's case: a folder searched with 1 training step, rerun with 20 (before any checkpoint)."""
    data = ProxyDataSpec("faces", test_data_dir="faces-test")
    one_step = searcher(tmp_path, InnerLoop(data, training=TrainingConfig(max_train_steps=1)))
    Journal(tmp_path / "journal.jsonl", header=one_step.header()).close()  # killed before the first evaluation
    before = journal_lines(tmp_path)
    twenty = searcher(tmp_path, InnerLoop(data, training=TrainingConfig(max_train_steps=20)))
    with pytest.raises(ValueError, match="other settings") as error:
        twenty.run()
    message = str(error.value)
    assert "evaluator.settings.training.max_train_steps: 1 in the journal, 20 now" in message
    assert message.count(" in the journal, ") == 1  # only the field that differs
    assert str(tmp_path / "journal.jsonl") in message and "--output_dir" in message
    assert_real_flags(message)
    assert journal_lines(tmp_path) == before  # nothing evaluated, nothing written


def test_resume_with_other_evaluator_settings_is_refused(tmp_path):
    searcher(tmp_path, SyntheticMaskProblem(10, noise=0.0)).run()
    with pytest.raises(ValueError, match=r"evaluator\.settings\.noise: 0\.0 in the journal, 0\.3 now"):
        searcher(tmp_path, SyntheticMaskProblem(10, noise=0.3)).run()
    with pytest.raises(ValueError, match=r"evaluator\.settings\.seed: 0 in the journal, 1 now"):
        searcher(tmp_path, SyntheticMaskProblem(10, seed=1)).run()


def test_resume_with_another_search_config_is_refused_before_the_first_checkpoint(tmp_path):
    searcher(tmp_path).run()
    os.remove(tmp_path / "checkpoint.json")  # as if killed before the first generation was checkpointed
    with pytest.raises(ValueError, match=r"config\.population_size: 6 in the journal, 8 now"):
        searcher(tmp_path, config=SearchConfig(population_size=8, generations=2, seed=0)).run()


def test_resume_with_another_constraint_is_refused(tmp_path):
    class AtMost:
        def __init__(self, limit: int) -> None:
            self.limit = limit

        def __call__(self, candidate) -> bool:
            return sum(candidate.bits) <= self.limit

        def settings(self) -> dict[str, int]:
            return {"limit": self.limit}

    searcher(tmp_path, constraint=AtMost(4)).run()
    with pytest.raises(ValueError, match=r"constraint\.settings\.limit: 4 in the journal, 6 now"):
        searcher(tmp_path, constraint=AtMost(6)).run()


def test_evaluator_without_settings_is_compared_by_type_and_resumed_with_a_warning(tmp_path, caplog):
    searcher(tmp_path, WithoutSettings()).run()
    with pytest.raises(
        ValueError, match=r"evaluator\.type: .*WithoutSettings.* in the journal, .*SyntheticMaskProblem"
    ):
        searcher(tmp_path, SyntheticMaskProblem(10)).run()
    longer = searcher(tmp_path, WithoutSettings(), config=SearchConfig(population_size=6, generations=3, seed=0))
    longer.run()
    assert "has no settings() method" in caplog.text
    assert longer.generation == 3


def test_journal_without_header_is_refused(tmp_path):
    searcher(tmp_path).run()
    write_lines(tmp_path, journal_lines(tmp_path)[1:])  # as an older peft-memcontrol wrote it
    with pytest.raises(ValueError, match=r"journal\.jsonl, line 1: no header") as error:
        searcher(tmp_path).run()
    assert_real_flags(str(error.value))


def test_unchanged_settings_resume_exactly(tmp_path):
    reference = searcher(tmp_path / "reference").run()
    searcher(tmp_path / "resumed", config=SearchConfig(population_size=6, generations=1, seed=0)).run()
    resumed = searcher(tmp_path / "resumed").run()
    assert resumed.front_values() == reference.front_values()
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in reference.records]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.records] == strip


# ------------------------------------------------------------------ damaged files


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{}\n", "'key' missing"),
        ("garbage\n", "not JSON"),
        ("[1, 2]\n", "not a JSON object"),
        ('{"key": "[1]", "genome": [1], "budget": 1.0, "status": "ok", "values": [0.5]}\n', "not 2 numbers"),
    ],
)
def test_malformed_journal_line_is_refused_with_file_and_line(tmp_path, line, problem):
    searcher(tmp_path).run()
    lines = journal_lines(tmp_path)
    write_lines(tmp_path, [*lines[:2], line, *lines[2:]])
    with pytest.raises(ValueError, match=re.escape("journal.jsonl, line 3: ")) as error:
        searcher(tmp_path).run()
    assert problem in str(error.value)


def test_last_journal_line_cut_short_is_dropped_and_evaluated_again(tmp_path):
    reference = searcher(tmp_path / "reference").run()
    folder = tmp_path / "killed"
    searcher(folder).run()
    lines = journal_lines(folder)
    write_lines(folder, [*lines[:-1], lines[-1][:20]])  # killed while writing the last record
    os.remove(folder / "checkpoint.json")
    resumed = searcher(folder).run()
    assert resumed.front_values() == reference.front_values()
    assert len(journal_lines(folder)) == len(lines)
    assert journal_lines(folder)[:-1] == lines[:-1]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "is not valid JSON"),  # cut short
        ("{}", "is not a checkpoint of this searcher"),
        ("[]", "is not a checkpoint of this searcher"),
        ('{"format": "peft-memcontrol-search/1"}', "lacks ["),
    ],
)
def test_damaged_checkpoint_is_refused_and_deleting_it_resumes(tmp_path, content, problem):
    reference = searcher(tmp_path / "reference").run()
    folder = tmp_path / "damaged"
    searcher(folder, config=SearchConfig(population_size=6, generations=1, seed=0)).run()
    path = folder / "checkpoint.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if content is None else content)
    with pytest.raises(ValueError, match=re.escape(f"{path} ")) as error:
        searcher(folder).run()
    assert problem in str(error.value) and "Delete it" in str(error.value)
    lines = journal_lines(folder)
    path.unlink()  # the way out the message names
    resumed = searcher(folder).run()
    assert resumed.front_values() == reference.front_values()
    assert journal_lines(folder)[: len(lines)] == lines  # the journal's evaluations were reused, not redone


def test_checkpoint_without_journal_is_refused(tmp_path):
    searcher(tmp_path).run()
    os.remove(tmp_path / "journal.jsonl")
    with pytest.raises(ValueError, match="has no journal beside it"):
        searcher(tmp_path).run()


# ------------------------------------------------------------------ searches that find nothing


def test_result_says_when_every_candidate_failed(tmp_path):
    failures = {"".join(map(str, bits)): "raise" for bits in itertools.product((0, 1), repeat=10)}
    result = searcher(tmp_path, SyntheticMaskProblem(10, failures=failures)).run()
    assert result.front == []
    evaluations = len(result.records)
    assert result.status_counts() == {"error": evaluations}
    failure = result.failure()
    assert f"{evaluations} error" in failure
    assert "RuntimeError: synthetic training failure" in failure


def test_result_says_when_no_candidate_satisfies_the_constraint(tmp_path):
    result = searcher(tmp_path, constraint=lambda candidate: False).run()
    assert result.status_counts() == {"infeasible": len(result.records)}
    assert "No candidate satisfies the search's constraint" in result.failure()
    assert_real_flags(result.failure())


def test_result_of_a_search_that_found_masks_has_no_failure(tmp_path):
    result = searcher(tmp_path).run()
    assert result.front and result.failure() is None
    assert result.status_counts() == {"ok": len(result.records)}


def cli_search(folder, *extra) -> list[str]:
    return [
        "search",
        "--population_size",
        "2",
        "--generations",
        "0",
        "--max_train_steps",
        "1",
        "--train_batch_size",
        "1",
        "--objectives",
        "noise_norm",
        "val_loss",
        "--proxy_num_memorization",
        "2",
        "--proxy_repeats",
        "2",
        "--num_inference_steps",
        "2",
        "--noise_runs",  # the references after a search are not what these tests look at
        "1",
        "--no_base_model_scores",
        "--fidelity_front",  # nor the proxy-fidelity check
        "0",
        "--fidelity_other",
        "0",
        "--output_dir",
        str(folder),
        "--no_progress",
        *extra,
    ]


def test_cli_refuses_a_share_constraint_no_mask_can_meet_before_training(tmp_path, capsys):
    assert main(cli_search(tmp_path, "--max_trainable_share", "-1")) == 2
    error = capsys.readouterr().err
    assert "smallest achievable share is" in error and "--max_trainable_share" in error
    assert not (tmp_path / "journal.jsonl").exists()  # refused before anything was evaluated


def test_cli_exits_non_zero_when_every_candidate_failed(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.jsonl").write_text('{"file_name": "missing.png", "text": "a face"}\n')
    assert main(cli_search(tmp_path / "search", "--train_data_dir", str(data), "--test_data_dir", str(data))) == 1
    error = capsys.readouterr().err
    assert "No candidate succeeded" in error and "2 error" in error and "First failure (error" in error


def test_cli_restart_on_an_existing_search_names_real_flags(tmp_path, capsys):
    synthetic = ["search", "--synthetic", "10", "--population_size", "4", "--generations", "1"]
    assert main([*synthetic, "--output_dir", str(tmp_path), "--no_progress"]) == 0
    assert main([*synthetic, "--output_dir", str(tmp_path), "--no_progress", "--restart"]) == 2
    error = capsys.readouterr().err
    assert "journal.jsonl exists" in error
    assert_real_flags(error)


@pytest.mark.slow
def test_cli_rerun_with_more_training_steps_is_refused(tmp_path):
    """The issue's case end to end: a 1-step search, then the same folder with ``--max_train_steps 20``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "peft_memcontrol.cli"]
    subprocess.run([*command, *cli_search(tmp_path)], check=True, env=env, capture_output=True)
    front = (tmp_path / "front.json").read_text()
    lines = journal_lines(tmp_path)
    longer = [*cli_search(tmp_path)]
    longer[longer.index("--max_train_steps") + 1] = "20"
    rerun = subprocess.run([*command, *longer], env=env, capture_output=True, text=True)
    assert rerun.returncode == 2
    assert "training.max_train_steps: 1 in the journal, 20 now" in rerun.stderr
    assert journal_lines(tmp_path) == lines and (tmp_path / "front.json").read_text() == front
