"""AMDiff losses (paper Eqs. 3, 5, 7, 9-11) as composable torch functions and nn.Modules.

Semantic classes s: 0 background, 1 lesion, 2..8 liver, lung, bone, muscle, kidney, spleen, aorta.
"""

from amdiff.losses.diffusion import DiffusionL1Loss, diffusion_l1
from amdiff.losses.regularizers import (CLASS_NAMES, N_CLASSES, S, LesionOrganRegularizer, RevisionLoss,
                                        ablation_weights, class_weights, lesion_organ_regularizer, per_class_l1,
                                        revision_loss, semantic_masks)
from amdiff.losses.segmentation import (SegmentationLoss, class_log_probs, cross_entropy_terms, focal_dice_terms,
                                        segmentation_loss, segmentation_terms)
from amdiff.losses.warmup import AMDiffLoss, lambda_warm, total_loss

__all__ = [
    "CLASS_NAMES", "N_CLASSES", "S",
    "diffusion_l1", "DiffusionL1Loss",
    "semantic_masks", "class_weights", "ablation_weights", "per_class_l1",
    "lesion_organ_regularizer", "revision_loss", "LesionOrganRegularizer", "RevisionLoss",
    "class_log_probs", "cross_entropy_terms", "focal_dice_terms", "segmentation_terms", "segmentation_loss",
    "SegmentationLoss",
    "lambda_warm", "total_loss", "AMDiffLoss",
]
