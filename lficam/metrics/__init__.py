"""Attention metrics: functional (one value per image) and torchmetrics classes (synced across ranks).

Every functional takes batched tensors and returns a 1-D tensor of length B, NaN where the value is
undefined, so that the mean over images is the paper's number. Maps are B×H×W at the images' size; a model
may return logits or a ``ModelOutput``; ``targets=None`` means the class predicted on the clean image.
"""

from lficam.metrics.faithfulness import (
    AverageDrop,
    DeletionAUC,
    IncreaseInConfidence,
    InsertionAUC,
    average_drop,
    deletion_auc,
    deletion_curve,
    drop_from_scores,
    gaussian_blur,
    increase_from_scores,
    increase_in_confidence,
    insertion_auc,
    insertion_curve,
    masked_scores,
    pixel_ranks,
)
from lficam.metrics.localisation import (
    EnergyPointingGame,
    MaskIoU,
    PointingGame,
    energy_pointing_game,
    mask_iou,
    pointing_game,
)
from lficam.metrics.road import Road, RoadScores, linear_imputation, noisy_linear_imputation, road
from lficam.metrics.stability import (
    EpochStability,
    InputStability,
    MapIoU,
    RankCorrelation,
    StabilityScores,
    attention_map_fn,
    map_iou,
    model_randomisation,
    perturbation_stability,
    randomisation_layers,
    rank_correlation,
)

__all__ = [
    "AverageDrop",
    "DeletionAUC",
    "EnergyPointingGame",
    "EpochStability",
    "IncreaseInConfidence",
    "InputStability",
    "InsertionAUC",
    "MapIoU",
    "MaskIoU",
    "PointingGame",
    "RankCorrelation",
    "Road",
    "RoadScores",
    "StabilityScores",
    "attention_map_fn",
    "average_drop",
    "deletion_auc",
    "deletion_curve",
    "drop_from_scores",
    "energy_pointing_game",
    "gaussian_blur",
    "increase_from_scores",
    "increase_in_confidence",
    "insertion_auc",
    "insertion_curve",
    "linear_imputation",
    "map_iou",
    "mask_iou",
    "masked_scores",
    "model_randomisation",
    "noisy_linear_imputation",
    "perturbation_stability",
    "pixel_ranks",
    "pointing_game",
    "randomisation_layers",
    "rank_correlation",
    "road",
]
