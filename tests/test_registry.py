"""Registration with PEFT: enum members that behave like PEFT's own, idempotent on re-import."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

import pytest
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import peft_memcontrol
from peft_memcontrol._registry import register_method
from peft_memcontrol.tuners import PEFT_METHODS


@pytest.mark.parametrize("name", sorted(PEFT_METHODS))
def test_peft_type_member_behaves_like_a_builtin_one(name):
    member = PeftType[name.upper()]
    assert PeftType(name.upper()) is member
    assert member == name.upper() and hash(member) == hash(name.upper())
    assert member.value == name.upper() and member.name == name.upper()
    assert pickle.loads(pickle.dumps(member)) is member
    assert copy.deepcopy(member) is member
    assert member in list(PeftType)
    config_cls, model_cls = PEFT_METHODS[name]
    assert PEFT_TYPE_TO_CONFIG_MAPPING[member] is config_cls
    assert PEFT_TYPE_TO_TUNER_MAPPING[member] is model_cls
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == model_cls.prefix
    assert config_cls().peft_type is member


def test_registering_again_is_a_no_op():
    before = (len(PeftType), dict(PEFT_TYPE_TO_CONFIG_MAPPING))
    for name, (config_cls, model_cls) in PEFT_METHODS.items():
        register_method(name, config_cls, model_cls, prefix=model_cls.prefix)
    assert (len(PeftType), dict(PEFT_TYPE_TO_CONFIG_MAPPING)) == before


def test_a_foreign_class_under_our_name_is_refused():
    class SVDiffConfig:  # same name, another module
        pass

    with pytest.raises(RuntimeError, match="already has a method named 'mc_svdiff'"):
        register_method("mc_svdiff", SVDiffConfig, object, prefix="x_")


def test_reload_in_a_fresh_process():
    script = (
        "import importlib, peft_memcontrol, peft_memcontrol.tuners as t\n"
        "from peft import get_peft_model\n"
        "from peft.utils import PeftType\n"
        "n = len(PeftType)\n"
        "importlib.reload(t); importlib.reload(peft_memcontrol)\n"
        "assert len(PeftType) == n\n"
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from conftest import build_sd15_unet\n"
        "get_peft_model(build_sd15_unet(), t.SVDiffConfig())\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "ok"
    assert peft_memcontrol.__version__
