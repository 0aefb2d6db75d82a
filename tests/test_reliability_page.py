"""The reliability page (docs/reliability.md) names, for every row, a test that exists: the page stays true."""

from __future__ import annotations

import ast
import re
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "reliability.md"
TEST_ID = re.compile(r"`(tests/test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`")


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_row_names_a_test_that_exists():
    rows = [line for line in PAGE.read_text().splitlines() if line.startswith("| ") and not line.startswith("| input")]
    assert len(rows) >= 30
    missing = []
    for row in rows:
        found = TEST_ID.findall(row)
        assert len(found) == 1, f"a row of {PAGE.name} names no test (or several): {row}"
        file_name, function = found[0]
        if function not in _test_functions(REPO / file_name):
            missing.append(f"{file_name}::{function}")
    assert not missing, f"{PAGE.name} names tests that do not exist: {missing}"
