"""Names and defaults that the command line offers before anything heavy is imported.

This module imports nothing, so that ``memcontrol search --help``, the launch script's ``--help`` and their argument
errors come without importing torch, diffusers or PEFT. Each list here is the one list of its kind: the modules that
implement the names derive their tables from it (`peft_memcontrol.tuners.METHODS`,
`peft_memcontrol.search.objectives.BUILTIN_OBJECTIVES`), and their imports check that every name has an
implementation.
"""

METHOD_NAMES = ("svdiff", "difffit", "masked_attention")
"""The base methods a `MemControlConfig` applies (``MemControlConfig(method=...)``, ``--method``), in the order of
`peft_memcontrol.tuners.METHODS`: the paper's SVDiff, DiffFit, masked attention tuning."""

OBJECTIVE_NAMES = (
    "noise_norm",
    "fid",
    "kid",
    "neg_amd",
    "copy_similarity",
    "extraction",
    "val_loss",
    "trainable_share",
)
"""The built-in search objectives (``--objectives``), each the function of that name in
`peft_memcontrol.search.objectives`."""

SURROGATES = ("none", "gp")
"""`SearchConfig.surrogate` modes: plain NSGA-II, or offspring screened by a Gaussian process
(`peft_memcontrol.search.surrogate`)."""

DEFAULT_FEATURE = "efficientnet-lite0"
"""The feature space of the metrics when none is named (offline: its weights ship with a pip package)."""

TRANSFORMERS_ALIASES = {"clip": "openai/clip-vit-large-patch14", "dinov2": "facebook/dinov2-base"}
"""Short names of the ``transformers`` image models the metrics' feature spaces accept, with their Hub ids."""

TRAIN_STEPS_PER_BUDGET = 10
"""Default length of the proxy-fidelity check's full fine-tunes, in inner-loop budgets (``K``,
``--max_train_steps``): the demo's ratio, 200 full steps for 20 inner-loop steps."""
