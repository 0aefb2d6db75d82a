"""Register this package's methods with Hugging Face PEFT.

PEFT only accepts methods whose name is a member of its ``PeftType`` enum and has no plugin mechanism. We add our
members to the enum at import time (without editing PEFT's files) and then call PEFT's own
``register_peft_method``. Everything here is idempotent: importing, re-importing or reloading the package registers
each method exactly once.
"""

from __future__ import annotations

import sys

from peft.utils import PeftType, register_peft_method


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


def register_method(name: str, config_cls: type, model_cls: type, prefix: str) -> PeftType:
    """Register one method with PEFT under ``name`` (lower case), doing nothing if it is already registered."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = _add_peft_type(name.upper())
    registered = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if registered is None:
        register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
    elif registered.__qualname__ != config_cls.__qualname__ or registered.__module__ != config_cls.__module__:
        raise RuntimeError(
            f"PEFT already has a method named {name!r} ({registered.__module__}.{registered.__qualname__}); "
            f"cannot register {config_cls.__module__}.{config_cls.__qualname__} under the same name."
        )
    else:
        # A reload of this package created new classes with the same names: point PEFT at the new ones.
        from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
        PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix
    return peft_type


def peft_type(name: str) -> PeftType:
    """The ``PeftType`` member for one of our method names, creating it if needed (configs call this)."""
    return _add_peft_type(name.upper())
