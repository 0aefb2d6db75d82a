"""MemControl's outer loop: a multi-objective (NSGA-II) search for the mask that trades memorization against quality.

`MaskSearcher` evaluates genomes (`GenomeSpace`: mask bits or per-unit method choices, plus a learning-rate gene)
with an evaluator: `InnerLoop` trains each candidate with the project's trainer and scores it with the metrics
package; `SyntheticMaskProblem` is a closed-form stand-in. Results are a `SearchResult` whose front points become
`MemControlConfig` objects; `write_search_outputs` writes the front, hypervolume, plots and chosen masks.
"""

from .evaluation import WORST_VALUE, evaluate_candidate
from .executors import ProcessPoolExecutor, RayExecutor, SerialExecutor, get_executor
from .genome import METHOD_CHOICES, Candidate, GenomeSpace
from .journal import Journal, atomic_write_json
from .pareto import best_within, dominates, hypervolume, knee_point, non_dominated_indices
from .searcher import FrontPoint, MaskSearcher, SearchConfig, SearchResult
from .synthetic import SyntheticMaskProblem


__all__ = [
    "METHOD_CHOICES",
    "WORST_VALUE",
    "Candidate",
    "FrontPoint",
    "GenomeSpace",
    "Journal",
    "MaskSearcher",
    "ProcessPoolExecutor",
    "RayExecutor",
    "SearchConfig",
    "SearchResult",
    "SerialExecutor",
    "SyntheticMaskProblem",
    "atomic_write_json",
    "best_within",
    "dominates",
    "evaluate_candidate",
    "get_executor",
    "hypervolume",
    "knee_point",
    "non_dominated_indices",
]
