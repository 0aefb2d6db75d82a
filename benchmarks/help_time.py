"""Wall time of ``--help``: ``memcontrol search --help`` and ``examples/train_text_to_image_memcontrol.py --help``.

Each command runs ``--repeats`` times in a fresh interpreter (what a user waits for); the table gives the median and
the slowest run, and whether the command imported torch (``python -X importtime``, in a separate run). ``--repo``
measures another checkout of the project (e.g. ``git archive HEAD | tar -x -C /tmp/before``), to compare before and
after a change. Usage:

    python benchmarks/help_time.py --output benchmarks/results/help_time.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

from _results import publish


COMMANDS = {
    "memcontrol search --help": ["-m", "peft_memcontrol.cli", "search", "--help"],
    "train_text_to_image_memcontrol.py --help": [
        os.path.join("examples", "train_text_to_image_memcontrol.py"),
        "--help",
    ],
}


def run(repo: str, arguments: list[str], importtime: bool = False) -> subprocess.CompletedProcess:
    """One ``python <arguments>`` in ``repo``, with ``repo`` first on the import path."""
    env = dict(os.environ, PYTHONPATH=repo, HF_HUB_OFFLINE="1")
    flags = ["-X", "importtime"] if importtime else []
    proc = subprocess.run([sys.executable, *flags, *arguments], cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or "usage:" not in proc.stdout:
        raise RuntimeError(f"{arguments} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def imports_torch(repo: str, arguments: list[str]) -> bool:
    """Whether the command imports the ``torch`` package (its top-level module in ``-X importtime``'s list)."""
    stderr = run(repo, arguments, importtime=True).stderr
    return any(
        line.startswith("import time:") and line.split("|")[-1].strip() == "torch" for line in stderr.splitlines()
    )


def measure(repo: str, repeats: int) -> list[dict]:
    """Median and slowest seconds of each command, and whether it imports torch."""
    rows = []
    for name, arguments in COMMANDS.items():
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(repo, arguments)
            seconds.append(time.perf_counter() - start)
        rows.append(
            {
                "command": name,
                "median": statistics.median(seconds),
                "max": max(seconds),
                "torch": imports_torch(repo, arguments),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each command.")
    parser.add_argument("--label", default="this checkout", help="Name of the measured checkout in the table.")
    parser.add_argument("--output", default=None, help="Append the table to this markdown file (else print).")
    args = parser.parse_args()
    rows = measure(os.path.abspath(args.repo), args.repeats)
    lines = [
        f"## {args.label}",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at the start",
        f"- command: `python benchmarks/help_time.py --repeats {args.repeats} --label '{args.label}'`",
        "",
        "| command | median s | slowest s | imports torch |",
        "|---|---:|---:|---|",
        *(
            f"| `{r['command']}` | {r['median']:.2f} | {r['max']:.2f} | {'yes' if r['torch'] else 'no'} |"
            for r in rows
        ),
        "",
    ]
    text = "\n".join(lines)
    publish(text, args.output, append=True)


if __name__ == "__main__":
    main()
