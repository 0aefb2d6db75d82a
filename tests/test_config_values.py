"""Boolean fields of the adapter configs must be real booleans (issue 12, item 4).

A hand-edited ``adapter_config.json`` with ``"train_norms": "false"`` used to load as on (``bool("false")`` is true):
every field typed ``bool`` now refuses anything but ``true``/``false``, through the constructors and through PEFT's
loaders.
"""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from peft import PeftConfig, PeftModel, get_peft_model

import peft_memcontrol as pm
from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig

from helpers.models import build_sd15_unet


CONFIG_CLASSES = [SVDiffConfig, DiffFitConfig, MaskedAttentionConfig, MemControlConfig]
#: Every (config class, field) typed bool, listed by hand so that a new boolean field is noticed here.
BOOLEAN_FIELDS = [
    (config_cls, name)
    for config_cls in CONFIG_CLASSES
    for name in ["inference_mode", "init_weights"]
    + {SVDiffConfig: ["train_norms"], MaskedAttentionConfig: ["attention_only"]}.get(config_cls, [])
]
NOT_BOOLEANS = ["false", "true", "False", 0, 1, None, 0.0]


def test_the_listed_fields_are_the_bool_fields():
    typed_bool = {(cls, f.name) for cls in CONFIG_CLASSES for f in fields(cls) if f.type in ("bool", bool)}
    assert typed_bool == set(BOOLEAN_FIELDS)


@pytest.mark.parametrize(("config_cls", "name"), BOOLEAN_FIELDS, ids=lambda x: getattr(x, "__name__", x))
@pytest.mark.parametrize("value", NOT_BOOLEANS, ids=repr)
def test_constructors_refuse_a_non_bool(config_cls, name, value):
    with pytest.raises(
        ValueError, match=rf"{config_cls.__name__}\.{name} must be a bool, got {value!r}.*true or false"
    ):
        config_cls(**{name: value})


@pytest.mark.parametrize(("config_cls", "name"), BOOLEAN_FIELDS, ids=lambda x: getattr(x, "__name__", x))
@pytest.mark.parametrize("value", [True, False])
def test_constructors_keep_a_bool(config_cls, name, value):
    assert getattr(config_cls(**{name: value}), name) is value


@pytest.mark.parametrize(("method", "option"), [("svdiff", "train_norms"), ("masked_attention", "attention_only")])
def test_memcontrol_method_options_refuse_a_non_bool(method, option):
    with pytest.raises(ValueError, match=rf"\.{option} must be a bool, got 'false'"):
        MemControlConfig(method=method, method_options={option: "false"})


def _saved_folder(tmp_path, config):
    folder = tmp_path / "adapter"
    get_peft_model(build_sd15_unet(), config).save_pretrained(folder)
    return folder


def _edit(folder, **values):
    path = folder / "adapter_config.json"
    saved = json.loads(path.read_text())
    saved.update(values)
    path.write_text(json.dumps(saved))


@pytest.mark.parametrize(
    ("config", "name"),
    [
        (SVDiffConfig(), "train_norms"),
        (MaskedAttentionConfig(), "attention_only"),
        (DiffFitConfig(), "init_weights"),
        (MemControlConfig(method="difffit"), "init_weights"),
    ],
    ids=lambda x: x if isinstance(x, str) else type(x).__name__,
)
def test_hand_edited_adapter_config_is_refused(tmp_path, config, name):
    folder = _saved_folder(tmp_path, config)
    assert PeftConfig.from_pretrained(folder).to_dict()[name] is getattr(config, name)  # the unedited folder loads
    _edit(folder, **{name: "false"})
    message = rf"{type(config).__name__}\.{name} must be a bool, got 'false' \(str\)"
    with pytest.raises(ValueError, match=message):
        PeftConfig.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(build_sd15_unet(), folder)


def test_hand_edited_memcontrol_method_option_is_refused(tmp_path):
    folder = _saved_folder(tmp_path, MemControlConfig(method="svdiff", method_options={"train_norms": False}))
    _edit(folder, method_options={"train_norms": "false"})
    with pytest.raises(ValueError, match=r"SVDiffConfig\.train_norms must be a bool, got 'false'"):
        PeftConfig.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"SVDiffConfig\.train_norms must be a bool, got 'false'"):
        pm.load_adapter(build_sd15_unet(), folder)
