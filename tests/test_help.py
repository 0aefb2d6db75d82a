"""The help users read: ``memcontrol search --help`` and the launch script's, every flag explained, choices and
defaults shown; ``--restart`` (which refused to continue) renamed ``--no_resume`` and kept as a deprecated alias.

``--help`` should also be fast, which needs the argument parsers to load without torch (not yet: every
``peft_memcontrol`` import registers the PEFT methods, which imports torch); how fast is measured in
``benchmarks/help_time.py``, not here.
"""

from __future__ import annotations

import argparse
import os
import re

import pytest

from peft_memcontrol.cli import build_parser
from peft_memcontrol.metrics.features import DEFAULT_FEATURE, TRANSFORMERS_ALIASES
from peft_memcontrol.search.objectives import BUILTIN_OBJECTIVES


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def search_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["search"]


def test_every_search_flag_has_help_and_shows_its_default():
    parser = search_parser()
    flags = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    assert len(flags) >= 49
    missing = [action.option_strings[0] for action in flags if not action.help or action.help == argparse.SUPPRESS]
    assert missing == []
    text = parser.format_help()
    entry = re.search(r"\n  --max_train_steps MAX_TRAIN_STEPS\n(.*?)\n  --", text, re.DOTALL)
    assert "(default: 100)" in entry[1]
    assert "``" not in text and parser.description.startswith("Search MemControl masks")


def test_objectives_and_features_list_their_choices():
    parser = search_parser()
    objectives = next(action for action in parser._actions if action.dest == "objectives")
    assert tuple(objectives.choices) == tuple(BUILTIN_OBJECTIVES)
    assert all(name in objectives.help for name in BUILTIN_OBJECTIVES)
    with pytest.raises(SystemExit):
        parser.parse_args(["--objectives", "noise_norm", "fidd"])
    feature = next(action for action in parser._actions if action.dest == "feature")
    assert all(name in feature.help for name in (DEFAULT_FEATURE, "inception", *TRANSFORMERS_ALIASES))


def test_restart_is_a_deprecated_alias_of_no_resume():
    parser = search_parser()
    assert parser.parse_args([]).no_resume is False
    assert parser.parse_args(["--no_resume"]).no_resume is True
    with pytest.warns(FutureWarning, match="--restart is deprecated.*use --no_resume"):
        assert parser.parse_args(["--restart"]).no_resume is True
