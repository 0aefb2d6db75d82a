from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from numbers import Real
from typing import Any

from ..._registry import base_method
from ..base import MaskedTunerConfig


@dataclass
class MemControlConfig(MaskedTunerConfig):
    """A searched MemControl mask applied to a base method: the form a search result takes.

    ``get_peft_model(unet, MemControlConfig(mask=...))`` adapts exactly what ``method`` with that mask adapts, and
    ``adapter_config.json`` records where the mask came from.

    Args:
        method: the base method: ``"svdiff"`` (the paper's 0.019% masks), ``"difffit"`` or ``"masked_attention"``.
        method_options: options of the base method's config, e.g. ``{"train_norms": False}`` for SVDiff or
            ``{"attention_only": True}`` for masked attention tuning.
        objectives: names of the search objectives, in order (e.g. ``["noise_norm", "fid"]``).
        scores: the mask's objective values in the search (name -> value).
        learning_rate: the learning rate the search found with the mask.
        search: anything else about the search (seed, generation, layout, package version).
    """

    method: str = field(default="svdiff", metadata={"help": "'svdiff', 'difffit' or 'masked_attention'."})
    method_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "Options of the base method."})
    objectives: list[str] | None = field(default=None, metadata={"help": "Search objectives, in order."})
    scores: dict[str, float] | None = field(default=None, metadata={"help": "Objective values of the mask."})
    learning_rate: float | None = field(default=None, metadata={"help": "Learning rate found by the search."})
    search: dict[str, Any] | None = field(default=None, metadata={"help": "Other facts about the search."})

    def __post_init__(self):
        super().__post_init__()
        self._check_learning_rate()
        self.base_config()  # fail now on an unknown method or unknown method options

    def _check_learning_rate(self) -> None:
        """Refuse a learning rate that training cannot use: NaN, infinite, zero or negative, or not a number (a JSON
        string such as ``"1e-4"``); such values would also be written as non-JSON ``NaN``/``Infinity``."""
        value = self.learning_rate
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"MemControlConfig.learning_rate must be a finite number > 0 (or None), got {value!r}; write it as a "
                "JSON number such as 0.0001, or leave it out to use the trainer's learning rate."
            )
        self.learning_rate = float(value)

    def base_config(self) -> MaskedTunerConfig:
        """The equivalent config of the base method: every field the methods share, and ``method_options``."""
        config_cls = base_method(self.method).config_cls
        unknown = sorted(set(self.method_options) - set(config_cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown option(s) {unknown} for method {self.method!r}.")
        shared = {
            shared_field.name: getattr(self, shared_field.name)
            for shared_field in fields(MaskedTunerConfig)
            if shared_field.name != "peft_type"  # the base config's class sets its own
        }
        return config_cls(**shared, **self.method_options)
