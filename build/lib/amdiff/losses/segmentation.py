"""The segmentation loss of AMDiff, paper Eq. 9: cross-entropy plus focal Dice per class.

    L_seg = (1/S) sum_{s=1}^{S} w_s ( -M_s log P_s
            + [ 1 - 2 (1-P_s)^{4/3} P_s M_s / ((1-P_s)^{4/3} P_s^2 + M_s^2) ] )

Our reading (the paper prints per-voxel symbols without sums):
- P_1 is channel 1 of the lesion head's softmax (B, 2, ...); P_s for s = 2..8 is channel s-1
  of the organ head's softmax (B, 8, ...). Background (s = 0) is not in the sum, as printed.
- CE_s = mean over batch and voxels of -M_s log P_s. We take log P from log_softmax, which is
  exact and finite for any finite logits (a clamped log would zero the gradient at saturation).
- FocalDice_s = 1 - (2 sum_v (1-P)^g P M + eps) / (sum_v (1-P)^g P^2 + sum_v M^2 + eps), sums over
  the voxels of one batch item, then averaged over the batch; g = gamma = 4/3, eps = 1e-5 (MONAI's
  default smoothing). The focal factor multiplies the P terms only, exactly as printed.
- Empty M_s: FocalDice_s = 1 - eps / (sum_v (1-P)^g P^2 + eps), so ~0 only while
  sum_v (1-P)^g P^2 << eps (P well below 2e-5 everywhere on a 32^3 patch) and ~1, with almost no gradient, as
  soon as any false-positive mass appears; CE_s of an empty class is 0. Absent classes thus add a
  near-constant offset of up to (number absent)/S to L_seg, and since background (s = 0) is not
  in the sum, nothing but this eps term penalises lesion false positives in lesion-free patches.

Consequence of the printed form (worth knowing when reading training curves): because
(1-P)^g -> 0 as P -> 1, a perfect prediction of a non-empty class gives FocalDice_s -> 1, not 0;
for a one-voxel lesion the term is smallest (0.625) at P ~ 0.41. Only CE_s pulls P_s towards 1,
and CE_s is a mean over all voxels, so for small lesions the Dice term wins: fitting free logits
to an 8-voxel lesion in a 16^3 patch with L_seg alone (Adam, lr 0.05, 1500 steps) ends at
P_1 = 0.41 inside the lesion (an argmax would call it background), against 0.998 with gamma = 0.
gamma = 0 recovers the ordinary squared soft Dice (V-Net form), for which a perfect prediction
gives 0.

Because of this, training uses ``form="focal_tversky"`` by default: the focal Dice of Abraham &
Khan (ISBI 2019), which the paper's citation (Yeung et al. 2022) builds on and whose recommended
exponent is exactly 4/3: FocalDice_s = (1 - DSC_s)^(1/gamma) with the squared soft Dice
DSC_s = (2 sum P M + eps) / (sum P^2 + sum M^2 + eps). It is 0 for a perfect prediction, pushes
P_s to 1 inside small lesions, and still focuses on hard classes (exponent 3/4 < 1). The printed
form stays available as ``form="printed"`` (config ``training.focal_dice_form``).

Cross-entropy with background (``ce_form``, config ``training.seg_ce_form``). As printed, the
CE sums -M_s log P_s over s = 1..8 only. In a lesion-free patch (half of training, by the
adaptive sampler) M_1 = 0 everywhere, so a confident false-positive lesion voxel costs no CE at
all, and the Dice term of the empty class saturates at ~1 as soon as any false-positive mass
appears: painting 10 or 10^5 false lesion voxels costs the same. Whole-body inference then marks
tens of litres as lesion. ``ce_form="with_background"`` (our default) adds each head's
background channel, -(1 - M_1) log P_lesion-bg and -M_organ-bg log P_organ-bg with weight w_0,
which makes the CE term of each head the ordinary categorical cross-entropy of its softmax
(MONAI's / nnU-Net's CE): every false-positive voxel now costs -log(1 - P_1). The printed form
stays available as ``ce_form="printed"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amdiff.errors import InputError
from amdiff.losses.regularizers import N_CLASSES, N_ORGANS, S, WeightsLike, class_weights, semantic_masks

GAMMA = 4.0 / 3.0
EPS = 1e-5


def class_log_probs(lesion_logits: torch.Tensor, organ_logits: torch.Tensor) -> torch.Tensor:
    """log P_s for s = 1..8, shape (B, 8, *spatial), from the two heads' logits."""
    if lesion_logits.ndim < 3 or lesion_logits.shape[1] != 2:
        raise InputError("segmentation_loss",
                         f"lesion logits must be (B, 2, *spatial), got {tuple(lesion_logits.shape)}")
    if organ_logits.shape[1:2] != (N_ORGANS + 1,) or organ_logits.shape[0] != lesion_logits.shape[0] \
            or organ_logits.shape[2:] != lesion_logits.shape[2:]:
        raise InputError("segmentation_loss", f"organ logits must be (B, {N_ORGANS + 1}, *spatial) on the lesion grid "
                         f"{tuple(lesion_logits.shape)}, got {tuple(organ_logits.shape)}")
    lesion_lp = F.log_softmax(lesion_logits, dim=1)[:, 1:2]
    organ_lp = F.log_softmax(organ_logits, dim=1)[:, 1:]
    return torch.cat([lesion_lp, organ_lp], dim=1)


def cross_entropy_terms(log_probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """CE_s = mean over batch and voxels of -M_s log P_s; (B, K, ...) inputs -> (K,)."""
    dims = [0, *range(2, log_probs.ndim)]
    return -(masks * log_probs).mean(dim=dims)


def background_cross_entropy(log_p_lesion_bg: torch.Tensor, log_p_organ_bg: torch.Tensor,
                             masks: torch.Tensor) -> torch.Tensor:
    """Each head's background CE, (2,): mean over batch and voxels of -(1 - M_1) log P_lesion-bg
    and of -(no organ) log P_organ-bg; masks (B, 9, ...) from ``semantic_masks``."""
    dims = [0, *range(2, masks.ndim)]
    not_lesion = 1.0 - masks[:, 1:2]
    no_organ = (1.0 - masks[:, 2:].sum(dim=1, keepdim=True)).clamp_min(0.0)
    return torch.stack([-(not_lesion * log_p_lesion_bg).mean(dim=dims).squeeze(0),
                        -(no_organ * log_p_organ_bg).mean(dim=dims).squeeze(0)])


def focal_dice_terms(probs: torch.Tensor, masks: torch.Tensor, gamma: float = GAMMA,
                     eps: float = EPS) -> torch.Tensor:
    """FocalDice_s as printed in Eq. 9 (see module docstring); (B, K, ...) inputs -> (K,)."""
    if gamma < 0:
        raise InputError("segmentation_loss", f"focal exponent gamma must be >= 0, got {gamma}")
    dims = list(range(2, probs.ndim))
    focal = (1.0 - probs).clamp_min(0.0) ** gamma
    num = 2.0 * (focal * probs * masks).sum(dim=dims) + eps
    den = (focal * probs**2).sum(dim=dims) + (masks**2).sum(dim=dims) + eps
    return (1.0 - num / den).mean(dim=0)


def focal_tversky_dice_terms(probs: torch.Tensor, masks: torch.Tensor, gamma: float = GAMMA,
                             eps: float = EPS) -> torch.Tensor:
    """(1 - DSC_s)^(1/gamma), Abraham & Khan 2019 (see module docstring); (B, K, ...) -> (K,)."""
    if gamma <= 0:
        raise InputError("segmentation_loss", f"focal exponent gamma must be > 0, got {gamma}")
    dims = list(range(2, probs.ndim))
    dsc = (2.0 * (probs * masks).sum(dim=dims) + eps) / \
        ((probs**2).sum(dim=dims) + (masks**2).sum(dim=dims) + eps)
    return (1.0 - dsc).clamp_min(0.0).pow(1.0 / gamma).mean(dim=0)


FORMS = {"printed": focal_dice_terms, "focal_tversky": focal_tversky_dice_terms}
CE_FORMS = ("with_background", "printed")


def segmentation_terms(lesion_logits: torch.Tensor, organ_logits: torch.Tensor, masks: torch.Tensor,
                       gamma: float = GAMMA, eps: float = EPS, form: str = "printed") -> dict[str, torch.Tensor]:
    """Per-class terms for s = 1..8: {"ce": (8,), "focal_dice": (8,)} and each head's background
    CE {"ce_background": (2,)}; masks (B, 9, ...) from semantic_masks."""
    if form not in FORMS:
        raise InputError("segmentation_loss", f"focal Dice form must be one of {sorted(FORMS)}, got {form!r}")
    log_p = class_log_probs(lesion_logits, organ_logits)
    if masks.shape[1] != N_CLASSES or masks.shape[0] != log_p.shape[0] or masks.shape[2:] != log_p.shape[2:]:
        raise InputError("segmentation_loss",
                         f"masks {tuple(masks.shape)} must be (B, {N_CLASSES}, *spatial) on the logits grid")
    m = masks[:, 1:].to(log_p.dtype)
    background = background_cross_entropy(F.log_softmax(lesion_logits, dim=1)[:, :1],
                                          F.log_softmax(organ_logits, dim=1)[:, :1], masks.to(log_p.dtype))
    return {"ce": cross_entropy_terms(log_p, m), "focal_dice": FORMS[form](log_p.exp(), m, gamma, eps),
            "ce_background": background}


def combine_terms(terms: dict[str, torch.Tensor], weights: torch.Tensor,
                  ce_form: str = "with_background") -> dict[str, torch.Tensor]:
    """L_seg from ``segmentation_terms`` and w_s (9,): {"total", "ce", "focal_dice"} scalars.

    printed:          (1/S) sum_{s=1}^{S} w_s (CE_s + FocalDice_s)
    with_background:  the same plus (1/S) w_0 (CE_lesion-bg + CE_organ-bg)
    """
    if ce_form not in CE_FORMS:
        raise InputError("segmentation_loss", f"cross-entropy form must be one of {list(CE_FORMS)}, got {ce_form!r}")
    ce = (weights[1:] * terms["ce"]).sum()
    if ce_form == "with_background":
        ce = ce + weights[0] * terms["ce_background"].sum()
    fd = (weights[1:] * terms["focal_dice"]).sum()
    return {"total": (ce + fd) / S, "ce": ce / S, "focal_dice": fd / S}


def segmentation_loss(lesion_logits: torch.Tensor, organ_logits: torch.Tensor, lesion: torch.Tensor,
                      organs: torch.Tensor, weights: WeightsLike = None, gamma: float = GAMMA,
                      eps: float = EPS, form: str = "printed", ce_form: str = "printed") -> torch.Tensor:
    """L_seg, paper Eq. 9: (1/S) sum_{s=1}^{8} w_s (CE_s + FocalDice_s); S = 8 (see ``combine_terms``
    for ``ce_form="with_background"``, which adds w_0 times each head's background CE).

    lesion (B, 1, ...) binary, organs (B, 1, ...) labels 0..7. Scalar tensor. The defaults are the
    printed equation; the trainers use ``focal_tversky`` and ``with_background`` (module docstring).
    """
    masks = semantic_masks(lesion, organs, dtype=lesion_logits.dtype)
    terms = segmentation_terms(lesion_logits, organ_logits, masks, gamma, eps, form)
    w = class_weights(weights, device=lesion_logits.device, dtype=lesion_logits.dtype)
    return combine_terms(terms, w, ce_form)["total"]


class SegmentationLoss(nn.Module):
    """nn.Module form of `segmentation_loss`; weights follow .to(device)."""

    def __init__(self, weights: WeightsLike = None, gamma: float = GAMMA, eps: float = EPS):
        super().__init__()
        self.register_buffer("weights", class_weights(weights))
        self.gamma = gamma
        self.eps = eps

    def forward(self, lesion_logits, organ_logits, lesion, organs):
        return segmentation_loss(lesion_logits, organ_logits, lesion, organs, self.weights, self.gamma, self.eps)
