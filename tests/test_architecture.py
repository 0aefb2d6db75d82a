"""The package's layers contract, and ruff (imports at module level included) on the whole repository.

A module of ``peft_memcontrol`` may import from its own layer or a lower one, never from a higher one and never from
the package facade (``peft_memcontrol/__init__.py``, which only hands names on). Every import counts, also one inside
a function: a lazy import hides an upward edge, it does not remove it. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "peft_memcontrol"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("demo",),
    ("search",),
    ("evaluation",),
    ("training",),
    ("metrics", "tiny_sd", "sample_data"),
    ("hub",),
    ("counting", "optim"),
    ("tuners",),
    ("slots", "model_parts", "svd", "latents", "_registry", "_version", "constants", "_lazy", "_import_hooks"),
)
"""Top to bottom. Modules in one layer may import each other."""

FACADE = "<facade>"


class ImportEdge(NamedTuple):
    source: str  # path of the importing file, relative to the package's parent
    line: int
    target: str  # the top-level module of the package that is imported, or FACADE


def _top_level_names(package: Path) -> set[str]:
    return {path.stem for path in package.iterdir() if path.suffix == ".py" and path.stem != "__init__"} | {
        path.name for path in package.iterdir() if (path / "__init__.py").exists()
    }


def _target(package: Path, parts: list[str], imported_name: str | None, submodules: set[str]) -> str | None:
    """The top-level module that ``from <parts> import <imported_name>`` (or ``import <parts>``) reaches."""
    if not parts or parts[0] != package.name:
        return None
    if len(parts) > 1:
        return parts[1]
    if imported_name is not None and imported_name in submodules:
        return imported_name
    return FACADE


def import_edges(package: Path) -> list[ImportEdge]:
    """Every import of ``package``'s own modules by a module of ``package`` (except the facade itself)."""
    submodules = _top_level_names(package)
    edges = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent)
        if relative == Path(package.name, "__init__.py"):
            continue
        module_parts = list(relative.with_suffix("").parts)
        package_parts = module_parts[:-1]  # a module's package; for __init__.py the package itself
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _target(package, alias.name.split("."), None, submodules)
                    if target is not None:
                        edges.append(ImportEdge(str(relative), node.lineno, target))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package_parts[: len(package_parts) - (node.level - 1)]
                    parts = base + (node.module.split(".") if node.module else [])
                else:
                    parts = (node.module or "").split(".")
                for alias in node.names:
                    target = _target(package, parts, alias.name, submodules)
                    if target is not None:
                        edges.append(ImportEdge(str(relative), node.lineno, target))
    return edges


def layer_violations(package: Path, layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Imports that go to a higher layer or to the facade, and top-level modules that no layer names."""
    rank = {name: index for index, layer in enumerate(layers) for name in layer}
    problems = [
        f"{package.name}/{name} is in no layer: add it to LAYERS (and to docs/architecture.md)"
        for name in sorted(_top_level_names(package) - set(rank))
    ]
    for edge in import_edges(package):
        source = Path(Path(edge.source).parts[1]).stem
        if edge.target == FACADE:
            problems.append(f"{edge.source}:{edge.line} imports the package facade; import the defining submodule")
        elif edge.target != source and rank.get(edge.target, len(layers)) < rank.get(source, -1):
            problems.append(f"{edge.source}:{edge.line} imports {edge.target}, a higher layer than {source}")
    return problems


def test_the_package_keeps_its_layers():
    problems = layer_violations(PACKAGE)
    assert not problems, "\n".join(problems)


def test_the_contract_sees_upward_facade_and_unplaced_imports(tmp_path):
    package = tmp_path / "pkg"
    for folder in ("search", "tuners", "demo", "extra"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from .tuners import Config\n")
    (package / "slots.py").write_text("")
    (package / "search" / "loop.py").write_text("def run():\n    from ..demo import runner\n")
    (package / "tuners" / "config.py").write_text("from .. import Mask\nfrom ..slots import find\n")
    (package / "demo" / "runner.py").write_text("import pkg.search.loop\nfrom pkg import slots\n")
    layers = (("demo",), ("search",), ("tuners",), ("slots",))
    problems = layer_violations(package, layers)
    assert problems == [
        "pkg/extra is in no layer: add it to LAYERS (and to docs/architecture.md)",
        "pkg/search/loop.py:2 imports demo, a higher layer than search",
        "pkg/tuners/config.py:1 imports the package facade; import the defining submodule",
    ]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
