"""``memcontrol report``: several evaluation runs in one table, with their nearest-neighbour picture."""

from __future__ import annotations

import argparse
import os
import sys

from ..evaluation import RunComparisonError, combined_report, load_run, runs_picture


def run_report(args: argparse.Namespace) -> int:
    """Print (and write) the combined report and its nearest-neighbour picture; exit status 2 when the runs cannot
    share a table, or the picture asked for by ``--nearest_picture`` cannot be drawn."""
    try:
        runs = [load_run(folder) for folder in args.runs]
        report = combined_report(runs, args.allow_different_settings)
    except (RunComparisonError, FileNotFoundError, ValueError) as error:
        print(f"memcontrol report: error: {error}", file=sys.stderr)
        return 2
    picture = args.nearest_picture
    if picture is None and args.output:
        picture = os.path.splitext(args.output)[0] + "-nearest.png"
    if picture is not None:
        try:
            runs_picture(runs, picture)
        except (FileNotFoundError, ValueError, ImportError) as error:
            if args.nearest_picture is not None:
                print(f"memcontrol report: error: {error}", file=sys.stderr)
                return 2
            print(f"memcontrol report: no nearest-neighbour picture: {error}", file=sys.stderr)
        else:
            folder = os.path.dirname(os.path.abspath(args.output)) if args.output else os.getcwd()
            link = os.path.relpath(os.path.abspath(picture), folder)
            report += f"\n![the attack's generations of each run beside their nearest training images]({link})\n"
    print(report)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(report)
    return 0
