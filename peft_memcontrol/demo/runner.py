"""``run_demo``: the paper's experiment in miniature, on the embedded tiny pipeline, offline.

1. Fine-tune the baselines on the main domain (digits by default): full fine-tuning, SVDiff, DiffFit and masked attention tuning (every slot on),
   full fine-tuning with random word addition, and with Wen et al.'s noise-norm filtering.
2. Search an SVDiff mask with `MaskSearcher` (NSGA-II, `InnerLoop` on a proxy set, copy similarity vs KID), fine-tune
   the knee of the front on the full training set, and a sample of other searched masks to measure how well the inner
   loop ranks masks like the full fine-tune (`peft_memcontrol.search.fidelity`).
3. Score every model the same way (`peft_memcontrol.evaluation.evaluate_model`).
4. Fine-tune the unchanged mask, and full fine-tuning, on the transfer domain (faces) and score both.
5. Write the report folder (`peft_memcontrol.demo.report`).

Every model, baseline or searched mask, is fine-tuned and scored by the search's `FullFineTune` (`MemControlTrainer`,
then `peft_memcontrol.evaluation.evaluate_model`), the step ``memcontrol search``'s proxy-fidelity check runs too.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import torch
from accelerate import PartialState
from diffusers import UNet2DConditionModel
from tqdm.auto import tqdm

from ..counting import meta_unet, trainable_share
from ..evaluation import (
    EvaluationCalibration,
    EvaluationData,
    EvaluationSettings,
    ModelScores,
    calibrate_evaluation,
    load_evaluation_data,
)
from ..search import (
    FidelityCandidate,
    FrontPoint,
    FullFineTune,
    GenomeSpace,
    MaskSearcher,
    ProcessExecutor,
    SearchConfig,
    measure_proxy_fidelity,
    select_fidelity_candidates,
)
from ..search.fidelity_check import MIN_CANDIDATES
from ..search.genome import default_learning_rate_bounds
from ..search.inner_loop import SEARCH_EVALUATION, InnerLoop, ProxyDataSpec
from ..search.report import draw_plots, write_search_outputs
from ..tiny_sd import TINY_UNET_CONFIG, load_tiny_pipeline, tiny_pipeline_path
from ..training import EncodingCache, RandomWordAddition, TrainingConfig
from ..tuners import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig
from .config import DemoConfig
from .data import build_domain
from .report import write_report, write_seeds_report


logger = logging.getLogger(__name__)

FULL = "full fine-tuning"
DEMO_RESOLUTION = 32
"""Image size of the demo's data and of the tiny pipeline."""
SEARCHED = "MemControl (searched mask)"


@dataclass
class MethodSpec:
    """One row of the table: what to train (``"full"`` or a PEFT config) and with which mitigations."""

    name: str
    method: Any
    learning_rate: float
    caption_transforms: tuple = ()
    noise_norm_threshold: float | str | None = None


def baseline_specs(config: DemoConfig) -> list[MethodSpec]:
    """The paper's baselines: full fine-tuning, the three PEFT methods on every slot, and two mitigations."""
    rates = config.learning_rates
    return [
        MethodSpec(FULL, "full", rates["full"]),
        MethodSpec("SVDiff (all slots)", SVDiffConfig(), rates["svdiff"]),
        MethodSpec("DiffFit (all slots)", DiffFitConfig(), rates["difffit"]),
        MethodSpec("masked attention tuning (all slots)", MaskedAttentionConfig(), rates["masked_attention"]),
        MethodSpec("full + random word addition", "full", rates["full"], (RandomWordAddition(num_words=4),)),
        MethodSpec("full + Wen et al. filtering", "full", rates["full"], noise_norm_threshold="auto"),
    ]


def demo_training(spec: MethodSpec, output_dir: str, config: DemoConfig) -> TrainingConfig:
    """How every demo model is fine-tuned: the demo's steps, batch and seed, the row's learning rate and mitigations."""
    return TrainingConfig(
        output_dir=output_dir,
        max_train_steps=config.max_train_steps,
        train_batch_size=config.train_batch_size,
        learning_rate=spec.learning_rate,
        caption_dropout_probability=config.caption_dropout_probability,
        caption_transforms=list(spec.caption_transforms),
        noise_norm_threshold=spec.noise_norm_threshold,
        seed=config.seed,
        report_to=None,
        show_progress=config.progress,
    )


def trainable_share_of(method: Any) -> float:
    """Trained parameters as a share of the tiny UNet's (exact count on a meta-device copy; 1 for full)."""
    if isinstance(method, str):
        return 1.0
    return trainable_share(meta_unet(dict(TINY_UNET_CONFIG)), method)


def _init_worker(device: str | None) -> None:
    """Each worker process: offline, one thread (tiny models), the demo's device."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if device != "cuda":
        torch.set_num_threads(1)


#: Per process, per training folder: the frozen encoders' outputs, which every row trained there reuses (same data,
#: same seed, same batches; `FullFineTune.encodings`).
_ENCODINGS: dict[str, EncodingCache] = {}


@dataclass
class ScoredRun:
    """One row of a table, the attack's per-prompt records, and the calibration the scores used (a dict)."""

    row: dict[str, Any]
    records: list[dict[str, Any]]
    calibration: dict[str, Any]


def calibrate_domain(data: EvaluationData, settings: EvaluationSettings) -> EvaluationCalibration:
    """The thresholds every model of one domain is scored with, measured once: they depend on the data, the feature
    space and the tiny pipeline's autoencoder only (which fine-tuning the UNet leaves alone). Runs on the device
    Accelerate gives the training runs."""
    return calibrate_evaluation(load_tiny_pipeline(device=PartialState().device), data, settings)


def train_and_score(
    spec: MethodSpec,
    train_dir: str,
    run_dir: str,
    data: EvaluationData,
    settings: EvaluationSettings,
    config: DemoConfig,
    calibration: EvaluationCalibration,
) -> ScoredRun:
    """One row of a table: fine-tune ``spec`` on ``train_dir``, score it on ``data`` with ``settings`` and the
    domain's ``calibration`` (the search's `FullFineTune`, the step its proxy-fidelity check runs too)."""
    encodings = _ENCODINGS.setdefault(train_dir, EncodingCache())
    run = FullFineTune(train_dir, data, settings, DEMO_RESOLUTION, calibration=calibration, encodings=encodings).run(
        spec.method, demo_training(spec, run_dir, config)
    )
    scores = run.scores
    row = _row(spec.name, trainable_share_of(spec.method), run.train_seconds, scores)
    return ScoredRun(row, scores.prompt_records, scores.calibration.to_dict())


def _start_jobs(pool: Any, jobs: list[tuple], progress: Any) -> list[Future | ScoredRun]:
    """Start ``train_and_score`` jobs: submitted to the pool if any (they run while the caller goes on, queued behind
    jobs started before), else run here one after the other. `_job_results` gives their results."""
    if pool is not None:
        return [pool.submit(train_and_score, *job) for job in jobs]
    results = []
    for job in jobs:
        progress.set_postfix_str(job[0].name)
        results.append(train_and_score(*job))
        _announce(results[-1].row, progress)
    return results


def _job_results(started: list[Future | ScoredRun], progress: Any) -> list[ScoredRun]:
    """The results of `_start_jobs`, in order of submission, waiting for the pool's (and announcing their rows)."""
    results = []
    for job in started:
        if isinstance(job, Future):
            job = job.result()
            _announce(job.row, progress)
        results.append(job)
    return results


def _calibrate(pool: Any, domains: list[tuple[EvaluationData, EvaluationSettings]]) -> list[EvaluationCalibration]:
    """`calibrate_domain` of each ``(data, settings)``, in the pool if any (in parallel)."""
    if pool is None:
        return [calibrate_domain(*domain) for domain in domains]
    return [future.result() for future in [pool.submit(calibrate_domain, *domain) for domain in domains]]


def _announce(row: dict[str, Any], progress: Any) -> None:
    """Print a finished row above the progress bar, and advance it."""
    progress.write(
        f"{row['method']}: FID {row['fid']:.2f}, KID {row['kid']:.4f}, AMD {row['amd']:.4f}, extracted {row['extracted']}, "
        f"replication {row['replication']:.2f}, {row['time_s']:.0f} s of training"
    )
    progress.update(1)


def run_search(dataset: Any, output_dir: str, config: DemoConfig) -> Any:
    """The MemControl search on the main domain: NSGA-II over the mask bits and the learning rate, on
    ``config.search_objectives``."""
    unet_config = dict(UNet2DConditionModel.load_config(tiny_pipeline_path(), subfolder="unet"))
    model = meta_unet({k: v for k, v in unet_config.items() if not k.startswith("_")})
    bounds, _ = default_learning_rate_bounds(unet_config)
    space = GenomeSpace.for_model(model, MemControlConfig(method=config.search_method), learning_rate_bounds=bounds)
    loop = InnerLoop(
        ProxyDataSpec(
            dataset.train_dir,
            test_data_dir=dataset.test_dir,
            fraction=config.proxy_fraction,
            num_memorization=config.proxy_num_memorization,
            repeats=config.proxy_repeats,
            seed=config.seed,
        ),
        objectives=list(config.search_objectives),
        training=TrainingConfig(
            max_train_steps=config.search_train_steps,
            train_batch_size=config.train_batch_size,
            caption_dropout_probability=config.caption_dropout_probability,
            seed=config.seed,
        ),
        evaluation=replace(
            SEARCH_EVALUATION,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            feature=config.feature,
            seed=config.seed,
            num_fid_images=config.search_fid_images,
        ),
    )
    search_config = SearchConfig(
        population_size=config.population_size, generations=config.generations, seed=config.seed
    )
    executor: Any = "serial"
    if config.num_workers > 1:
        executor = ProcessExecutor(num_workers=config.num_workers)
    searcher = MaskSearcher(
        space, loop, config=search_config, output_dir=output_dir, executor=executor, progress=config.progress
    )
    result = searcher.run(resume=False)
    write_search_outputs(result, output_dir)
    return result


def fidelity_spec(result: Any, choice: FidelityCandidate) -> MethodSpec:
    """A searched mask of the fidelity sample as a row to fine-tune fully (its own learning rate)."""
    point = FrontPoint(choice.candidate, choice.scores, choice.record)
    name = f"searched mask {choice.candidate.key} ({choice.role})"
    return MethodSpec(name, result.to_config(point), choice.candidate.learning_rate or 1e-2)


def fidelity_report(fidelity_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The proxy-fidelity measurement of the demo's search: its sample's inner-loop and full scores, and per
    objective the rank correlation with the full counterpart (`measure_proxy_fidelity`), as markdown and data; with
    fewer than `MIN_CANDIDATES` masks (``--fidelity_front 0 --fidelity_other 0``: the knee only) a line saying why there
    is no correlation."""
    if len(fidelity_rows) < MIN_CANDIDATES:
        return {
            "candidates": fidelity_rows,
            "markdown": f"No rank correlation: {len(fidelity_rows)} fully fine-tuned mask(s), and a rank correlation "
            f"needs at least {MIN_CANDIDATES} (raise --fidelity_front / --fidelity_other).",
            "verdicts": {},
        }
    measured = measure_proxy_fidelity([row["proxy"] for row in fidelity_rows], [row["full"] for row in fidelity_rows])
    return {
        "candidates": fidelity_rows,
        "markdown": measured.to_markdown(),
        "verdicts": {row.objective: row.verdict for row in measured.rows},
    }


def _row(name: str, share: float, seconds: float, scores: ModelScores) -> dict[str, Any]:
    return {"method": name, "trainable_share": share, **scores.table_values(), "time_s": seconds}


def run_demo(config: DemoConfig | None = None, output_dir: str = "memcontrol-demo") -> dict[str, Any]:
    """Run the whole demo and write its report into ``output_dir``; returns the summary (rows and paths)."""
    config = config or DemoConfig()
    if config.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if config.device != "cuda":
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the worker processes
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    work = os.path.join(output_dir, "work")
    main = build_domain(config.domain, os.path.join(work, "data", config.domain), config)
    other = build_domain(config.transfer_domain, os.path.join(work, "data", config.transfer_domain), config)
    main_data, main_settings = load_evaluation_data(main), config.evaluation_settings(config.domain)
    other_data, other_settings = load_evaluation_data(other), config.evaluation_settings(config.transfer_domain)

    specs = baseline_specs(config)
    progress = tqdm(total=len(specs) + 4, desc="Demo", unit="stage", disable=not config.progress)
    pool = None
    if config.num_workers > 1:
        pool = ProcessPoolExecutor(
            config.num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(config.device,),
        )
    try:
        main_calibration, other_calibration = _calibrate(
            pool, [(main_data, main_settings), (other_data, other_settings)]
        )
        runs = os.path.join(work, "runs")
        main_job = (main_data, main_settings, config, main_calibration)
        other_job = (other_data, other_settings, config, other_calibration)
        jobs = [(spec, main.train_dir, os.path.join(runs, f"{index}"), *main_job) for index, spec in enumerate(specs)]
        # Full fine-tuning on the transfer domain does not wait for the search: it runs with the baselines.
        jobs.append((specs[0], other.train_dir, os.path.join(runs, "transfer-full"), *other_job))
        # The search does not wait for the baselines: its workers share the cores with the pool's, so that no core
        # idles while the last baselines finish (every job is seeded: results do not depend on the overlap).
        baseline_jobs = _start_jobs(pool, jobs, progress)

        progress.set_postfix_str("mask search")
        search_start = time.perf_counter()
        result = run_search(main, os.path.join(output_dir, "search"), config)
        search_seconds = time.perf_counter() - search_start
        knee = result.knee()
        searched = MethodSpec(SEARCHED, result.to_config(knee), knee.candidate.learning_rate or 1e-2)
        progress.update(1)

        sample = [
            choice
            for choice in select_fidelity_candidates(
                result, config.fidelity_front, config.fidelity_other, seed=config.seed
            )
            if choice.candidate.key != knee.candidate.key  # the knee's full run is the searched row
        ]
        progress.total += len(sample)
        jobs = [
            (searched, main.train_dir, os.path.join(runs, "searched"), *main_job),
            (searched, other.train_dir, os.path.join(runs, "transfer-searched"), *other_job),
        ]
        jobs += [
            (fidelity_spec(result, choice), main.train_dir, os.path.join(runs, f"fidelity-{index}"), *main_job)
            for index, choice in enumerate(sample)
        ]
        later_jobs = _start_jobs(pool, jobs, progress)
        *baselines, transfer_full = _job_results(baseline_jobs, progress)
        searched_main, searched_transfer, *sample_runs = _job_results(later_jobs, progress)
    finally:
        if pool is not None:
            pool.shutdown()
    progress.close()
    rows = [run.row for run in [*baselines, searched_main]]
    records = {run.row["method"]: run.records for run in [*baselines, searched_main]}
    transfer_rows = [transfer_full.row, searched_transfer.row]
    calibrations = {config.domain: searched_main.calibration, config.transfer_domain: searched_transfer.calibration}
    fidelity_rows = [
        {"role": "knee", "key": knee.candidate.key, "proxy": dict(knee.scores), "full": searched_main.row},
        *(
            {"role": choice.role, "key": choice.candidate.key, "proxy": choice.scores, "full": run.row}
            for choice, run in zip(sample, sample_runs)
        ),
    ]
    fidelity = fidelity_report(fidelity_rows)
    draw_plots(result, os.path.join(output_dir, "search"), [row["proxy"] for row in fidelity_rows])

    mask = knee.candidate.mask.to_dict() if hasattr(knee.candidate.mask, "to_dict") else dict(knee.candidate.mask)
    search = {
        "method": config.search_method,
        "learning_rate": knee.candidate.learning_rate or 0.0,
        "mask": mask,
        "on": [unit for unit, on in mask.items() if on],
        "units_on": sum(bool(on) for on in mask.values()),
        "num_units": len(mask),
        "scores": knee.scores,
        "front_size": len(result.front),
        "evaluations": len(result.records),
        "seconds": search_seconds,
    }
    elapsed = time.perf_counter() - start
    paths = write_report(
        output_dir, rows, transfer_rows, records, config.to_dict(), search, SEARCHED, elapsed, calibrations, fidelity
    )
    paths["front.png"] = os.path.join(output_dir, "search", "front.png")
    return {"rows": rows, "transfer": transfer_rows, "search": search, "paths": paths, "seconds": elapsed}


def run_demo_seeds(config: DemoConfig, seeds: list[int], output_dir: str = "memcontrol-demo") -> dict[str, Any]:
    """The demo once per seed (``output_dir/seed-<seed>``), and a report over the seeds in ``output_dir``: per method
    the mean and spread of every score, per seed whether the searched mask is Pareto-dominated, and the verdict."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"Give distinct seeds, got {seeds}.")
    start = time.perf_counter()
    summaries = {
        seed: run_demo(replace(config, seed=seed), os.path.join(output_dir, f"seed-{seed}")) for seed in seeds
    }
    paths = write_seeds_report(output_dir, summaries, SEARCHED)
    return {"seeds": summaries, "paths": paths, "seconds": time.perf_counter() - start}
