"""Shared pieces of the comparison segmenters: their input and AMDiff's segmentation loss.

Kept apart from the networks so that importing one model does not import another's library
(MONAI for SwinUNETR).
"""

from __future__ import annotations

import math

import torch

from amdiff.errors import InputError
from amdiff.losses.regularizers import WeightsLike, class_weights, semantic_masks
from amdiff.losses.segmentation import EPS, GAMMA, combine_terms, segmentation_terms

REQUIRED_KEYS = ("lc", "denoised", "lesion", "organs")


def segmenter_input(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[I_LC, denoised] in SUV, (B, 2, X, Y, Z), after checking the batch's keys and shapes."""
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise InputError("segmenter batch", f"missing keys {missing} (need {list(REQUIRED_KEYS)})")
    lc, den = batch["lc"], batch["denoised"]
    if lc.ndim != 5 or lc.shape[1] != 1 or den.shape != lc.shape:
        raise InputError("segmenter batch", f"'lc' and 'denoised' must both be (B, 1, X, Y, Z), "
                         f"got {tuple(lc.shape)} and {tuple(den.shape)}")
    for key in ("lesion", "organs"):
        if tuple(batch[key].shape) != (lc.shape[0], *lc.shape[2:]):
            raise InputError("segmenter batch", f"'{key}' must be (B, X, Y, Z) = "
                             f"{(lc.shape[0], *lc.shape[2:])}, got {tuple(batch[key].shape)}")
    return torch.cat([lc, den], dim=1)


def amdiff_segmentation_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                             weights: WeightsLike = None, gamma: float = GAMMA,
                             form: str = "focal_tversky", ce_form: str = "with_background") -> dict[str, torch.Tensor]:
    """AMDiff's L_seg (paper Eq. 9 in the forms its trainer uses by default: ``focal_tversky``
    Dice and cross-entropy ``with_background``) on a segmenter's outputs.

    total = (1/8) [sum_{s=1..8} w_s (CE_s + (1 - DSC_s)^(1/gamma)) + w_0 (CE of each head's
    background)]; also returns the "ce" and "focal_dice" parts and detached per-class vectors
    (index s - 1) for logging.
    """
    lesion = batch["lesion"].unsqueeze(1)
    organs = batch["organs"].unsqueeze(1)
    les_logits, org_logits = outputs["lesion"], outputs["organs"]
    masks = semantic_masks(lesion, organs, dtype=les_logits.dtype)
    terms = segmentation_terms(les_logits, org_logits, masks, gamma, EPS, form=form)
    w = class_weights(weights, device=les_logits.device, dtype=les_logits.dtype)
    return {**combine_terms(terms, w, ce_form),
            "ce_per_class": terms["ce"].detach(), "focal_dice_per_class": terms["focal_dice"].detach()}


def check_segmenter_input(x: torch.Tensor, model: str, in_channels: int, divisor: int, norm: str,
                          training: bool) -> None:
    """Shape rules of a downsampling segmenter: (B, C, X, Y, Z), sides multiples of ``divisor``, and
    a deepest map the normalisation can work on (instance norm needs > 1 voxel; batch norm, while
    training, > 1 value per channel)."""
    if x.ndim != 5 or x.shape[1] != in_channels:
        raise ValueError(f"{model}: expected (B, {in_channels}, X, Y, Z), got {tuple(x.shape)}")
    sides = tuple(x.shape[2:])
    if any(s % divisor or s == 0 for s in sides):
        raise ValueError(f"{model}: patch sides must be positive multiples of {divisor}, got {sides}")
    deepest = math.prod(s // divisor for s in sides)
    ok = (not training or deepest * x.shape[0] > 1) if norm == "batch" else deepest > 1
    if not ok:
        raise ValueError(f"{model}: the 1/{divisor} map of a {sides} patch holds one value per channel; "
                         f"{norm} norm needs more (a larger patch, or batch >= 2 with batch norm)")
