"""MemControl's outer loop: a multi-objective (NSGA-II) search for the mask that trades memorization against quality.

`MaskSearcher` evaluates genomes (`GenomeSpace`: mask bits or per-unit method choices, plus a learning-rate gene)
with an evaluator: `InnerLoop` trains each candidate with the project's trainer and scores it with the metrics
package; `SyntheticMaskProblem` is a closed-form stand-in. Results are a `SearchResult` whose front points become
`MemControlConfig` objects; `write_search_outputs` writes the front, hypervolume, plots and chosen masks.
`peft_memcontrol.search.fidelity` measures whether the inner loop ranks masks like the full fine-tune, and
`check_proxy_fidelity` runs that check after a search (`FullFineTune`: the full fine-tune and evaluation of one method).
"""

from .candidate_run import WORST_VALUE, run_candidate
from .config import SearchConfig
from .executors import ProcessExecutor, RayExecutor, SerialExecutor, get_executor
from .fidelity import (
    DEFAULT_FULL_COUNTERPARTS,
    FidelityCandidate,
    FullCounterpart,
    ProxyFidelity,
    measure_proxy_fidelity,
    rank_correlation,
    select_fidelity_candidates,
)
from .fidelity_check import FidelityCheck, check_proxy_fidelity
from .full_run import FullFineTune, FullRun
from .genome import METHOD_CHOICES, Candidate, GenomeSpace
from .inner_loop import InnerLoop, TrainableShareConstraint
from .journal import Journal, atomic_write_json
from .lock import SearchFolderBusyError
from .pareto import best_within, dominates, hypervolume, knee_point, non_dominated_indices
from .references import SearchReferences, measure_references
from .result import FrontPoint, SearchResult
from .searcher import MaskSearcher, UnsatisfiableConstraintError
from .synthetic import (
    ClosedFormProblem,
    DeceptiveMaskProblem,
    KnapsackMaskProblem,
    SyntheticMaskProblem,
    true_front,
)


__all__ = [
    "DEFAULT_FULL_COUNTERPARTS",
    "METHOD_CHOICES",
    "FidelityCandidate",
    "FidelityCheck",
    "FullFineTune",
    "FullRun",
    "FullCounterpart",
    "ProxyFidelity",
    "check_proxy_fidelity",
    "measure_proxy_fidelity",
    "rank_correlation",
    "select_fidelity_candidates",
    "WORST_VALUE",
    "Candidate",
    "FrontPoint",
    "GenomeSpace",
    "InnerLoop",
    "Journal",
    "MaskSearcher",
    "ProcessExecutor",
    "RayExecutor",
    "SearchConfig",
    "SearchFolderBusyError",
    "SearchReferences",
    "SearchResult",
    "SerialExecutor",
    "SyntheticMaskProblem",
    "ClosedFormProblem",
    "DeceptiveMaskProblem",
    "KnapsackMaskProblem",
    "UnsatisfiableConstraintError",
    "true_front",
    "TrainableShareConstraint",
    "atomic_write_json",
    "best_within",
    "dominates",
    "get_executor",
    "hypervolume",
    "knee_point",
    "measure_references",
    "non_dominated_indices",
    "run_candidate",
]
