"""The registry of this package's methods, and their registration with Hugging Face PEFT.

Each method package registers itself when it is imported, as PEFT's own methods do with ``register_peft_method``
(``peft/tuners/vera/__init__.py``). Its `RegisteredMethod` record is the one place where a method is named: PEFT
name and type, user-facing name, config class, tuner class and parameter prefix. Every list of methods, names,
choices and classes in the package derives from `registered_methods` and `base_methods`.

PEFT only accepts methods whose name is a member of its ``PeftType`` enum and has no plugin mechanism. We add our
members to the enum at import time (without editing PEFT's files) and then call PEFT's own
``register_peft_method``. Registration is idempotent: importing, re-importing or reloading the package registers
each method exactly once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from peft.config import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType, register_peft_method


@dataclass(frozen=True)
class RegisteredMethod:
    """One registered method of this package.

    Attributes:
        peft_name: the lower-case name PEFT knows the method by (``"mc_svdiff"``); `peft_type` is its upper case.
        method: the user-facing name, passed as ``MemControlConfig(method=...)`` and as the launch script's
            ``--method`` (``"svdiff"``); ``None`` for a method that no `MemControlConfig` can name as its base
            (MemControl itself).
        config_cls: the method's ``PeftConfig`` subclass.
        model_cls: the method's tuner (``BaseTuner`` subclass), which ``get_peft_model`` applies.
        prefix: the prefix of the method's adapter parameter names, the tuner's ``prefix``.
    """

    peft_name: str
    method: str | None
    config_cls: type[PeftConfig]
    model_cls: type
    prefix: str

    @property
    def peft_type(self) -> PeftType:
        """The ``PeftType`` member of the method (configs of the method carry it as ``peft_type``)."""
        return PeftType[self.peft_name.upper()]


_REGISTRY: dict[str, RegisteredMethod] = {}
"""PEFT name -> record, in registration order (the order of `base_methods`)."""


def _add_peft_type(name: str) -> PeftType:
    """Return ``PeftType[name]``, creating the enum member if PEFT does not have it yet.

    ``PeftType`` is a ``str`` enum, so a member is a ``str`` whose value is its own name. This relies on CPython's
    enum internals; ``tests/test_registry.py`` checks lookup, equality, hashing, pickling and copying.
    """
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    if sys.version_info >= (3, 11):
        member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


def _same_class(first: type, second: type) -> bool:
    """Whether two classes are one class, or its re-creation by a reload (same module and qualified name)."""
    return (first.__module__, first.__qualname__) == (second.__module__, second.__qualname__)


def _refuse_clashes(record: RegisteredMethod) -> None:
    """Raise if ``record`` would take a PEFT name, user-facing name or prefix that another method holds.

    ``PeftType`` members are ``str``s equal to their upper-case names, so PEFT's mappings are looked up by name here,
    before a refused method could add a member to the enum.
    """
    type_name = record.peft_name.upper()
    registered = PEFT_TYPE_TO_CONFIG_MAPPING.get(type_name)
    if registered is not None and not _same_class(registered, record.config_cls):
        raise RuntimeError(
            f"PEFT already has a method named {record.peft_name!r} ({registered.__module__}."
            f"{registered.__qualname__}); cannot register {record.config_cls.__module__}."
            f"{record.config_cls.__qualname__} under the same name."
        )
    for other in _REGISTRY.values():
        if other.peft_name != record.peft_name and record.method is not None and other.method == record.method:
            raise RuntimeError(
                f"The method name {record.method!r} is taken by {other.peft_name!r}; cannot give it to "
                f"{record.peft_name!r} too."
            )
    for other_type, other_prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if other_type != type_name and other_prefix == record.prefix:
            raise RuntimeError(
                f"The parameter prefix {record.prefix!r} is taken by PEFT method {other_type.value.lower()!r}; "
                f"cannot give it to {record.peft_name!r} too."
            )


def register_method(*, peft_name: str, method: str | None, config_cls: type[PeftConfig], model_cls: type) -> None:
    """Record a method and register it with PEFT; registering the same classes again changes nothing.

    Args:
        peft_name: the lower-case PEFT name (``"mc_svdiff"``).
        method: the user-facing name (``"svdiff"``), or ``None`` (see `RegisteredMethod`).
        config_cls: the method's config class.
        model_cls: the method's tuner class; its ``prefix`` is the method's parameter prefix.

    Raises:
        RuntimeError: if another method holds the PEFT name, the user-facing name or the prefix.
    """
    record = RegisteredMethod(peft_name, method, config_cls, model_cls, model_cls.prefix)
    _refuse_clashes(record)
    _add_peft_type(peft_name.upper())
    if record.peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        # Registered before: again (a no-op), or by a reload that re-created the classes; point PEFT at these.
        PEFT_TYPE_TO_CONFIG_MAPPING[record.peft_type] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[record.peft_type] = model_cls
        PEFT_TYPE_TO_PREFIX_MAPPING[record.peft_type] = record.prefix
    else:
        register_peft_method(name=peft_name, config_cls=config_cls, model_cls=model_cls, prefix=record.prefix)
    _REGISTRY[peft_name] = record


def registered_methods() -> tuple[RegisteredMethod, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY.values())


def base_methods() -> dict[str, RegisteredMethod]:
    """User-facing name -> record of the methods a `MemControlConfig` can apply, in registration order."""
    return {record.method: record for record in _REGISTRY.values() if record.method is not None}


def base_method(name: str) -> RegisteredMethod:
    """The record of the base method called ``name`` (``"svdiff"``).

    Raises:
        ValueError: naming the known methods, if none is called ``name``.
    """
    methods = base_methods()
    if name not in methods:
        raise ValueError(f"Unknown method {name!r}; choose one of {tuple(methods)}.")
    return methods[name]


def method_of(config: PeftConfig) -> RegisteredMethod:
    """The record of the method that ``config`` (an instance of a registered config class or a subclass) configures.

    Raises:
        TypeError: if ``config``'s class is no registered config class nor a subclass of one.
    """
    for cls in type(config).__mro__:
        for record in _REGISTRY.values():
            if record.config_cls is cls:
                return record
    raise TypeError(f"{type(config).__name__} is not a peft_memcontrol config.")
