"""What every benchmark script does with its report: print it and, with ``--output``, write it to a markdown file."""

from __future__ import annotations

import os


def publish(text: str, output: str | None, append: bool = False) -> None:
    """Print ``text`` and write it to ``output`` (if given; its folder is created), replacing the file or, with
    ``append``, adding to it (a results file that keeps one section per run)."""
    print(text)
    if not output:
        return
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "a" if append else "w", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
