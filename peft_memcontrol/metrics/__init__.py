"""Memorization and quality metrics for diffusion models, torchmetrics-style, with offline feature spaces.

Images follow one convention (`peft_memcontrol.metrics.images`): float in [0, 1], NCHW, RGB. Metrics that
compare images embed them in a feature space (`peft_memcontrol.metrics.features`) and also accept
precomputed (N, d) features, so one embedding can serve FID, AMD, MiFID and replication; see
`evaluate_generations`. Scoring a whole model with these metrics is `peft_memcontrol.evaluation.evaluate_model`.
"""

from .amd import (
    AMDResult,
    AverageMinCosineDistance,
    MemorizationInformedFID,
    average_min_cosine_distance,
    mifid,
)
from .calibration import (
    INCEPTION_MIFID_THRESHOLD,
    NEAR_COPY_TRANSFORMS,
    SSCD_REPLICATION_THRESHOLD,
    AttackCalibration,
    CopyCalibration,
    calibrate_copy_detection,
    calibrate_copy_threshold,
    calibrate_extraction_threshold,
    fixed_copy_threshold,
    near_copies,
)
from .duplicates import DuplicateGroup, find_duplicate_groups
from .evaluate import GenerationScores, evaluate_generations
from .extraction import (
    ExtractedPair,
    ExtractionAttackConfig,
    ExtractionResult,
    PromptExtractionRecord,
    extraction_attack,
    extraction_attack_on_images,
    generate_images,
    largest_group,
    tiled_l2_distance,
)
from .features import (
    DEFAULT_FEATURE,
    CallableFeatures,
    EfficientNetLite0Features,
    FeatureExtractor,
    InceptionFeatures,
    TransformersImageFeatures,
    extract_features,
    get_feature_extractor,
)
from .fid import FrechetDistance, frechet_distance
from .images import prepare_images
from .kernel_distance import KernelDistance, KIDResult, kernel_distance
from .neighbours import NearestNeighbours, nearest_neighbours
from .noise_norm import (
    MemorizationReward,
    memorization_reward,
    noise_norm_score,
    pipeline_memorization_reward,
    sampling_noise_norm,
    text_conditional_noise_norm,
    training_noise_norms,
)
from .replication import ReplicationRate, ReplicationResult, replication_rate


__all__ = [
    "AMDResult",
    "AttackCalibration",
    "CopyCalibration",
    "DuplicateGroup",
    "INCEPTION_MIFID_THRESHOLD",
    "NEAR_COPY_TRANSFORMS",
    "SSCD_REPLICATION_THRESHOLD",
    "calibrate_copy_detection",
    "calibrate_copy_threshold",
    "calibrate_extraction_threshold",
    "find_duplicate_groups",
    "near_copies",
    "fixed_copy_threshold",
    "AverageMinCosineDistance",
    "CallableFeatures",
    "DEFAULT_FEATURE",
    "EfficientNetLite0Features",
    "ExtractedPair",
    "ExtractionAttackConfig",
    "ExtractionResult",
    "FeatureExtractor",
    "FrechetDistance",
    "GenerationScores",
    "InceptionFeatures",
    "KIDResult",
    "KernelDistance",
    "kernel_distance",
    "MemorizationInformedFID",
    "MemorizationReward",
    "NearestNeighbours",
    "PromptExtractionRecord",
    "ReplicationRate",
    "ReplicationResult",
    "TransformersImageFeatures",
    "average_min_cosine_distance",
    "evaluate_generations",
    "extract_features",
    "extraction_attack",
    "extraction_attack_on_images",
    "frechet_distance",
    "generate_images",
    "get_feature_extractor",
    "largest_group",
    "memorization_reward",
    "mifid",
    "nearest_neighbours",
    "noise_norm_score",
    "pipeline_memorization_reward",
    "prepare_images",
    "replication_rate",
    "sampling_noise_norm",
    "text_conditional_noise_norm",
    "tiled_l2_distance",
    "training_noise_norms",
]
