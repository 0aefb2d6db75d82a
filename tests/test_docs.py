"""The documentation: `mkdocs build --strict` passes offline, and the guides' code runs and prints what they show.

Conventions for the guides in ``docs/`` (listed in ``GUIDES``):

* A fenced block ```` ```python ```` runs. A guide's blocks run in order, in one namespace, in a temporary working
  directory, offline (``HF_HUB_OFFLINE=1``).
* A fenced block ```` ```python {.notest} ```` is shown but not run (it needs the Hub, a GPU, or real weights); the
  text around it says so.
* Every line a runnable block prints must appear verbatim in the guide, normally in the ```` ```text ```` block that
  follows it. That keeps every number on the page equal to what the code produces.

Run one guide and see what its blocks print: ``python tests/test_docs.py docs/quickstart.md``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = [
    "index.md",
    "quickstart.md",
    "concepts.md",
    "hub.md",
    "reference-code.md",
    "training.md",
    "search.md",
    "metrics.md",
    "reproducing.md",
]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
RUNNABLE = "python"
NOT_RUN = "python {.notest}"
OTHER_INFO = {"text", "bash", "console", "json", "yaml", "toml", "markdown"}


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, code) of every top-level fenced block, in order."""
    return [(match.group(1).strip(), match.group(2)) for match in FENCE.finditer(text)]


def run_guide(path: Path, workdir: Path) -> list[tuple[str, str]]:
    """Run the guide's runnable blocks in order in one namespace; return (code, stdout) per block."""
    namespace: dict = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    results = []
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        for index, (info, code) in enumerate(fenced_blocks(path.read_text(encoding="utf-8"))):
            if info != RUNNABLE:
                continue
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile(code, f"{path.name}[block {index}]", "exec"), namespace)  # noqa: S102
            results.append((code, buffer.getvalue()))
    finally:
        os.chdir(previous)
    return results


@pytest.fixture
def one_thread():
    """The guides' tiny models run much faster single-threaded on a busy CPU; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_mkdocs_build_strict_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index.html", "quickstart/index.html", "concepts/index.html", "api/slots/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_blocks_are_marked(guide):
    """Every fenced block says whether it runs; a typo in the marker would silently skip a block."""
    text = (DOCS / guide).read_text(encoding="utf-8")
    for info, code in fenced_blocks(text):
        assert info in {RUNNABLE, NOT_RUN} | OTHER_INFO, f"{guide}: unknown fence info {info!r} before:\n{code[:200]}"


def test_every_page_with_runnable_code_is_a_tested_guide():
    """A page with a ```python block that is not in GUIDES would show code nobody runs."""
    pages = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
    untested = [
        page
        for page in pages
        if page not in GUIDES and any(info == RUNNABLE for info, _ in fenced_blocks((DOCS / page).read_text("utf-8")))
    ]
    assert not untested, f"pages with runnable code missing from GUIDES: {untested}"


@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDES)
def test_guide_code_runs_and_prints_what_the_page_shows(guide, tmp_path, one_thread, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = DOCS / guide
    text = path.read_text(encoding="utf-8")
    results = run_guide(path, tmp_path)
    assert results, f"{guide} has no runnable block"
    for code, output in results:
        for line in output.splitlines():
            if line.strip():
                assert line.rstrip() in text, (
                    f"{guide}: the block\n{code}\nprinted a line the page does not show:\n{line}"
                )


if __name__ == "__main__":  # print what each block of a guide prints, to paste into the guide
    import tempfile

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as workdir:
            for code, output in run_guide(Path(name).resolve(), Path(workdir)):
                print("=" * 40, code.strip().splitlines()[0][:80])
                print(output, end="")
