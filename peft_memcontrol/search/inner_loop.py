"""The inner loop of MemControl: train one candidate mask on the proxy set for K steps, then score it.

An `InnerLoop` is built from three parts: a `TrainingConfig` (how each candidate is fine-tuned, by the project's one
trainer), `EvaluationSettings` (how its objectives generate and score, through `peft_memcontrol.evaluation`) and a
frozen `ProxyDataSpec` (which base model and data are loaded). The spec is also the key of the `WorkerCache`: each
worker process loads the base model and the proxy set once per spec and keeps them; every candidate's adapter is
injected into that base model, trained, scored and unloaded again, so the base weights (and with them the SVD cache
of `peft_memcontrol.svd`, keyed by weight) serve every candidate. The frozen VAE's posteriors and the text encoder's
embeddings of the proxy batches are kept too (`peft_memcontrol.training.EncodingCache`): every candidate draws the
same batches, so only the first one encodes them.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from diffusers import DDPMScheduler, StableDiffusionPipeline

from ..counting import meta_unet, trainable_share
from ..evaluation import EvaluationSettings, SplitImages, dataset_split, feature_bank
from ..svd import SpectralFactorPool, clear_svd_cache
from ..tiny_sd import TINY_UNET_CONFIG, load_tiny_pipeline
from ..training import (
    EncodingCache,
    MemControlTrainer,
    ProxySet,
    TrainingConfig,
    build_proxy_set,
    load_training_dataset,
)
from ..tuners import MemControlConfig
from .genome import Candidate, GenomeSpace
from .journal import jsonable
from .objectives import Objective, ObjectiveContext, resolve_objectives


@dataclass(frozen=True)
class ProxyDataSpec:
    """What a worker loads once and keeps for every candidate: the base model, the proxy set and the held-out set.

    Frozen, because it is the key of the `WorkerCache`: every option that changes what is loaded is a field here, so
    two loops that load different things can never share a cache entry.

    Attributes:
        train_data_dir: image folder (``metadata.jsonl``) of the training data; the proxy set is built from it.
        test_data_dir: held-out image folder (for ``fid`` and ``val_loss``).
        pretrained_model_name_or_path: a diffusers text-to-image folder or Hub id; ``None``: the package's tiny
            pipeline.
        resolution: image size (default: the UNet's sample size times the VAE's factor).
        fraction, num_memorization, repeats, seed: the proxy set (`peft_memcontrol.training.build_proxy_set`).
    """

    train_data_dir: str
    test_data_dir: str | None = None
    pretrained_model_name_or_path: str | None = None
    resolution: int | None = None
    fraction: float = 0.01
    num_memorization: int = 10
    repeats: int = 50
    seed: int = 0


@dataclass
class LoadedProxy:
    """A worker's base model and data, loaded from one `ProxyDataSpec`."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    proxy: ProxySet
    memorization: SplitImages
    test_dataset: Any
    encodings: EncodingCache
    svd_factors: SpectralFactorPool
    """Holds the base weights' SVDs between candidates, so that each weight is decomposed once per worker."""


def load_proxy(spec: ProxyDataSpec) -> LoadedProxy:
    """Load the base model of ``spec`` and build its proxy set (and held-out set, if any)."""
    if spec.pretrained_model_name_or_path is None:
        pipe = load_tiny_pipeline()
    else:
        pipe = StableDiffusionPipeline.from_pretrained(spec.pretrained_model_name_or_path, safety_checker=None)
    resolution = spec.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    dataset = load_training_dataset(train_data_dir=spec.train_data_dir, resolution=resolution)
    proxy = build_proxy_set(
        dataset,
        fraction=spec.fraction,
        num_memorization=min(spec.num_memorization, len(dataset)),
        repeats=spec.repeats,
        seed=spec.seed,
    )
    test = None
    if spec.test_data_dir is not None:
        test = load_training_dataset(train_data_dir=spec.test_data_dir, resolution=resolution)
    return LoadedProxy(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        proxy=proxy,
        memorization=dataset_split(proxy.memorization_dataset),
        test_dataset=test,
        encodings=EncodingCache(),
        svd_factors=SpectralFactorPool(),
    )


class WorkerCache:
    """The base models and data one process has loaded, by `ProxyDataSpec` (the process's one instance:
    `WORKER_CACHE`; an `InnerLoop` sent to a worker finds what that worker loaded before)."""

    def __init__(self) -> None:
        self._loaded: dict[ProxyDataSpec, LoadedProxy] = {}

    def get(self, spec: ProxyDataSpec, reuse: bool = True) -> LoadedProxy:
        """What ``spec`` loads: kept from an earlier call, or (first use, or ``reuse=False``) loaded now.

        ``reuse=False`` reloads the base model and forgets the SVD and encoding caches: only for measuring what the
        reuse saves.
        """
        if reuse and spec in self._loaded:
            return self._loaded[spec]
        if not reuse:
            clear_svd_cache()
        self._loaded[spec] = load_proxy(spec)
        return self._loaded[spec]


WORKER_CACHE = WorkerCache()

SEARCH_EVALUATION = EvaluationSettings(
    num_generations=10,
    num_inference_steps=50,
    extraction_threshold=0.15,
    min_group_size=3,
    generation_batch_size=16,
    num_fid_images=100,
)
"""The inner loop's default scoring: 50 sampling steps, 16 images a pipeline call, FID on up to 100 held-out
prompts, and the extraction attack's default setting (10 generations per prompt, threshold 0.15, groups of 3)."""


RUN_ONLY_TRAINING_FIELDS = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "logging_dir",
        "report_to",
        "tracker_project_name",
        "show_progress",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "dataloader_num_workers",
        "gradient_checkpointing",
        "ddp_find_unused_parameters",
    }
)
"""`TrainingConfig` fields that leave a candidate's scores as they are (where a run writes, what it shows, how it saves
memory); `InnerLoop.settings` leaves them out, so changing them does not block resuming a search."""


def _fields(settings: Any) -> dict[str, Any]:
    """A dataclass's fields by name, values as they are (``asdict`` would deep-copy a feature module)."""
    return {field.name: getattr(settings, field.name) for field in fields(settings)}


def run_settings(training: TrainingConfig, evaluation: EvaluationSettings) -> dict[str, Any]:
    """What decides a run's scores in its training config and evaluation settings: the training fields without
    `RUN_ONLY_TRAINING_FIELDS` (where and how visibly a run goes), the evaluation fields without ``feature_device``."""
    return {
        "training": {name: value for name, value in _fields(training).items() if name not in RUN_ONLY_TRAINING_FIELDS},
        "evaluation": {name: value for name, value in _fields(evaluation).items() if name != "feature_device"},
    }


def data_fingerprint(data_dir: str | None) -> str | None:
    """SHA-256 of an image folder's content as the inner loop reads it: each row's file name, caption and image
    file bytes, in ``metadata.jsonl`` order (the proxy set draws rows by index).

    The bytes are hashed, not the decoded pixels: one read of every file, once per search. Changing, adding,
    removing or reordering an image or a caption changes the fingerprint, moving the folder does not. ``None`` for
    no folder, or one the inner loop cannot read (missing, or with bad rows): every candidate then fails with the
    reason in its record, so no scores can be mixed, and a resume after the folder was mended is refused.
    """
    if data_dir is None:
        return None
    try:
        dataset = load_training_dataset(train_data_dir=data_dir)
    except (OSError, ValueError):
        return None
    digest = hashlib.sha256()
    for path, caption in zip(dataset.images, dataset.captions):
        for part in (os.path.relpath(path, data_dir), caption):
            encoded = part.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "big") + encoded)
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


class InnerLoop:
    """A picklable evaluator ``inner_loop(candidate, budget) -> {objective: value}`` that trains and scores.

    Args:
        data: the base model and data (`ProxyDataSpec`), loaded once per worker process.
        objectives: two (or one or three) objectives: built-in names (`BUILTIN_OBJECTIVES`) or callables of an
            `ObjectiveContext`.
        training: how every candidate is fine-tuned; ``max_train_steps`` is K, the steps of a full-budget
            evaluation (a budget ``b`` trains ``round(b K)``), and ``learning_rate`` is used only when the genome has
            no learning-rate gene. Default: ``TrainingConfig()``.
        evaluation: generation and metric settings of the objectives (default `SEARCH_EVALUATION`):
            ``num_generations`` are the extraction attack's generations per prompt, ``num_fid_images`` the test
            images of ``fid``, ``feature`` the feature space of ``fid``, ``kid``, ``neg_amd`` and ``copy_similarity``.
        reduction: ``"max"`` or ``"mean"`` over a batch for ``noise_norm``.
        mask_semantics, granularity, method_options: passed to every candidate's `MemControlConfig`.
        reuse_base_model: keep the base model between candidates (``False`` reloads it and forgets the SVD and
            encoding caches every time: only for measuring what the reuse saves).
        cache_encodings: reuse the frozen encoders' outputs across candidates (``False``: encode every batch again;
            only for measuring what the cache saves: results are bit-identical either way).
        svd_cache_dir: a folder where SVDiff's decompositions of the base weights are kept on disk
            (`SpectralFactorPool`): the workers of a process pool or Ray cluster (on a shared disk), a restarted
            search and later searches on the same base model decompose each weight once. Not part of `settings`
            (the factors are checked against their weights when read).
    """

    def __init__(
        self,
        data: ProxyDataSpec,
        objectives: Sequence[str | Objective] = ("copy_similarity", "kid"),
        training: TrainingConfig | None = None,
        evaluation: EvaluationSettings = SEARCH_EVALUATION,
        reduction: str = "max",
        mask_semantics: str = "paper",
        granularity: str = "slot",
        method_options: dict[str, Any] | None = None,
        reuse_base_model: bool = True,
        cache_encodings: bool = True,
        svd_cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self._objectives = resolve_objectives(objectives)
        self.objectives = [name for name, _ in self._objectives]
        if any(name in ("fid", "kid", "val_loss") for name in self.objectives) and data.test_data_dir is None:
            raise ValueError("The 'fid', 'kid' and 'val_loss' objectives need held-out data: set data.test_data_dir.")
        self.data = data
        self.training = training if training is not None else TrainingConfig()
        self.evaluation = evaluation
        self.reduction = reduction
        self.config_kwargs: dict[str, Any] = {"mask_semantics": mask_semantics, "granularity": granularity}
        if method_options:
            self.config_kwargs["method_options"] = dict(method_options)
        self.reuse_base_model = reuse_base_model
        self.cache_encodings = cache_encodings
        self.svd_cache_dir = None if svd_cache_dir is None else os.fspath(svd_cache_dir)

    def load(self) -> LoadedProxy:
        """This worker's base model and data (loaded on first use, then kept in `WORKER_CACHE`)."""
        return WORKER_CACHE.get(self.data, reuse=self.reuse_base_model)

    def settings(self) -> dict[str, Any]:
        """Everything that decides this loop's scores, as JSON data: the search journal's header records it, and a
        resumed search with other settings is refused (`MaskSearcher.header`).

        The data spec (model, data folders, proxy set) and the content of its folders (`data_fingerprint` of the
        training and held-out folders: a resume after the images or captions changed is refused), the objectives,
        the training config without the fields that only say where and how visibly a run goes
        (`RUN_ONLY_TRAINING_FIELDS`), the evaluation settings without ``feature_device``, the ``noise_norm``
        reduction and the `MemControlConfig` arguments. Hashing the data reads every image file once.
        """
        return jsonable(
            {
                "data": _fields(self.data),
                "data_fingerprint": {
                    "train_data_dir": data_fingerprint(self.data.train_data_dir),
                    "test_data_dir": data_fingerprint(self.data.test_data_dir),
                },
                "objectives": self.objectives,
                **run_settings(self.training, self.evaluation),
                "reduction": self.reduction,
                "config": self.config_kwargs,
            }
        )

    def check_space(self, space: GenomeSpace) -> None:
        """Refuse genomes this loop cannot train: the trainer trains one PEFT config, so one method per mask."""
        if space.choices is not None:
            raise ValueError(
                "InnerLoop trains one method per candidate (one PEFT config); a per-unit method-choice genome needs "
                "an evaluator that applies several adapters."
            )

    def peft_config(self, candidate: Candidate) -> MemControlConfig:
        """The candidate's `MemControlConfig` (what is trained, and what a chosen mask becomes)."""
        if len(candidate.masks) != 1:
            raise ValueError(f"InnerLoop trains one method per candidate; this one mixes {sorted(candidate.masks)}.")
        method, mask = next(iter(candidate.masks.items()))
        return MemControlConfig(method=method, mask=dict(mask), **self.config_kwargs)

    def steps(self, budget: float) -> int:
        """Training steps for a budget fraction."""
        return max(1, round(self.training.max_train_steps * budget))

    def replicate(self, run: int) -> InnerLoop:
        """This loop with its training and generation seeds moved by ``run``: a candidate trained and scored again
        under other random draws (noise, timesteps, dropout, generation latents), on the same proxy set. How much its
        scores move measures the noise of one evaluation (`peft_memcontrol.search.references`)."""
        repeated = copy.copy(self)
        repeated.training = replace(self.training, seed=self.training.seed + run)
        repeated.evaluation = replace(self.evaluation, seed=self.evaluation.seed + run)
        return repeated

    def score_base_model(self, candidate: Candidate) -> dict[str, float]:
        """The objectives of the base model, not fine-tuned: ``candidate``'s adapter is injected, disabled, and
        scored without a training step (``trainable_share`` is 0)."""
        return self._score(candidate, 1.0, train=False)

    def __call__(self, candidate: Candidate, budget: float = 1.0) -> dict[str, float]:
        return self._score(candidate, budget, train=True)

    def _score(self, candidate: Candidate, budget: float, train: bool) -> dict[str, float]:
        loaded = self.load()
        config = self.peft_config(candidate)
        share = trainable_share(loaded.unet, config) if train else 0.0
        learning_rate = candidate.learning_rate if candidate.learning_rate is not None else self.training.learning_rate
        with tempfile.TemporaryDirectory(prefix="memcontrol-candidate-") as output_dir:
            training_config = replace(
                self.training,
                output_dir=os.path.join(output_dir, "run"),
                max_train_steps=self.steps(budget),
                learning_rate=learning_rate,
                report_to=None,
                show_progress=False,
            )
            loaded.svd_factors.cache_dir = self.svd_cache_dir
            with loaded.svd_factors:  # the candidate's adapter reuses the SVDs of earlier candidates
                trainer = MemControlTrainer(
                    unet=loaded.unet,
                    vae=loaded.vae,
                    text_encoder=loaded.text_encoder,
                    tokenizer=loaded.tokenizer,
                    noise_scheduler=loaded.noise_scheduler,
                    train_dataset=loaded.proxy.dataset,
                    method=config,
                    config=training_config,
                    encodings=loaded.encodings if self.cache_encodings else None,
                )
            try:
                if not train:
                    trainer.unwrapped_model.disable_adapter_layers()
                training = trainer.train() if train else None
                context = ObjectiveContext(
                    candidate=candidate,
                    peft_config=config,
                    trainer=trainer,
                    training=training,
                    memorization=loaded.memorization,
                    test_dataset=loaded.test_dataset,
                    trainable_share=share,
                    settings=self.evaluation,
                    features=feature_bank(self.evaluation.feature, self.evaluation.feature_device),
                    reduction=self.reduction,
                )
                return {name: float(objective(context)) for name, objective in self._objectives}
            finally:
                _unload(trainer)


def _unload(trainer: MemControlTrainer) -> None:
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
            config = self.unet_config or TINY_UNET_CONFIG
            self._unet = meta_unet({k: v for k, v in config.items() if not k.startswith("_")})
        return self._unet

    def settings(self) -> dict[str, Any]:
        """What decides feasibility, as JSON data, for the search journal's header (`MaskSearcher.header`)."""
        return jsonable(
            {"max_share": self.max_share, "unet_config": self.unet_config, "config_kwargs": self.config_kwargs}
        )

    def share(self, candidate: Candidate) -> float:
        model = self._model()
        return sum(
            trainable_share(model, MemControlConfig(method=method, mask=dict(mask), **self.config_kwargs))
            for method, mask in candidate.masks.items()
        )

    def __call__(self, candidate: Candidate) -> bool:
        return self.share(candidate) <= self.max_share

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_unet": None}
