"""``memcontrol search``: run (or resume) a mask search from the flags of `peft_memcontrol.cli.arguments`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from typing import Any

from diffusers import UNet2DConditionModel

from ..constants import TRAIN_STEPS_PER_BUDGET
from ..counting import meta_unet
from ..sample_data import build_faces_dataset
from ..search import (
    GenomeSpace,
    MaskSearcher,
    ProcessExecutor,
    RayExecutor,
    SearchConfig,
    SearchResult,
    SerialExecutor,
    SyntheticMaskProblem,
    UnsatisfiableConstraintError,
    measure_references,
)
from ..search.config import default_population_size
from ..search.fidelity_check import check_proxy_fidelity
from ..search.genome import default_learning_rate_bounds
from ..search.inner_loop import SEARCH_EVALUATION, InnerLoop, ProxyDataSpec, TrainableShareConstraint
from ..search.journal import JournalError
from ..search.lock import SearchFolderBusyError
from ..search.report import push_mask_to_hub, write_search_outputs
from ..tiny_sd import tiny_pipeline_path
from ..training import TrainingConfig
from ..tuners import MemControlConfig


logger = logging.getLogger("memcontrol")


def search_learning_rate_bounds(args: argparse.Namespace, unet_config: dict[str, Any]) -> tuple[float, float] | None:
    """The learning-rate gene's range: ``None`` with a fixed ``--learning_rate``; else the flags, each defaulting to
    the model's range (`default_learning_rate_bounds`; SD-1.5's for a synthetic problem), said in the log."""
    if args.learning_rate is not None:
        return None
    (low, high), reason = default_learning_rate_bounds(unet_config)
    bounds = (
        low if args.learning_rate_min is None else args.learning_rate_min,
        high if args.learning_rate_max is None else args.learning_rate_max,
    )
    if bounds == (low, high):
        logger.info("Searching the %s.", reason)
    else:
        logger.info("Searching learning rates %g..%g (the model's default: %s).", *bounds, reason)
    return bounds


def _search_setup(args: argparse.Namespace):
    """(space, evaluator, constraint) from the flags."""
    if args.synthetic is not None:
        lr_bounds = search_learning_rate_bounds(args, {})
        units = tuple(f"unit.{i}" for i in range(args.synthetic))
        space = GenomeSpace(units=units, method=args.method, learning_rate_bounds=lr_bounds, name="synthetic")
        evaluator = SyntheticMaskProblem(
            args.synthetic,
            seed=args.seed,
            noise=args.synthetic_noise,
            evaluation_noise=args.synthetic_evaluation_noise,
            delay=args.synthetic_delay,
        )
        return space, evaluator, None

    model_path = args.pretrained_model_name_or_path or tiny_pipeline_path()
    train_dir, test_dir = args.train_data_dir, args.test_data_dir
    if train_dir is None:
        demo = build_faces_dataset(os.path.join(args.output_dir, "demo-data"), seed=args.seed)
        train_dir, test_dir = demo.train_dir, test_dir or demo.test_dir
    unet_config = dict(UNet2DConditionModel.load_config(model_path, subfolder="unet"))
    lr_bounds = search_learning_rate_bounds(args, unet_config)
    config_kwargs = {"mask_semantics": args.mask_semantics, "granularity": args.granularity}
    model = meta_unet({k: v for k, v in unet_config.items() if not k.startswith("_")})
    space = GenomeSpace.for_model(
        model,
        MemControlConfig(method=args.method, **config_kwargs),
        layout=not args.no_reference_layout,
        learning_rate_bounds=lr_bounds,
    )
    data = ProxyDataSpec(
        train_dir,
        test_data_dir=test_dir,
        pretrained_model_name_or_path=args.pretrained_model_name_or_path,
        resolution=args.resolution,
        fraction=args.proxy_fraction,
        num_memorization=args.proxy_num_memorization,
        repeats=args.proxy_repeats,
        seed=args.seed,
    )
    training = TrainingConfig(
        max_train_steps=args.max_train_steps,
        train_batch_size=args.train_batch_size,
        learning_rate=args.learning_rate or 1e-4,
        mixed_precision=args.mixed_precision,
        caption_dropout_probability=args.caption_dropout_probability,
        seed=args.seed,
    )
    evaluation = replace(
        SEARCH_EVALUATION,
        num_generations=args.num_extraction_generations,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        feature=args.feature,
        seed=args.seed,
        num_fid_images=args.num_fid_images,
    )
    evaluator = InnerLoop(
        data, args.objectives, training, evaluation, **config_kwargs, svd_cache_dir=args.svd_cache_dir
    )
    constraint = None
    if args.max_trainable_share is not None:
        constraint = TrainableShareConstraint(args.max_trainable_share, unet_config, **config_kwargs)
    return space, evaluator, constraint


def _executor(args: argparse.Namespace):
    if args.executor == "process":
        return ProcessExecutor(num_workers=args.num_workers, gpus=args.gpus or None)
    if args.executor == "ray":
        return RayExecutor(num_gpus=args.gpus_per_task, address=args.ray_address)
    return SerialExecutor()


def _reference_lines(result: SearchResult) -> list[str]:
    """What the search's reference measurements say, one line each: the noise per objective and the base model."""
    references = result.references
    if references is None:
        return []
    lines = []
    if len(references.runs) > 1:
        noise = ", ".join(f"{name} {value:.3g}" for name, value in references.noise().items())
        lines.append(f"noise of one evaluation (s.d. over {len(references.runs)} runs of the knee): {noise}")
    if references.base_model is not None:
        scores = ", ".join(f"{name} {value:.5g}" for name, value in references.base_model.items())
        lines.append(f"base model (not fine-tuned): {scores}")
    return lines


def run_search(args: argparse.Namespace) -> int:
    """Run (or resume) a search and write its outputs; returns the exit status: 0, 1 when no candidate succeeded
    (the outputs are still written, and the counts by status and the first error printed), 2 when the output folder
    cannot be resumed (other settings, a damaged journal or checkpoint, ``--no_resume`` on an existing search, or another
    search running in it). The flags are checked before (`peft_memcontrol.cli.arguments.invalid_search_flags`)."""
    space, evaluator, constraint = _search_setup(args)
    config = SearchConfig(
        population_size=(
            args.population_size if args.population_size is not None else default_population_size(args.max_evaluations)
        ),
        generations=args.generations,
        num_offspring=args.num_offspring,
        crossover_probability=args.crossover_probability,
        mutation_probability=args.mutation_probability,
        fidelities=tuple(args.fidelities),
        promote_fraction=args.promote_fraction,
        max_evaluations=args.max_evaluations,
        learning_rate_tolerance=args.learning_rate_tolerance,
        surrogate=args.surrogate,
        surrogate_pool=args.surrogate_pool,
        seed=args.seed,
    )
    searcher = MaskSearcher(
        space,
        evaluator,
        config=config,
        output_dir=args.output_dir,
        executor=_executor(args),
        constraint=constraint,
        progress=not args.no_progress,
        retry_failed=args.retry_failed,
    )
    try:
        result = searcher.run(resume=not args.no_resume)
    except (JournalError, FileExistsError, SearchFolderBusyError, UnsatisfiableConstraintError) as error:
        # the message says why and the way out
        print(f"memcontrol search: error: {error}", file=sys.stderr)
        return 2
    result.references = measure_references(searcher, args.noise_runs, base_model=not args.no_base_model_scores)
    paths = write_search_outputs(result, args.output_dir, args.max_quality, args.max_memorization)
    print(f"Front of {len(result.front)} masks, hypervolume {result.hypervolume:.6g}; outputs in {args.output_dir}")
    for line in _reference_lines(result):
        print(f"  {line}")
    for name, folder in paths["chosen"].items():
        print(f"  {name}: {folder}")
    fidelity = check_proxy_fidelity(
        searcher,
        result,
        args.fidelity_train_steps or TRAIN_STEPS_PER_BUDGET * args.max_train_steps,
        args.fidelity_front,
        args.fidelity_other,
        args.fidelity_num_fid_images,
        seed=args.seed,
        progress=not args.no_progress,
    )
    for line in fidelity.summary_lines():
        print(f"  {line}")
    failure = result.failure()
    if failure is not None:
        print(f"memcontrol search: error: {failure}", file=sys.stderr)
        return 1
    if args.push_to_hub:
        repo_id = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
        print(push_mask_to_hub(result, result.knee(), repo_id))
    return 0
