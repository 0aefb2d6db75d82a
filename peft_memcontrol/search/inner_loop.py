"""The inner loop of MemControl: train one candidate mask on the proxy set for K steps, then score it.

Training is the project's one trainer (`peft_memcontrol.training.MemControlTrainer`); scores come from the
objectives (`peft_memcontrol.search.objectives`), which call the metrics package. The base model is loaded once per
worker process and kept: each candidate's adapter is injected into it, trained, scored and unloaded again, so the
base weights (and with them the SVD cache of `peft_memcontrol.svd`, keyed by weight) serve every candidate.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .genome import Candidate, GenomeSpace
from .objectives import EvaluationContext, Objective, resolve_objectives


@dataclass
class _Loaded:
    """A worker's base model and data, loaded once."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    proxy: Any
    test_dataset: Any


_WORKER_STATE: dict[tuple, _Loaded] = {}
_FEATURE_EXTRACTORS: dict[str, Any] = {}


class InnerLoop:
    """A picklable evaluator ``inner_loop(candidate, budget) -> {objective: value}`` that trains and scores.

    Args:
        train_data_dir: image folder (``metadata.jsonl``) of the training data; the proxy set is built from it.
        objectives: two (or one or three) objectives: built-in names (`BUILTIN_OBJECTIVES`) or callables of an
            `EvaluationContext`.
        pretrained_model_name_or_path: a diffusers text-to-image folder or Hub id; ``None``: the package's tiny
            pipeline.
        test_data_dir: held-out image folder (for ``fid`` and ``val_loss``).
        max_train_steps: K, the training steps of a full-budget evaluation (a budget ``b`` trains ``round(b K)``).
        train_batch_size, learning_rate, mixed_precision, caption_dropout_probability, seed: as in the trainer;
            ``learning_rate`` is used only when the genome has no learning-rate gene.
        resolution: image size (default: the UNet's sample size times the VAE's factor).
        proxy_fraction, proxy_num_memorization, proxy_repeats: the proxy set (`build_proxy_set`).
        mask_semantics, granularity, method_options: passed to every candidate's `MemControlConfig`.
        num_fid_images, num_inference_steps, guidance_scale, generation_batch_size: generation for ``fid``,
            ``neg_amd`` and ``extraction``.
        num_extraction_generations: generations per prompt of the extraction attack.
        feature: feature space of ``fid`` and ``neg_amd`` (see `peft_memcontrol.metrics.get_feature_extractor`).
        reduction: ``"max"`` or ``"mean"`` over a batch for ``noise_norm``.
        reuse_base_model: keep the base model between candidates (``False`` reloads it and forgets the SVD cache
            every time: only for measuring what the reuse saves).
    """

    def __init__(
        self,
        train_data_dir: str,
        objectives: Sequence[str | Objective] = ("noise_norm", "fid"),
        pretrained_model_name_or_path: str | None = None,
        test_data_dir: str | None = None,
        max_train_steps: int = 100,
        train_batch_size: int = 8,
        learning_rate: float = 1e-4,
        mixed_precision: str | None = None,
        caption_dropout_probability: float = 0.1,
        seed: int = 0,
        resolution: int | None = None,
        proxy_fraction: float = 0.01,
        proxy_num_memorization: int = 10,
        proxy_repeats: int = 50,
        mask_semantics: str = "paper",
        granularity: str = "slot",
        method_options: dict[str, Any] | None = None,
        num_fid_images: int = 100,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        generation_batch_size: int = 16,
        num_extraction_generations: int = 10,
        feature: str = "efficientnet-lite0",
        reduction: str = "max",
        reuse_base_model: bool = True,
    ) -> None:
        self._objectives = resolve_objectives(objectives)
        self.objectives = [name for name, _ in self._objectives]
        if any(name in ("fid", "val_loss") for name in self.objectives) and test_data_dir is None:
            raise ValueError("The 'fid' and 'val_loss' objectives need held-out data: pass test_data_dir.")
        self.train_data_dir = train_data_dir
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        self.test_data_dir = test_data_dir
        self.max_train_steps = max_train_steps
        self.train_batch_size = train_batch_size
        self.learning_rate = learning_rate
        self.mixed_precision = mixed_precision
        self.caption_dropout_probability = caption_dropout_probability
        self.seed = seed
        self.resolution = resolution
        self.proxy_fraction = proxy_fraction
        self.proxy_num_memorization = proxy_num_memorization
        self.proxy_repeats = proxy_repeats
        self.config_kwargs = {"mask_semantics": mask_semantics, "granularity": granularity}
        if method_options:
            self.config_kwargs["method_options"] = dict(method_options)
        self.num_fid_images = num_fid_images
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.generation_batch_size = generation_batch_size
        self.num_extraction_generations = num_extraction_generations
        self.feature = feature
        self.reduction = reduction
        self.reuse_base_model = reuse_base_model

    # ------------------------------------------------------------------ per-worker state
    def _state_key(self) -> tuple:
        return (
            self.pretrained_model_name_or_path,
            self.train_data_dir,
            self.test_data_dir,
            self.resolution,
            self.proxy_fraction,
            self.proxy_num_memorization,
            self.proxy_repeats,
            self.seed,
        )

    def load(self) -> _Loaded:
        """This worker's base model and data (loaded on first use, then kept)."""
        key = self._state_key()
        if key in _WORKER_STATE and self.reuse_base_model:
            return _WORKER_STATE[key]
        from diffusers import DDPMScheduler, StableDiffusionPipeline

        from ..pipelines import load_tiny_pipeline
        from ..svd import clear_svd_cache
        from ..training import build_proxy_set, load_training_dataset

        if not self.reuse_base_model:
            clear_svd_cache()
        if self.pretrained_model_name_or_path is None:
            pipe = load_tiny_pipeline()
        else:
            pipe = StableDiffusionPipeline.from_pretrained(self.pretrained_model_name_or_path, safety_checker=None)
        resolution = self.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        dataset = load_training_dataset(train_data_dir=self.train_data_dir, resolution=resolution)
        proxy = build_proxy_set(
            dataset,
            fraction=self.proxy_fraction,
            num_memorization=min(self.proxy_num_memorization, len(dataset)),
            repeats=self.proxy_repeats,
            seed=self.seed,
        )
        test = None
        if self.test_data_dir is not None:
            test = load_training_dataset(train_data_dir=self.test_data_dir, resolution=resolution)
        loaded = _Loaded(
            unet=pipe.unet,
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
            proxy=proxy,
            test_dataset=test,
        )
        _WORKER_STATE[key] = loaded
        return loaded

    def feature_extractor(self) -> Any:
        """The feature extractor of ``fid`` and ``neg_amd``, loaded once per worker."""
        if self.feature not in _FEATURE_EXTRACTORS:
            from ..metrics import get_feature_extractor

            _FEATURE_EXTRACTORS[self.feature] = get_feature_extractor(self.feature)
        return _FEATURE_EXTRACTORS[self.feature]

    # ------------------------------------------------------------------ one evaluation
    def check_space(self, space: GenomeSpace) -> None:
        """Refuse genomes this loop cannot train: the trainer trains one PEFT config, so one method per mask."""
        if space.choices is not None:
            raise ValueError(
                "InnerLoop trains one method per candidate (one PEFT config); a per-unit method-choice genome needs "
                "an evaluator that applies several adapters."
            )

    def peft_config(self, candidate: Candidate) -> Any:
        """The candidate's `MemControlConfig` (what is trained, and what a chosen mask becomes)."""
        from ..tuners import MemControlConfig

        if len(candidate.masks) != 1:
            raise ValueError(f"InnerLoop trains one method per candidate; this one mixes {sorted(candidate.masks)}.")
        method, mask = next(iter(candidate.masks.items()))
        return MemControlConfig(method=method, mask=dict(mask), **self.config_kwargs)

    def steps(self, budget: float) -> int:
        """Training steps for a budget fraction."""
        return max(1, round(self.max_train_steps * budget))

    def __call__(self, candidate: Candidate, budget: float = 1.0) -> dict[str, float]:
        from ..counting import trainable_share
        from ..training import MemControlTrainer, TrainingConfig

        loaded = self.load()
        config = self.peft_config(candidate)
        share = trainable_share(loaded.unet, config)
        learning_rate = candidate.learning_rate if candidate.learning_rate is not None else self.learning_rate
        with tempfile.TemporaryDirectory(prefix="memcontrol-candidate-") as output_dir:
            training_config = TrainingConfig(
                output_dir=os.path.join(output_dir, "run"),
                max_train_steps=self.steps(budget),
                train_batch_size=self.train_batch_size,
                learning_rate=learning_rate,
                mixed_precision=self.mixed_precision,
                caption_dropout_probability=self.caption_dropout_probability,
                seed=self.seed,
                report_to=None,
                show_progress=False,
            )
            trainer = MemControlTrainer(
                unet=loaded.unet,
                vae=loaded.vae,
                text_encoder=loaded.text_encoder,
                tokenizer=loaded.tokenizer,
                noise_scheduler=loaded.noise_scheduler,
                train_dataset=loaded.proxy.dataset,
                method=config,
                config=training_config,
            )
            try:
                training = trainer.train()
                context = EvaluationContext(
                    candidate=candidate,
                    peft_config=config,
                    trainer=trainer,
                    training=training,
                    memorization_dataset=loaded.proxy.memorization_dataset,
                    test_dataset=loaded.test_dataset,
                    trainable_share=share,
                    settings=self,
                )
                return {name: float(objective(context)) for name, objective in self._objectives}
            finally:
                _unload(trainer)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _unload(trainer: Any) -> None:
    """Take the candidate's adapter out of the shared base UNet again (its base weights are untouched)."""
    model = trainer.unwrapped_model
    if hasattr(model, "unload"):
        model.unload()
    trainer.accelerator.free_memory()


class TrainableShareConstraint:
    """``constraint(candidate) -> bool``: the candidate's trainable share is at most ``max_share``.

    Computed exactly (`peft_memcontrol.trainable_share`) on a meta-device copy of the base UNet, so infeasible masks
    are rejected in milliseconds, before any training.

    Args:
        max_share: the largest allowed share (0.0002 = 0.02%).
        unet_config: the base UNet's config (default: the tiny pipeline's).
        config_kwargs: `MemControlConfig` arguments (mask semantics, granularity, method options).
    """

    def __init__(self, max_share: float, unet_config: dict[str, Any] | None = None, **config_kwargs: Any) -> None:
        self.max_share = max_share
        self.unet_config = dict(unet_config) if unet_config is not None else None
        self.config_kwargs = config_kwargs
        self._unet = None

    def _model(self) -> Any:
        if self._unet is None:
            from ..counting import meta_unet
            from ..pipelines import TINY_UNET_CONFIG

            config = self.unet_config or TINY_UNET_CONFIG
            self._unet = meta_unet({k: v for k, v in config.items() if not k.startswith("_")})
        return self._unet

    def share(self, candidate: Candidate) -> float:
        from ..counting import trainable_share
        from ..tuners import MemControlConfig

        model = self._model()
        return sum(
            trainable_share(model, MemControlConfig(method=method, mask=dict(mask), **self.config_kwargs))
            for method, mask in candidate.masks.items()
        )

    def __call__(self, candidate: Candidate) -> bool:
        return self.share(candidate) <= self.max_share

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_unet": None}
