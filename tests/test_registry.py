"""The method registry: one record per method, registration with PEFT, clashes refused, idempotent on re-import."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys

import pytest
from peft import mapping
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import peft_memcontrol
from peft_memcontrol import _registry
from peft_memcontrol._registry import base_method, base_methods, method_of, register_method, registered_methods
from peft_memcontrol.tuners import (
    METHODS,
    DiffFitConfig,
    MaskedAttentionModel,
    MaskedTunerConfig,
    MemControlConfig,
    MemControlModel,
    SVDiffConfig,
    SVDiffModel,
)


PEFT_MAPPINGS = (
    "PEFT_TYPE_TO_CONFIG_MAPPING",
    "PEFT_TYPE_TO_TUNER_MAPPING",
    "PEFT_TYPE_TO_MIXED_MODEL_MAPPING",
    "PEFT_TYPE_TO_PREFIX_MAPPING",
)


@pytest.fixture
def scratch_registry():
    """Let a test register methods of its own; the package's and PEFT's registries are restored afterwards."""
    saved_registry = dict(_registry._REGISTRY)
    saved_mappings = {name: dict(getattr(mapping, name)) for name in PEFT_MAPPINGS}
    yield
    _registry._REGISTRY.clear()
    _registry._REGISTRY.update(saved_registry)
    for name, saved in saved_mappings.items():
        getattr(mapping, name).clear()
        getattr(mapping, name).update(saved)


@dataclasses.dataclass
class ToyConfig(SVDiffConfig):
    """A method of a third package, built on SVDiff."""


class ToyModel(SVDiffModel):
    prefix = "mc_toy_"


@pytest.mark.parametrize("record", registered_methods(), ids=lambda record: record.peft_name)
def test_peft_type_member_behaves_like_a_builtin_one(record):
    member = PeftType[record.peft_name.upper()]
    assert record.peft_type is member
    assert PeftType(record.peft_name.upper()) is member
    assert member == record.peft_name.upper() and hash(member) == hash(record.peft_name.upper())
    assert member.value == record.peft_name.upper() and member.name == record.peft_name.upper()
    assert pickle.loads(pickle.dumps(member)) is member
    assert copy.deepcopy(member) is member
    assert member in list(PeftType)


@pytest.mark.parametrize("record", registered_methods(), ids=lambda record: record.peft_name)
def test_peft_knows_each_method_from_its_one_record(record):
    assert PEFT_TYPE_TO_CONFIG_MAPPING[record.peft_type] is record.config_cls
    assert PEFT_TYPE_TO_TUNER_MAPPING[record.peft_type] is record.model_cls
    assert PEFT_TYPE_TO_PREFIX_MAPPING[record.peft_type] == record.prefix == record.model_cls.prefix
    assert record.config_cls().peft_type is record.peft_type
    assert method_of(record.config_cls()) is record


def test_every_list_of_methods_comes_from_the_registry():
    assert [record.peft_name for record in registered_methods()] == [
        "mc_svdiff",
        "mc_difffit",
        "mc_masked_attention",
        "mc_memcontrol",
    ]
    assert tuple(METHODS) == tuple(base_methods()) == ("svdiff", "difffit", "masked_attention")
    assert {name: (record.config_cls, record.model_cls) for name, record in base_methods().items()} == METHODS
    assert peft_memcontrol.METHODS is METHODS
    assert base_method("masked_attention").model_cls is MaskedAttentionModel
    assert base_method("masked_attention").prefix == "mc_masked_attention_"
    assert method_of(MemControlConfig()).model_cls is MemControlModel


def test_an_unknown_method_name_lists_the_registered_ones():
    with pytest.raises(
        ValueError, match=r"Unknown method 'lora'; choose one of \('svdiff', 'difffit', 'masked_attention'\)"
    ):
        MemControlConfig(method="lora")
    with pytest.raises(TypeError, match="not a peft_memcontrol config"):
        MaskedTunerConfig()


def test_a_method_registers_itself_with_one_record(scratch_registry):
    register_method(peft_name="mc_toy", method="toy", config_cls=ToyConfig, model_cls=ToyModel)

    record = registered_methods()[-1]
    assert (record.peft_name, record.method, record.config_cls, record.model_cls, record.prefix) == (
        "mc_toy",
        "toy",
        ToyConfig,
        ToyModel,
        "mc_toy_",
    )
    assert list(base_methods())[-1] == "toy"
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MC_TOY] is ToyConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.MC_TOY] is ToyModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.MC_TOY] == "mc_toy_"
    assert ToyConfig().peft_type is PeftType.MC_TOY
    assert type(MemControlConfig(method="toy").base_config()) is ToyConfig


def test_registering_again_is_a_no_op():
    before = (len(PeftType), dict(PEFT_TYPE_TO_CONFIG_MAPPING), registered_methods())
    for record in registered_methods():
        register_method(
            peft_name=record.peft_name, method=record.method, config_cls=record.config_cls, model_cls=record.model_cls
        )
    assert (len(PeftType), dict(PEFT_TYPE_TO_CONFIG_MAPPING), registered_methods()) == before


def test_a_foreign_class_under_our_name_is_refused():
    class SVDiffConfig:  # same name, another module
        pass

    with pytest.raises(RuntimeError, match="already has a method named 'mc_svdiff'"):
        register_method(peft_name="mc_svdiff", method="svdiff", config_cls=SVDiffConfig, model_cls=ToyModel)


@pytest.mark.parametrize(
    ("method", "model_cls", "message"),
    [
        ("difffit", ToyModel, "The method name 'difffit' is taken by 'mc_difffit'"),
        ("toy", SVDiffModel, "The parameter prefix 'mc_svdiff_' is taken by PEFT method 'mc_svdiff'"),
    ],
)
def test_a_clashing_name_or_prefix_is_refused_and_leaves_no_trace(scratch_registry, method, model_cls, message):
    before = (len(PeftType), registered_methods())
    with pytest.raises(RuntimeError, match=message):
        register_method(peft_name="mc_clash", method=method, config_cls=ToyConfig, model_cls=model_cls)
    assert (len(PeftType), registered_methods()) == before
    assert "MC_CLASH" not in PEFT_TYPE_TO_CONFIG_MAPPING


def test_base_config_forwards_every_shared_field():
    config = MemControlConfig(
        method="difffit",
        mask=None,
        granularity="block",
        mask_semantics="strict",
        target_modules=["to_q"],
        exclude_modules="proj_in",
        init_weights=False,
        inference_mode=True,
        base_model_name_or_path="some/unet",
        revision="main",
        trainable_parameters=7,
        trainable_share=0.5,
    )
    base = config.base_config()
    assert type(base) is DiffFitConfig
    for shared in dataclasses.fields(MaskedTunerConfig):
        if shared.name != "peft_type":
            assert getattr(base, shared.name) == getattr(config, shared.name), shared.name
    assert base.peft_type is PeftType.MC_DIFFFIT


def test_reload_in_a_fresh_process():
    script = (
        "import importlib, peft_memcontrol, peft_memcontrol.tuners as t\n"
        "from peft import get_peft_model\n"
        "from peft.utils import PeftType\n"
        "n = len(PeftType)\n"
        "importlib.reload(t); importlib.reload(peft_memcontrol)\n"
        "assert len(PeftType) == n\n"
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from helpers.models import build_sd15_unet\n"
        "get_peft_model(build_sd15_unet(), t.SVDiffConfig())\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "ok"
    assert peft_memcontrol.__version__
