"""The flags of the ``memcontrol`` subcommands, importable without torch.

Each subcommand's handler (`peft_memcontrol.cli.search`, ``.demo``, ``.report``) is imported only after its flags
are parsed and checked (`Handler`): ``--help`` and argument errors come before torch, diffusers and PEFT are loaded.
Choices and defaults come from `peft_memcontrol.constants`, the modules' torch-free lists.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ..constants import (
    DEFAULT_FEATURE,
    METHOD_NAMES,
    OBJECTIVE_NAMES,
    SURROGATES,
    TRAIN_STEPS_PER_BUDGET,
    TRANSFORMERS_ALIASES,
)


class Handler:
    """A subcommand's handler: the function ``function`` of the module ``peft_memcontrol.cli.<command>``, imported
    when the handler is called, after ``check`` (cheap checks of the flags: the reason they cannot be used, or
    ``None``) has passed.

    Calling it returns the command's exit status: 2, with the reason on stderr, when ``check`` refuses the flags.
    """

    def __init__(
        self, command: str, function: str, check: Callable[[argparse.Namespace], str | None] | None = None
    ) -> None:
        self.command = command
        self.__name__ = function
        self.check = check

    def __call__(self, args: argparse.Namespace) -> int:
        problem = self.check(args) if self.check is not None else None
        if problem is not None:
            print(f"memcontrol {self.command}: error: {problem}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"{__package__}.{self.command}")
        return getattr(module, self.__name__)(args)


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
    method.add_argument("--method", choices=METHOD_NAMES, default="svdiff", help="The method the masks apply to.")
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
        choices=OBJECTIVE_NAMES,
        default=["copy_similarity", "kid"],
        metavar="OBJECTIVE",
        help=f"Two or three objectives, all minimized; choose from {', '.join(OBJECTIVE_NAMES)}. The default "
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
    parser.set_defaults(handler=Handler("search", "run_search", check=invalid_search_flags))


class SearchHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help, the description laid out as written."""


def invalid_search_flags(args: argparse.Namespace) -> str | None:
    """Why the search's flags cannot be used, checked before anything is imported or trained, or ``None``."""
    for name in ("fidelity_front", "fidelity_other"):
        if getattr(args, name) < 0:
            return f"--{name} must be at least 0, got {getattr(args, name)}."
    for name in ("fidelity_train_steps", "fidelity_num_fid_images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return f"--{name} must be at least 1, got {getattr(args, name)}."
    if args.noise_runs < 1:
        return f"--noise_runs must be at least 1, got {args.noise_runs}."
    return None


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``demo`` subcommand: the paper's experiment in miniature on the tiny pipeline (`peft_memcontrol.demo`)."""
    parser = subparsers.add_parser(
        "demo",
        help="Full fine-tuning vs PEFT vs mitigations vs a searched mask, offline, with a report.",
        description="Fine-tune the embedded tiny pipeline on handwritten digits with a duplicated subset with every "
        "baseline and a searched MemControl mask, score memorization and quality, transfer the mask to faces, and "
        "write a report (results.md/.csv, transfer.md/.csv, nearest.png, search/front.png). Default: about 16-18 "
        "minutes on a 2-core CPU; --quick: about 3-4.",
    )
    parser.add_argument("--output_dir", default="memcontrol-demo", help="Report folder.")
    parser.add_argument("--quick", action="store_true", help="The small preset (about 3-4 minutes on a CPU).")
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
    parser.add_argument(
        "--fidelity_front",
        type=int,
        default=None,
        help="Front masks (extremes first, then the knee) fully fine-tuned, beside the knee's row, to check the inner "
        "loop's ranking (default 3; quick: 2; 0 and --fidelity_other 0: the knee's row only, no correlation).",
    )
    parser.add_argument(
        "--fidelity_other",
        type=int,
        default=None,
        help="Masks off the front fully fine-tuned for the same check (default 2; quick: 1).",
    )
    parser.add_argument("--num_workers", type=int, default=None, help="Parallel processes (default 2; 1: none).")
    parser.add_argument("--no_progress", action="store_true")
    parser.set_defaults(handler=Handler("demo", "run_demo"))


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
    parser.set_defaults(handler=Handler("report", "run_report"))


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_search_parser,
    add_demo_parser,
    add_report_parser,
]
"""Functions that add one subcommand each to the ``memcontrol`` parser."""
