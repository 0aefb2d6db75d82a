"""Settings of ``memcontrol demo``: one dataclass, with the ``default`` and ``quick`` presets.

The default is sized for a 2-core CPU (about 15 minutes) and chosen so that full fine-tuning measurably memorizes: a
few faces are duplicated many times in a small training set and trained on for many steps, and the extraction attack
draws a few seeded generations per memorized prompt. ``quick`` keeps the same setting at a smaller
budget (about 4 minutes); on a GPU, raise the budgets (``--max_train_steps``, ``--population_size``, ...) instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..evaluation import EvaluationSettings


#: Learning rates per method: full fine-tuning and masked attention tuning move big weights, SVDiff and DiffFit small
#: vectors that need a larger rate (the usual settings of the methods, scaled to the tiny model).
DEFAULT_LEARNING_RATES: dict[str, float] = {
    "full": 1e-3,
    "svdiff": 1e-2,
    "difffit": 1e-2,
    "masked_attention": 1e-3,
}


#: Extraction-attack thresholds (tiled L2, RMS per tile, max over a 4 x 4 grid) per domain: above the VAE's own
#: reconstruction error of the domain's images (faces: 0.10-0.16; digits: 0.02-0.04), near the distance between
#: distinct images (faces: 1% quantile 0.27; digits: 1% quantile 0.23, median 0.63). A prompt is counted only when
#: at least ``min_group_size`` of its generations are also that close to each other.
EXTRACTION_THRESHOLDS: dict[str, float] = {"digits": 0.3, "faces": 0.25}


@dataclass
class DemoConfig:
    """Everything a demo run depends on. Same config and machine: same table (the timings aside).

    Data (both sets built from images shipped in the scikit-image / scikit-learn wheels):
        domain: where the baselines train and the mask is searched (``"digits"`` or ``"faces"``).
        transfer_domain: where the searched mask is transferred, unchanged.
        num_train: distinct training images (the memorization subset included; digits only, faces use all 100 -
            ``num_test``).
        num_test: held-out images (FID's and KID's real images and prompts).
        num_calibration: further held-out digits, never trained on, that only calibrate the copy threshold (with
            the ``num_test`` ones): a conformal threshold at a 1% false-positive rate needs 99 of them, and more
            held-out images make the stated rate closer to the target. The faces have none to spare (100 in all).
        num_memorization: images duplicated in the training set (the memorization subset, the attack's prompts).
        memorization_repeats: copies of each of them in the training set.

    Fine-tuning (every model through `MemControlTrainer`):
        max_train_steps, train_batch_size: steps and batch of every fine-tuning on the full demo set.
        learning_rates: per base method (``full``, ``svdiff``, ``difffit``, ``attention``).
        caption_dropout_probability: as in the trainer.

    Evaluation (every model the same way, through `peft_memcontrol.evaluation`; see `evaluation_settings`):
        num_generations: seeded generations per memorized prompt for the extraction attack, AMD and replication.
        num_inference_steps, guidance_scale: DDIM sampling.
        extraction_thresholds, min_group_size: the attack's tiled-L2 threshold per domain, and its group size.
        noise_norm_generations: starting noises per prompt of the noise-norm score.

    Execution:
        num_workers: processes that fine-tune and score models (and run the search's inner loops) side by side, one
            thread each; 1 runs everything in this process. Results do not depend on it.

    Search (`MaskSearcher` with `InnerLoop`, NSGA-II over the SVDiff mask bits and the learning rate):
        population_size, generations: NSGA-II sizes.
        search_train_steps: K, inner-loop steps per candidate; search_fid_images: FID images per candidate.
        proxy_num_memorization, proxy_repeats, proxy_fraction: the proxy set.
        search_method: the base method whose mask is searched.
        search_objectives: the inner loop's objectives (memorization first, then quality). ``copy_similarity`` and
            not the paper's ``noise_norm``: the noise norm falls when a model memorizes whatever the prompt (see
            docs/search.md), and an earlier demo found it ranking models opposite to the extraction attack. KID and
            not FID: on the search's 8 images FID is mostly bias.
        fidelity_front, fidelity_other: front and non-front candidates fully fine-tuned after the search to measure
            how well the inner loop ranks masks (`peft_memcontrol.search.fidelity`).
    """

    preset: str = "default"
    seed: int = 0
    device: str | None = None
    # data
    domain: str = "digits"
    transfer_domain: str = "faces"
    num_train: int = 15
    num_test: int = 16
    num_calibration: int = 40
    num_memorization: int = 3
    memorization_repeats: int = 30
    # fine-tuning
    max_train_steps: int = 200
    train_batch_size: int = 8
    learning_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LEARNING_RATES))
    caption_dropout_probability: float = 0.1
    # evaluation
    num_generations: int = 4
    num_inference_steps: int = 10
    guidance_scale: float = 4.0
    extraction_thresholds: dict[str, float] = field(default_factory=lambda: dict(EXTRACTION_THRESHOLDS))
    min_group_size: int = 2
    noise_norm_generations: int = 2
    feature: str = "efficientnet-lite0"
    # search
    search_method: str = "svdiff"
    search_objectives: tuple[str, ...] = ("copy_similarity", "kid")
    fidelity_front: int = 3
    fidelity_other: int = 2
    population_size: int = 4
    generations: int = 1
    search_train_steps: int = 20
    search_fid_images: int = 8
    proxy_num_memorization: int = 3
    proxy_repeats: int = 10
    proxy_fraction: float = 0.1
    # execution
    num_workers: int = 2
    progress: bool = True

    def evaluation_settings(self, domain: str) -> EvaluationSettings:
        """How every model of ``domain`` is scored (its extraction threshold comes from ``extraction_thresholds``)."""
        return EvaluationSettings(
            num_generations=self.num_generations,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            extraction_threshold=self.extraction_thresholds[domain],
            min_group_size=self.min_group_size,
            noise_norm_generations=self.noise_norm_generations,
            feature=self.feature,
            seed=self.seed,
            num_fid_images=self.num_test,
        )

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
        "max_train_steps": 30,
        "population_size": 4,
        "generations": 0,
        "search_train_steps": 6,
        "search_fid_images": 4,
        "proxy_repeats": 5,
        "fidelity_front": 2,
        "fidelity_other": 1,
    },
}
