"""``run_demo``: the paper's experiment in miniature, on the embedded tiny pipeline, offline.

1. Fine-tune the baselines on the faces: full fine-tuning, SVDiff, DiffFit and attention tuning (every slot on),
   full fine-tuning with random word addition, and with Wen et al.'s noise-norm filtering.
2. Search an SVDiff mask with `MaskSearcher` (NSGA-II, `InnerLoop` on a proxy set, noise norm vs FID), fine-tune the
   knee of the front on the full faces set.
3. Score every model the same way (`peft_memcontrol.demo.evaluate`).
4. Fine-tune the unchanged mask, and full fine-tuning, on the digits (another domain) and score both.
5. Write the report folder (`peft_memcontrol.demo.report`).

Every fine-tuning goes through `MemControlTrainer`, every score through `peft_memcontrol.metrics`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import DemoConfig
from .data import build_digits_dataset, build_faces_dataset
from .evaluate import EvaluationData, ModelScores, evaluate_model, load_evaluation_data
from .report import write_report


logger = logging.getLogger(__name__)

FULL = "full fine-tuning"
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
    from ..training import RandomWordAddition
    from ..tuners import DiffFitConfig, MaskedAttentionConfig, SVDiffConfig

    rates = config.learning_rates
    return [
        MethodSpec(FULL, "full", rates["full"]),
        MethodSpec("SVDiff (all slots)", SVDiffConfig(), rates["svdiff"]),
        MethodSpec("DiffFit (all slots)", DiffFitConfig(), rates["difffit"]),
        MethodSpec("attention tuning (all slots)", MaskedAttentionConfig(), rates["attention"]),
        MethodSpec("full + random word addition", "full", rates["full"], (RandomWordAddition(num_words=4),)),
        MethodSpec("full + Wen et al. filtering", "full", rates["full"], noise_norm_threshold="auto"),
    ]


def train_one(spec: MethodSpec, train_dir: str, output_dir: str, config: DemoConfig) -> tuple[Any, float, float]:
    """Fine-tune the tiny pipeline on ``train_dir`` with ``spec``; returns (trainer, trainable share, seconds)."""
    from ..pipelines import tiny_pipeline_path
    from ..training import MemControlTrainer, TrainingConfig, load_training_dataset

    dataset = load_training_dataset(train_data_dir=train_dir, resolution=32)
    training = TrainingConfig(
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
    trainer = MemControlTrainer.from_pretrained(tiny_pipeline_path(), dataset, spec.method, training)
    start = time.perf_counter()
    trainer.train()
    return trainer, trainable_share_of(spec.method), time.perf_counter() - start


def trainable_share_of(method: Any) -> float:
    """Trained parameters as a share of the tiny UNet's (exact count on a meta-device copy; 1 for full)."""
    if isinstance(method, str):
        return 1.0
    from ..counting import meta_unet, trainable_share
    from ..pipelines import TINY_UNET_CONFIG

    return trainable_share(meta_unet(dict(TINY_UNET_CONFIG)), method)


def score(trainer: Any, data: EvaluationData, config: DemoConfig, feature: Any) -> ModelScores:
    """Evaluate a trained model with the demo's settings (adapter applied, not merged)."""
    pipeline = trainer.pipeline()
    trainer.model.eval()
    return evaluate_model(pipeline, data, config, feature)


def run_search(faces: Any, output_dir: str, config: DemoConfig) -> Any:
    """The MemControl search on the faces: NSGA-II over the mask bits and the learning rate, noise norm vs FID."""
    from diffusers import UNet2DConditionModel

    from ..counting import meta_unet
    from ..pipelines import tiny_pipeline_path
    from ..search import GenomeSpace, MaskSearcher, SearchConfig
    from ..search.inner_loop import InnerLoop
    from ..search.report import write_search_outputs
    from ..tuners import MemControlConfig

    unet_config = dict(UNet2DConditionModel.load_config(tiny_pipeline_path(), subfolder="unet"))
    model = meta_unet({k: v for k, v in unet_config.items() if not k.startswith("_")})
    space = GenomeSpace.for_model(
        model, MemControlConfig(method=config.search_method), learning_rate_bounds=(1e-3, 3e-2)
    )
    loop = InnerLoop(
        faces.train_dir,
        objectives=["noise_norm", "fid"],
        test_data_dir=faces.test_dir,
        max_train_steps=config.search_train_steps,
        train_batch_size=config.train_batch_size,
        caption_dropout_probability=config.caption_dropout_probability,
        seed=config.seed,
        proxy_fraction=config.proxy_fraction,
        proxy_num_memorization=config.proxy_num_memorization,
        proxy_repeats=config.proxy_repeats,
        num_fid_images=config.search_fid_images,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        feature=config.feature,
    )
    search_config = SearchConfig(
        population_size=config.population_size, generations=config.generations, seed=config.seed
    )
    searcher = MaskSearcher(space, loop, config=search_config, output_dir=output_dir, progress=config.progress)
    result = searcher.run(resume=False)
    write_search_outputs(result, output_dir)
    return result


def _row(name: str, share: float, seconds: float, scores: ModelScores) -> dict[str, Any]:
    return {"method": name, "trainable_share": share, **scores.table_values(), "time_s": seconds}


def run_demo(config: DemoConfig | None = None, output_dir: str = "memcontrol-demo") -> dict[str, Any]:
    """Run the whole demo and write its report into ``output_dir``; returns the summary (rows and paths)."""
    from ..metrics import get_feature_extractor

    config = config or DemoConfig()
    if config.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    work = os.path.join(output_dir, "work")
    faces = build_faces_dataset(
        os.path.join(work, "data", "faces"),
        config.num_test,
        config.num_memorization,
        config.memorization_repeats,
        config.seed,
    )
    digits = build_digits_dataset(
        os.path.join(work, "data", "digits"),
        config.num_transfer_train,
        config.num_transfer_test,
        config.num_memorization,
        config.memorization_repeats,
        seed=config.seed,
    )
    face_data = load_evaluation_data(faces.train_dir, faces.test_dir, faces.memorization_dir, 32)
    digit_data = load_evaluation_data(digits.train_dir, digits.test_dir, digits.memorization_dir, 32)
    feature = get_feature_extractor(config.feature)

    specs = baseline_specs(config)
    stages = len(specs) + 1 + 1 + 2
    progress = tqdm(total=stages, desc="Demo", unit="stage", disable=not config.progress)
    rows, records = [], {}
    for spec in specs:
        progress.set_postfix_str(spec.name)
        trainer, share, seconds = train_one(spec, faces.train_dir, os.path.join(work, "runs", spec.name), config)
        scores = score(trainer, face_data, config, feature)
        rows.append(_row(spec.name, share, seconds, scores))
        records[spec.name] = scores.prompt_records
        progress.update(1)

    progress.set_postfix_str("mask search")
    search_start = time.perf_counter()
    result = run_search(faces, os.path.join(output_dir, "search"), config)
    search_seconds = time.perf_counter() - search_start
    knee = result.knee()
    searched = MethodSpec(SEARCHED, result.to_config(knee), knee.candidate.learning_rate or 1e-2)
    progress.update(1)

    progress.set_postfix_str(SEARCHED)
    trainer, share, seconds = train_one(searched, faces.train_dir, os.path.join(work, "runs", "searched"), config)
    scores = score(trainer, face_data, config, feature)
    rows.append(_row(SEARCHED, share, seconds, scores))
    records[SEARCHED] = scores.prompt_records
    progress.update(1)

    transfer_rows = []
    for spec in (specs[0], searched):
        progress.set_postfix_str(f"digits: {spec.name}")
        trainer, share, seconds = train_one(
            spec, digits.train_dir, os.path.join(work, "runs", f"digits-{spec.name}"), config
        )
        transfer_rows.append(_row(spec.name, share, seconds, score(trainer, digit_data, config, feature)))
        progress.update(1)
    progress.close()

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
    paths = write_report(output_dir, rows, transfer_rows, records, config.to_dict(), search, SEARCHED, elapsed)
    paths["front.png"] = os.path.join(output_dir, "search", "front.png")
    return {"rows": rows, "transfer": transfer_rows, "search": search, "paths": paths, "seconds": elapsed}
