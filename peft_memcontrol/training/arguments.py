"""Command-line flags from a config dataclass's fields, so that a script states each setting once.

As with ``transformers.HfArgumentParser``, a field's ``metadata`` holds the keyword arguments of its
``add_argument`` (``help``, and ``choices`` or ``type`` where the annotation does not say enough). The flag is
``--<field name>`` with the field's default; ``int``, ``float`` and ``str`` fields (optional or not) parse as such,
boolean fields become switches.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any


def add_config_arguments(
    parser: Any,
    config_cls: type,
    exclude: Collection[str] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Add to ``parser`` (an ``ArgumentParser`` or one of its argument groups) a ``--<name>`` flag for every init
    field of ``config_cls`` except ``exclude``.

    ``overrides`` maps a field name to ``add_argument`` keywords that replace the field's (e.g. a script's own
    default).
    """
    hints = typing.get_type_hints(config_cls)
    overrides = overrides or {}
    for field in dataclasses.fields(config_cls):
        if not field.init or field.name in exclude:
            continue
        kwargs = {
            **_kwargs_from_annotation(field, hints[field.name]),
            **field.metadata,
            **overrides.get(field.name, {}),
        }
        parser.add_argument(f"--{field.name}", **kwargs)


def config_from_args(config_cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """Build ``config_cls`` from the parsed flags of its fields; ``values`` sets the fields without a flag."""
    flags = {
        field.name: getattr(args, field.name) for field in dataclasses.fields(config_cls) if hasattr(args, field.name)
    }
    return config_cls(**{**flags, **values})


def _kwargs_from_annotation(field: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    """``add_argument`` keywords that the field's type and default imply."""
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default
    kinds = [kind for kind in _union_members(annotation) if kind is not type(None)]
    if kinds == [bool]:
        return {"action": "store_true", "default": default}
    if len(kinds) == 1 and kinds[0] in (int, float, str):
        return {"type": kinds[0], "default": default}
    if "type" not in field.metadata:
        raise TypeError(f"Field {field.name!r} ({annotation}) needs a 'type' in its metadata to become a flag.")
    return {"default": default}


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)
