"""The ``memcontrol`` command: ``search``, ``demo`` and ``report`` (their flags: `peft_memcontrol.cli.arguments`).

    memcontrol search --train_data_dir faces --test_data_dir faces-test --objectives copy_similarity kid \\
        --population_size 20 --generations 10 --max_train_steps 100 --output_dir search-out

Without ``--train_data_dir`` it searches on the package's tiny pipeline and the LFW demo set (offline, CPU); with
``--synthetic 10`` it searches a closed-form toy problem instead of training (to try the tool and its outputs).

This module and the flags import no torch: a subcommand's handler (``cli/search.py``, ``demo.py``, ``report.py``)
is imported once its flags are parsed and checked, so that ``--help`` and argument errors take a moment, not the
seconds that torch, diffusers and PEFT take to import. The handlers are also importable from here
(``from peft_memcontrol.cli import run_search``), which imports them. ``cli/train.py`` is not a subcommand: it is
the training of ``examples/train_text_to_image_memcontrol.py``, loaded the same way once that script's flags are
checked.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .arguments import SUBCOMMANDS


if TYPE_CHECKING:
    from .demo import run_demo
    from .report import run_report
    from .search import run_search, search_learning_rate_bounds


__all__ = ["build_parser", "main", "run_demo", "run_report", "run_search", "search_learning_rate_bounds"]

__getattr__, __dir__ = lazy_exports(
    __name__, ("run_demo", "run_report", "run_search", "search_learning_rate_bounds"), ("demo", "report", "search")
)


def build_parser() -> argparse.ArgumentParser:
    """The ``memcontrol`` parser, with a subparser from each function of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(prog="memcontrol", description="MemControl: mask search for PEFT fine-tuning.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``memcontrol`` console script."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    return args.handler(args)
