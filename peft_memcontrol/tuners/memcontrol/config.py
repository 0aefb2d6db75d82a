from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..._registry import peft_type
from ..base import MaskedTunerConfig


METHOD_NAMES = ("svdiff", "difffit", "attention")


@dataclass
class MemControlConfig(MaskedTunerConfig):
    """A searched MemControl mask applied to a base method: the form a search result takes.

    ``get_peft_model(unet, MemControlConfig(mask=...))`` adapts exactly what ``method`` with that mask adapts, and
    ``adapter_config.json`` records where the mask came from.

    Args:
        method: the base method: ``"svdiff"`` (the paper's 0.019% masks), ``"difffit"`` or ``"attention"``.
        method_options: options of the base method's config, e.g. ``{"train_norms": False}`` for SVDiff or
            ``{"attention_only": True}`` for attention tuning.
        objectives: names of the search objectives, in order (e.g. ``["noise_norm", "fid"]``).
        scores: the mask's objective values in the search (name -> value).
        learning_rate: the learning rate the search found with the mask.
        search: anything else about the search (seed, generation, layout, package version).
    """

    method: str = field(default="svdiff", metadata={"help": "'svdiff', 'difffit' or 'attention'."})
    method_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "Options of the base method."})
    objectives: list[str] | None = field(default=None, metadata={"help": "Search objectives, in order."})
    scores: dict[str, float] | None = field(default=None, metadata={"help": "Objective values of the mask."})
    learning_rate: float | None = field(default=None, metadata={"help": "Learning rate found by the search."})
    search: dict[str, Any] | None = field(default=None, metadata={"help": "Other facts about the search."})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = peft_type("mc_memcontrol")
        if self.method not in METHOD_NAMES:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {METHOD_NAMES}.")
        self.base_config()  # fail now on unknown method options

    def base_config(self) -> MaskedTunerConfig:
        """The equivalent config of the base method (same mask, granularity, semantics and options)."""
        from .. import METHODS

        config_cls = METHODS[self.method][0]
        known = set(config_cls.__dataclass_fields__)
        unknown = sorted(set(self.method_options) - known)
        if unknown:
            raise ValueError(f"Unknown option(s) {unknown} for method {self.method!r}.")
        return config_cls(
            mask=self.mask,
            granularity=self.granularity,
            mask_semantics=self.mask_semantics,
            target_modules=self.target_modules,
            exclude_modules=self.exclude_modules,
            init_weights=self.init_weights,
            inference_mode=self.inference_mode,
            **self.method_options,
        )
