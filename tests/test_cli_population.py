"""`memcontrol search` derives the population from the evaluation budget when it is not given (issue 16, item 4)."""

from __future__ import annotations

import json

import pytest

from peft_memcontrol.cli import main
from peft_memcontrol.search.config import default_population_size


def _header_config(folder) -> dict:
    with open(folder / "journal.jsonl") as journal:
        return json.loads(journal.readline())["config"]


@pytest.mark.parametrize(
    ("extra", "population"),
    [
        (["--max_evaluations", "30"], 10),
        (["--max_evaluations", "30", "--population_size", "6"], 6),
        ([], 20),
    ],
    ids=["from-the-budget", "given", "no-budget"],
)
def test_population_follows_the_budget_unless_given(tmp_path, extra, population):
    folder = tmp_path / "search"
    args = ["search", "--synthetic", "6", "--generations", "1", "--no_progress", "--output_dir", str(folder), *extra]
    assert main(args) == 0
    assert _header_config(folder)["population_size"] == population


def test_default_population_size_rule():
    assert [default_population_size(n) for n in (None, 20, 100, 101, 500)] == [20, 10, 10, 20, 20]
