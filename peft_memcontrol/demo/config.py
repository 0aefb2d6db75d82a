"""Settings of ``memcontrol demo``: one dataclass, with the ``default`` and ``quick`` presets.

The default is sized for a 2-core CPU (under 10 minutes) and chosen so that full fine-tuning measurably memorizes: a
few faces are duplicated many times in a small training set and trained on for many steps, and the extraction attack
draws a few seeded generations per memorized prompt. ``quick`` (under 3 minutes) keeps the same setting at a smaller
budget; on a GPU, raise the budgets (``--max_train_steps``, ``--population_size``, ...) instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


#: Learning rates per method: full fine-tuning and attention tuning move big weights, SVDiff and DiffFit small
#: vectors that need a larger rate (the usual settings of the methods, scaled to the tiny model).
DEFAULT_LEARNING_RATES: dict[str, float] = {
    "full": 1e-3,
    "svdiff": 1e-2,
    "difffit": 1e-2,
    "attention": 1e-3,
}


@dataclass
class DemoConfig:
    """Everything a demo run depends on. Same config and machine: same table (the timings aside).

    Data (both sets built from images shipped in the scikit-image / scikit-learn wheels):
        num_test: held-out faces (FID's real images and prompts).
        num_memorization: faces duplicated in the training set (the memorization subset, the attack's prompts).
        memorization_repeats: copies of each of them in the training set.
        num_transfer_train, num_transfer_test: digits of the transfer domain (plus the same duplicated subset size).

    Fine-tuning (every model through `MemControlTrainer`):
        max_train_steps, train_batch_size: steps and batch of every fine-tuning on the full demo set.
        learning_rates: per base method (``full``, ``svdiff``, ``difffit``, ``attention``).
        caption_dropout_probability: as in the trainer.

    Evaluation (every model the same way, through `peft_memcontrol.metrics`):
        num_generations: seeded generations per memorized prompt for the extraction attack, AMD and replication.
        num_inference_steps, guidance_scale: DDIM sampling.
        extraction_threshold, min_group_size: the attack's tiled-L2 threshold and group size.
        noise_norm_generations: starting noises per prompt of the noise-norm score.

    Search (`MaskSearcher` with `InnerLoop`, NSGA-II over the SVDiff mask bits and the learning rate):
        population_size, generations: NSGA-II sizes.
        search_train_steps: K, inner-loop steps per candidate; search_fid_images: FID images per candidate.
        proxy_num_memorization, proxy_repeats, proxy_fraction: the proxy set.
        search_method: the base method whose mask is searched.
    """

    preset: str = "default"
    seed: int = 0
    device: str | None = None
    # data
    num_test: int = 16
    num_memorization: int = 4
    memorization_repeats: int = 25
    num_transfer_train: int = 60
    num_transfer_test: int = 16
    # fine-tuning
    max_train_steps: int = 150
    train_batch_size: int = 8
    learning_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LEARNING_RATES))
    caption_dropout_probability: float = 0.1
    # evaluation
    num_generations: int = 4
    num_inference_steps: int = 10
    guidance_scale: float = 4.0
    extraction_threshold: float = 0.15
    min_group_size: int = 3
    noise_norm_generations: int = 2
    feature: str = "efficientnet-lite0"
    # search
    search_method: str = "svdiff"
    population_size: int = 6
    generations: int = 1
    search_train_steps: int = 30
    search_fid_images: int = 8
    proxy_num_memorization: int = 4
    proxy_repeats: int = 10
    proxy_fraction: float = 0.1
    # output
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (written to ``config.json`` in the report folder)."""
        return asdict(self)

    @classmethod
    def preset_config(cls, name: str = "default", **overrides: Any) -> DemoConfig:
        """The ``default`` or ``quick`` preset, with ``overrides`` applied (``None`` values are ignored)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        config = replace(cls(), preset=name, **PRESETS[name])
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})


#: Preset name -> fields that differ from the dataclass defaults (``default`` is the dataclass itself).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {
        "num_test": 8,
        "num_transfer_train": 24,
        "num_transfer_test": 8,
        "max_train_steps": 60,
        "population_size": 4,
        "generations": 0,
        "search_train_steps": 10,
        "search_fid_images": 4,
        "proxy_repeats": 5,
    },
}
