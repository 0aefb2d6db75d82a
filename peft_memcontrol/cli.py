"""The ``memcontrol`` command. Subcommands register themselves in `SUBCOMMANDS` (``search``, ``demo`` and ``report``
here; more can be added with their own ``add_<name>_parser`` function).

    memcontrol search --train_data_dir faces --test_data_dir faces-test --objectives copy_similarity kid \\
        --population_size 20 --generations 10 --max_train_steps 100 --output_dir search-out

Without ``--train_data_dir`` it searches on the package's tiny pipeline and the LFW demo set (offline, CPU); with
``--synthetic 10`` it searches a closed-form toy problem instead of training (to try the tool and its outputs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from .counting import meta_unet
from .demo import runner as demo_runner
from .demo.config import DemoConfig
from .evaluation import RunComparisonError, combined_report, load_run, runs_picture
from .metrics.features import DEFAULT_FEATURE, TRANSFORMERS_ALIASES
from .sample_data import build_faces_dataset
from .search import (
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
from .search.config import SURROGATES, default_population_size
from .search.fidelity_check import TRAIN_STEPS_PER_BUDGET, check_proxy_fidelity
from .search.genome import default_learning_rate_bounds
from .search.inner_loop import SEARCH_EVALUATION, InnerLoop, ProxyDataSpec, TrainableShareConstraint
from .search.journal import JournalError
from .search.lock import SearchFolderBusyError
from .search.objectives import BUILTIN_OBJECTIVES
from .search.report import push_mask_to_hub, write_search_outputs
from .tiny_sd import tiny_pipeline_path
from .training import TrainingConfig
from .tuners import METHODS, MemControlConfig


logger = logging.getLogger("memcontrol")


SEARCH_DESCRIPTION = """\
Search MemControl masks with NSGA-II: which parts of the UNet to fine-tune (and at what learning rate) so that the
model learns your data well without memorizing it. Every candidate mask is fine-tuned briefly on a proxy set (a
fraction of your data plus a few images repeated many times, to provoke memorization) and scored on the objectives,
all minimized. The search writes the Pareto front, a report and one folder per chosen mask (knee, least memorization,
best quality), each usable as --mask of examples/train_text_to_image_memcontrol.py. After the search, a few front
and other masks are fine-tuned on all of your data and evaluated, to measure whether the inner loop ranks masks like
the full fine-tune (fidelity.md; --fidelity_front 0 --fidelity_other 0 skips it).

A search resumes its --output_dir when run again with the same settings. Without --train_data_dir it searches the
package's tiny pipeline on the LFW demo faces (offline, CPU); --synthetic N searches a closed-form toy problem
instead of training, to try the tool and its outputs.

example:
  memcontrol search --train_data_dir faces --test_data_dir faces-test --objectives copy_similarity kid \\
      --population_size 20 --generations 10 --max_train_steps 100 --output_dir search-out
"""


class DeprecatedFlag(argparse.Action):
    """A flag kept under an old name: sets ``dest`` like ``store_true`` and warns with the new name."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_flag: str, **kwargs: Any) -> None:
        self.new_flag = new_flag
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any):
        warnings.warn(f"{option} is deprecated and will be removed: use {self.new_flag}.", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, True)


def add_search_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``search`` subcommand: flags of the launch script, plus population, generations, objectives, budget and
    executor."""
    parser = subparsers.add_parser(
        "search",
        help="Search MemControl masks with NSGA-II.",
        description=SEARCH_DESCRIPTION,
        formatter_class=SearchHelpFormatter,
    )
    model = parser.add_argument_group("model and data")
    model.add_argument(
        "--pretrained_model_name_or_path",
        default=None,
        help="Path to a diffusers Stable Diffusion 1.x/2.x pipeline or its Hub id. None: the embedded tiny pipeline.",
    )
    model.add_argument(
        "--train_data_dir",
        default=None,
        help="Image folder with metadata.jsonl or metadata.csv (datasets' imagefolder convention). None: the LFW "
        "demo faces.",
    )
    model.add_argument(
        "--test_data_dir", default=None, help="Held-out image folder, for the fid, kid and val_loss objectives."
    )
    model.add_argument(
        "--resolution", type=int, default=None, help="Image size of training and scoring. None: the model's own."
    )
    model.add_argument(
        "--proxy_fraction", type=float, default=0.01, help="Fraction of the training rows in the proxy set."
    )
    model.add_argument(
        "--proxy_num_memorization",
        type=int,
        default=10,
        help="Training images repeated in the proxy set, to provoke memorization (the memorization objectives "
        "attack their captions).",
    )
    model.add_argument(
        "--proxy_repeats", type=int, default=50, help="How often each of those images is repeated in the proxy set."
    )

    method = parser.add_argument_group("method and genome")
    method.add_argument("--method", choices=tuple(METHODS), default="svdiff", help="The method the masks apply to.")
    method.add_argument(
        "--mask_semantics",
        choices=("paper", "strict"),
        default="paper",
        help="'paper': a 0 bit freezes only the method's parameters inside that slot's transformer blocks, as the "
        "reference code does; 'strict': nothing outside the selected units is adapted.",
    )
    method.add_argument(
        "--granularity",
        choices=("slot", "block", "layer"),
        default="slot",
        help="What one bit of a mask switches: a slot (an attention container, 16 on SD-1.5), a block or a layer.",
    )
    method.add_argument(
        "--no_reference_layout",
        action="store_true",
        help="Search every unit of the granularity, not the reference code's 13 bits.",
    )
    method.add_argument(
        "--learning_rate_min",
        type=float,
        default=None,
        help="Low end of the learning-rate gene. None: by model size (SD-1.5 size: 1e-5, small UNets: 1e-3).",
    )
    method.add_argument(
        "--learning_rate_max",
        type=float,
        default=None,
        help="High end of the learning-rate gene. None: by model size (SD-1.5 size: 1e-3, small UNets: 3e-2).",
    )
    method.add_argument(
        "--learning_rate", type=float, default=None, help="Fix the learning rate (the genome then has no lr gene)."
    )

    train = parser.add_argument_group("inner loop (training and scoring of each candidate)")
    train.add_argument(
        "--objectives",
        nargs="+",
        choices=tuple(BUILTIN_OBJECTIVES),
        default=["copy_similarity", "kid"],
        metavar="OBJECTIVE",
        help=f"Two or three objectives, all minimized; choose from {', '.join(BUILTIN_OBJECTIVES)}. The default "
        "pairs copy_similarity (rises when the model copies memorization images whatever the prompt; the noise_norm "
        "reward falls in that case) with kid (unbiased at a few hundred images, unlike fid).",
    )
    train.add_argument(
        "--max_train_steps", type=int, default=100, help="Fine-tuning steps of a candidate at full budget (K)."
    )
    train.add_argument("--train_batch_size", type=int, default=8, help="Batch size of the candidates' fine-tuning.")
    train.add_argument(
        "--mixed_precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="Mixed precision of the fine-tuning. None: accelerate's configuration.",
    )
    train.add_argument(
        "--caption_dropout_probability",
        type=float,
        default=0.1,
        help='Probability of replacing a caption by "" while fine-tuning (for classifier-free guidance).',
    )
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the search, the proxy set and every candidate's training and generations.",
    )
    train.add_argument(
        "--num_fid_images", type=int, default=100, help="Held-out prompts generated for the fid and kid objectives."
    )
    train.add_argument(
        "--num_inference_steps", type=int, default=50, help="Sampling steps of every generation while scoring."
    )
    train.add_argument(
        "--guidance_scale", type=float, default=4.0, help="Classifier-free guidance scale of every generation."
    )
    train.add_argument(
        "--num_extraction_generations",
        type=int,
        default=10,
        help="Generations per attacked prompt for the extraction, neg_amd and copy_similarity objectives.",
    )
    train.add_argument(
        "--feature",
        default=DEFAULT_FEATURE,
        help=f"Feature space of fid, kid, neg_amd and copy_similarity: {DEFAULT_FEATURE} (offline), inception (the "
        f"standard FID space, downloads its weights once), {', '.join(TRANSFORMERS_ALIASES)}, or the id or path of "
        "a Hugging Face image model in the local cache.",
    )

    search = parser.add_argument_group("search")
    search.add_argument(
        "--population_size",
        type=int,
        default=None,
        help="Masks in each NSGA-II generation. None: 10 when --max_evaluations is at most 100, else 20 (measured in "
        "benchmarks/results/search_efficiency.md).",
    )
    search.add_argument("--generations", type=int, default=10, help="NSGA-II generations after the first.")
    search.add_argument(
        "--max_evaluations",
        type=int,
        default=None,
        help="Stop after this many evaluations (each is a fine-tuning run; cache hits are free). None: --generations "
        "alone decides. May grow when a search is resumed.",
    )
    search.add_argument(
        "--surrogate",
        choices=SURROGATES,
        default="gp",
        help="gp: a Gaussian process fitted on the evaluations so far screens --surrogate_pool times more offspring "
        "and only the most promising are trained; none: plain NSGA-II.",
    )
    search.add_argument(
        "--surrogate_pool", type=int, default=20, help="Candidate offspring screened per offspring trained (gp)."
    )
    search.add_argument(
        "--learning_rate_tolerance",
        type=float,
        default=0.025,
        help="A learning rate within this relative distance of one already trained for the same mask counts as that "
        "candidate (drawn again instead of trained).",
    )
    search.add_argument(
        "--num_offspring", type=int, default=None, help="Children per generation. None: the population size."
    )
    search.add_argument(
        "--crossover_probability", type=float, default=0.9, help="Probability that two parents are crossed over."
    )
    search.add_argument(
        "--mutation_probability",
        type=float,
        default=1.0,
        help="Probability that a child is mutated (each gene then with probability 1 / number of genes).",
    )
    search.add_argument(
        "--fidelities",
        type=float,
        nargs="+",
        default=[1.0],
        help="Training budgets as fractions of --max_train_steps, e.g. 0.25 1.0: candidates are scored at the low "
        "budget first and the best --promote_fraction are promoted to the next (multi-fidelity).",
    )
    search.add_argument(
        "--promote_fraction",
        type=float,
        default=0.5,
        help="Share of the candidates of one fidelity promoted to the next.",
    )
    search.add_argument(
        "--max_trainable_share",
        type=float,
        default=None,
        help="Constraint: masks that train more than this share of the UNet's parameters (e.g. 0.0002) are "
        "infeasible. None: no constraint.",
    )
    search.add_argument(
        "--executor",
        choices=("serial", "process", "ray"),
        default="serial",
        help="Where candidates run: one after the other in this process, in a process pool, or on a Ray cluster.",
    )
    search.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="Processes of --executor process. None: one per --gpus id, else 2.",
    )
    search.add_argument(
        "--gpus", type=int, nargs="*", default=None, help="GPU ids for --executor process, one worker each."
    )
    search.add_argument(
        "--gpus_per_task", type=float, default=0.0, help="GPUs each candidate asks for under --executor ray."
    )
    search.add_argument("--ray_address", default=None, help="Address of the Ray cluster. None: start a local one.")
    search.add_argument(
        "--no_resume",
        action="store_true",
        help="Start a new search, and stop with an error if --output_dir already holds one (by default a search "
        "continues the one in its --output_dir, and only when its settings are the same).",
    )
    search.add_argument(
        "--restart", dest="no_resume", action=DeprecatedFlag, new_flag="--no_resume", help="Deprecated: --no_resume."
    )
    search.add_argument(
        "--svd_cache_dir",
        default=None,
        help="Folder where SVDiff's decompositions of the base weights are kept on disk, so that every worker, a "
        "restarted search and later searches on the same base model decompose each weight once (about 4 GB for "
        "SD-1.5). None: in memory only, once per worker.",
    )
    search.add_argument(
        "--retry_failed",
        choices=("transient", "all", "none"),
        default="transient",
        help="Which failed candidates a resumed search evaluates again: those that failed through no fault of their "
        "own (out of memory, full disk, lost GPU or worker), all of them, or none.",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir", default="memcontrol-search", help="Folder of the journal, checkpoints, front and report."
    )
    output.add_argument(
        "--max_quality",
        type=float,
        default=None,
        help="Bound on the quality objective for the least-memorization pick. None: no bound.",
    )
    output.add_argument(
        "--max_memorization",
        type=float,
        default=None,
        help="Bound on the memorization objective for the best-quality pick. None: no bound.",
    )
    output.add_argument(
        "--noise_runs",
        type=int,
        default=3,
        help="After the search, train the knee's mask this many times in all (other seeds) to measure how much one "
        "evaluation varies, and warn about objectives whose spread between candidates is within it. 1: skip.",
    )
    output.add_argument(
        "--no_base_model_scores",
        action="store_true",
        help="Do not score the base model (not fine-tuned) with the objectives, as a reference point on the front.",
    )
    fidelity = parser.add_argument_group(
        "proxy fidelity (after the search: do the inner-loop scores rank masks like the full fine-tune?)"
    )
    fidelity.add_argument(
        "--fidelity_front",
        type=int,
        default=3,
        help="Front masks (extremes and knee first) fully fine-tuned and evaluated after the search, to measure the "
        "rank correlation of each objective with its full-evaluation counterpart (fidelity.md, fidelity.json). "
        "0 with --fidelity_other 0: not measured.",
    )
    fidelity.add_argument(
        "--fidelity_other",
        type=int,
        default=2,
        help="Masks off the front (drawn with --seed) fully fine-tuned and evaluated for the same measurement.",
    )
    fidelity.add_argument(
        "--fidelity_train_steps",
        type=int,
        default=None,
        help="Steps of each full fine-tune, on every training row. None: "
        f"{TRAIN_STEPS_PER_BUDGET} x --max_train_steps.",
    )
    fidelity.add_argument(
        "--fidelity_num_fid_images",
        type=int,
        default=None,
        help="Held-out prompts generated for the full evaluation's FID and KID. None: every held-out image.",
    )
    output.add_argument(
        "--push_to_hub", action="store_true", help="Push the knee mask to the Hub, with the front in its card."
    )
    output.add_argument(
        "--hub_model_id", default=None, help="The Hub repository to push to. None: the name of --output_dir."
    )
    output.add_argument("--no_progress", action="store_true", help="Hide the progress bar.")

    toy = parser.add_argument_group("synthetic problem (no training)")
    toy.add_argument(
        "--synthetic",
        type=int,
        default=None,
        metavar="N_BITS",
        help="Search a closed-form problem of N_BITS mask bits instead of training.",
    )
    toy.add_argument(
        "--synthetic_noise", type=float, default=0.0, help="Error of the synthetic objectives at budgets below 1."
    )
    toy.add_argument(
        "--synthetic_evaluation_noise",
        type=float,
        default=0.0,
        help="Error of the synthetic objectives at every budget, drawn anew for each training run (as a seed's luck).",
    )
    toy.add_argument("--synthetic_delay", type=float, default=0.0, help="Seconds each synthetic evaluation waits.")
    parser.set_defaults(handler=run_search)


class SearchHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help, the description laid out as written."""


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_search_parser]
"""Functions that add one subcommand each (``search``; a ``demo`` subcommand can be appended)."""


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``demo`` subcommand: the paper's experiment in miniature on the tiny pipeline (`peft_memcontrol.demo`)."""
    parser = subparsers.add_parser(
        "demo",
        help="Full fine-tuning vs PEFT vs mitigations vs a searched mask, offline, with a report.",
        description="Fine-tune the embedded tiny pipeline on handwritten digits with a duplicated subset with every "
        "baseline and a searched MemControl mask, score memorization and quality, transfer the mask to faces, and "
        "write a report (results.md/.csv, transfer.md/.csv, nearest.png, search/front.png). Default: about 15 "
        "minutes on a 2-core CPU; --quick: about 4.",
    )
    parser.add_argument("--output_dir", default="memcontrol-demo", help="Report folder.")
    parser.add_argument("--quick", action="store_true", help="The small preset (about 4 minutes on a CPU).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="Default: cuda when available.")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None)
    seeds.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="Run once per seed and report mean ± spread and, per seed, whether the searched mask is dominated.",
    )
    parser.add_argument("--max_train_steps", type=int, default=None, help="Steps of every fine-tuning.")
    parser.add_argument("--train_batch_size", type=int, default=None)
    parser.add_argument("--num_generations", type=int, default=None, help="Attack generations per memorized prompt.")
    parser.add_argument("--num_inference_steps", type=int, default=None)
    parser.add_argument("--population_size", type=int, default=None, help="NSGA-II population.")
    parser.add_argument("--generations", type=int, default=None, help="NSGA-II generations after the first.")
    parser.add_argument("--search_train_steps", type=int, default=None, help="Inner-loop steps per candidate.")
    parser.add_argument("--num_workers", type=int, default=None, help="Parallel processes (default 2; 1: none).")
    parser.add_argument("--no_progress", action="store_true")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo with the preset and overrides of the flags; prints the table and the report's paths."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device != "cuda":
        torch.set_num_threads(1)  # tiny models: threads only add contention
    overrides = {
        name: getattr(args, name)
        for name in (
            "seed",
            "device",
            "max_train_steps",
            "train_batch_size",
            "num_generations",
            "num_inference_steps",
            "population_size",
            "generations",
            "search_train_steps",
            "num_workers",
        )
    }
    config = DemoConfig.preset_config("quick" if args.quick else "default", progress=not args.no_progress, **overrides)
    if args.seeds:
        summary = demo_runner.run_demo_seeds(config, args.seeds, args.output_dir)
    else:
        summary = demo_runner.run_demo(config, args.output_dir)
    with open(summary["paths"]["results.md"], encoding="utf-8") as handle:
        print(handle.read())
    print(f"Report in {os.path.abspath(args.output_dir)} ({summary['seconds']:.0f} s)")
    return 0


SUBCOMMANDS.append(add_demo_parser)


def add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``report`` subcommand: several ``evaluate_memorization.py`` runs in one table."""
    parser = subparsers.add_parser(
        "report",
        help="Several evaluation runs (folders of examples/evaluate_memorization.py) in one table.",
        description="Gather evaluation runs into one markdown table with each run's verdict and the calibration "
        "they share. Runs scored differently (other data, generation settings, feature space or thresholds) are "
        "refused, naming the differences.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="Folders holding a results.json.")
    parser.add_argument("--output", default=None, help="Also write the report to this markdown file.")
    parser.add_argument(
        "--nearest_picture",
        default=None,
        help="PNG of each run's attack generations beside their nearest training images, for the prompts the first "
        "run copies most closely. Default with --output: <output>-nearest.png beside it.",
    )
    parser.add_argument(
        "--allow_different_settings",
        action="store_true",
        help="Write the table even when the runs were scored differently, with the differences listed above it.",
    )
    parser.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Print (and write) the combined report and its nearest-neighbour picture; exit status 2 when the runs cannot
    share a table, or the picture asked for by ``--nearest_picture`` cannot be drawn."""
    try:
        runs = [load_run(folder) for folder in args.runs]
        report = combined_report(runs, args.allow_different_settings)
    except (RunComparisonError, FileNotFoundError, ValueError) as error:
        print(f"memcontrol report: error: {error}", file=sys.stderr)
        return 2
    picture = args.nearest_picture
    if picture is None and args.output:
        picture = os.path.splitext(args.output)[0] + "-nearest.png"
    if picture is not None:
        try:
            runs_picture(runs, picture)
        except (FileNotFoundError, ValueError, ImportError) as error:
            if args.nearest_picture is not None:
                print(f"memcontrol report: error: {error}", file=sys.stderr)
                return 2
            print(f"memcontrol report: no nearest-neighbour picture: {error}", file=sys.stderr)
        else:
            folder = os.path.dirname(os.path.abspath(args.output)) if args.output else os.getcwd()
            link = os.path.relpath(os.path.abspath(picture), folder)
            report += f"\n![the attack's generations of each run beside their nearest training images]({link})\n"
    print(report)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(report)
    return 0


SUBCOMMANDS.append(add_report_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memcontrol", description="MemControl: mask search for PEFT fine-tuning.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


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


def _invalid_fidelity_flags(args: argparse.Namespace) -> str | None:
    """Why the proxy-fidelity flags cannot be used (checked before the search, not after it), or ``None``."""
    for name in ("fidelity_front", "fidelity_other"):
        if getattr(args, name) < 0:
            return f"--{name} must be at least 0, got {getattr(args, name)}."
    for name in ("fidelity_train_steps", "fidelity_num_fid_images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return f"--{name} must be at least 1, got {getattr(args, name)}."
    return None


def run_search(args: argparse.Namespace) -> int:
    """Run (or resume) a search and write its outputs; returns the exit status: 0, 1 when no candidate succeeded
    (the outputs are still written, and the counts by status and the first error printed), 2 when the output folder
    cannot be resumed (other settings, a damaged journal or checkpoint, ``--no_resume`` on an existing search, or another
    search running in it)."""
    invalid = _invalid_fidelity_flags(args)
    if invalid is not None:
        print(f"memcontrol search: error: {invalid}", file=sys.stderr)
        return 2
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
    if args.noise_runs < 1:
        print(f"memcontrol search: error: --noise_runs must be at least 1, got {args.noise_runs}.", file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``memcontrol`` console script."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
