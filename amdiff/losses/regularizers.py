"""Semantic masks and the class-weighted L1 regularizers of AMDiff (paper Eqs. 5 and 7).

Semantic classes s (paper notation, S = 8):
    0 background (neither lesion nor any of the 7 organs), 1 lesion,
    2..8 organs liver, lung, bone, muscle, kidney, spleen, aorta (organ label k -> s = k + 1).

Normalisation (our reading of ||M_s (P - I)||_1): each class term is the L1 norm of the masked
difference divided by the number of voxels of M_s in the whole batch, i.e. a per-class mean
absolute error. The paper writes a plain L1 norm; left unnormalised, the terms would scale with
class volume (muscle and background outweigh a 10-voxel lesion by 10^3-10^5), which defeats the
purpose of the class weights w_s and of a lesion-specific regularizer. An empty class contributes
exactly 0 (and zero gradient), never NaN. Units are those of the inputs (the caller passes P and I
in the same domain: the diffusion domain for L_lor, SUV for L_rev).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from amdiff.contracts import N_ORGAN_CLASSES, SEMANTIC_CLASSES
from amdiff.errors import InputError

N_ORGANS = N_ORGAN_CLASSES
S = len(SEMANTIC_CLASSES)  # paper's S: lesion + 7 organs
N_CLASSES = S + 1  # with background s = 0
CLASS_NAMES = ("background", *SEMANTIC_CLASSES)

WeightsLike = torch.Tensor | Sequence[float] | None


def class_weights(weights: WeightsLike, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Validate w_s (length 9, s = 0..8, finite, >= 0); None means all ones."""
    if weights is None:
        return torch.ones(N_CLASSES, device=device, dtype=dtype)
    w = torch.as_tensor(weights, dtype=dtype, device=device).detach()
    if w.shape != (N_CLASSES,):
        raise InputError("loss weights", f"need {N_CLASSES} class weights (s = 0..8), got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise InputError("loss weights", f"class weights must be finite and >= 0, got {w.tolist()}")
    return w


def ablation_weights(base_weights: WeightsLike = None, drop_lesion: bool = False,
                     drop_organs: bool = False) -> torch.Tensor:
    """Weights for the paper's ablations "w/o lesion regularizer" (w_1 = 0) and
    "w/o organ regularizer" (w_2..w_8 = 0); meant for L_lor (Eq. 5) only."""
    w = class_weights(base_weights).clone()
    if drop_lesion:
        w[1] = 0.0
    if drop_organs:
        w[2:] = 0.0
    return w


def _check_labels(lesion: torch.Tensor, organs: torch.Tensor) -> None:
    if lesion.shape != organs.shape:
        raise InputError("semantic_masks",
                         f"lesion {tuple(lesion.shape)} and organs {tuple(organs.shape)} differ in shape")
    if lesion.ndim < 3 or lesion.shape[1] != 1:
        raise InputError("semantic_masks", f"labels must be (B, 1, *spatial), got {tuple(lesion.shape)}")
    if not bool(((lesion == 0) | (lesion == 1)).all()):
        raise InputError("semantic_masks", "lesion mask must be binary (0/1)")
    if organs.is_floating_point():
        if not bool((organs == torch.round(organs)).all()):
            raise InputError("semantic_masks", "organ labels must be integers")
    if bool((organs < 0).any()) or bool((organs > N_ORGANS).any()):
        raise InputError("semantic_masks", f"organ labels must lie in 0..{N_ORGANS}")


def semantic_masks(lesion: torch.Tensor, organs: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Binary masks M_s, s = 0..8, shape (B, 9, *spatial), from labels of shape (B, 1, *spatial).

    M_0 = neither lesion nor organ; M_1 = lesion; M_{k+1} = (organs == k), k = 1..7.
    Masks overlap: a lesion voxel inside organ k is in both M_1 and M_{k+1} (the paper
    regularises lesions and organs separately), and it is not background.
    """
    _check_labels(lesion, organs)
    les = lesion[:, 0] == 1
    org = organs[:, 0].long()
    organ_masks = [org == k for k in range(1, N_ORGANS + 1)]
    background = (~les) & (org == 0)
    return torch.stack([background, les, *organ_masks], dim=1).to(dtype)


def per_class_l1(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-class mean absolute error, shape (9,): sum_batch |M_s (P - I)| / sum_batch M_s (0 if empty)."""
    if pred.shape != target.shape or pred.ndim < 3 or pred.shape[1] != 1:
        raise InputError("per_class_l1", f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must both be (B, 1, *spatial)")
    if masks.shape[0] != pred.shape[0] or masks.shape[2:] != pred.shape[2:] or masks.shape[1] != N_CLASSES:
        raise InputError("per_class_l1", f"masks {tuple(masks.shape)} must be (B, {N_CLASSES}, *spatial) "
                         f"on the grid of {tuple(pred.shape)}")
    masks = masks.to(pred.dtype)
    dims = [0, *range(2, pred.ndim)]
    abs_err = (pred - target).abs()
    num = (masks * abs_err).sum(dim=dims)
    count = masks.sum(dim=dims)
    # Empty class: num is exactly 0, so dividing by max(count, 1) gives 0 and a zero gradient.
    return num / count.clamp_min(1.0)


def lesion_organ_regularizer(p_hc: torch.Tensor, i_hc: torch.Tensor, masks: torch.Tensor,
                             weights: WeightsLike = None) -> torch.Tensor:
    """L_lor, paper Eq. 5: sum_{s=1}^{S} w_s * ||M_s (P_HC - I_HC)||_1, S = 8.

    The paper's text prints the upper limit as 3; the surrounding text (s = 1 lesion,
    s = 2..S organs) and the 7-organ setup make S = 8. Each ||.||_1 is normalised by |M_s| in the
    batch (per-class MAE, see module docstring); w_0 is ignored. Scalar tensor.
    """
    w = class_weights(weights, device=p_hc.device, dtype=p_hc.dtype)
    return (w[1:] * per_class_l1(p_hc, i_hc, masks)[1:]).sum()


def revision_loss(p_hcr: torch.Tensor, i_hc: torch.Tensor, masks: torch.Tensor,
                  weights: WeightsLike = None) -> torch.Tensor:
    """L_rev, paper Eq. 7: sum_{s=0}^{S} w_s * ||M_s (P_HCR - I_HC)||_1, background included.

    Same per-class normalisation as L_lor (mean absolute error within M_s over the batch).
    Scalar tensor.
    """
    w = class_weights(weights, device=p_hcr.device, dtype=p_hcr.dtype)
    return (w * per_class_l1(p_hcr, i_hc, masks)).sum()


class LesionOrganRegularizer(nn.Module):
    """nn.Module form of `lesion_organ_regularizer`; weights follow .to(device)."""

    def __init__(self, weights: WeightsLike = None):
        super().__init__()
        self.register_buffer("weights", class_weights(weights))

    def forward(self, p_hc, i_hc, masks):
        return lesion_organ_regularizer(p_hc, i_hc, masks, self.weights)


class RevisionLoss(nn.Module):
    """nn.Module form of `revision_loss`; weights follow .to(device)."""

    def __init__(self, weights: WeightsLike = None):
        super().__init__()
        self.register_buffer("weights", class_weights(weights))

    def forward(self, p_hcr, i_hc, masks):
        return revision_loss(p_hcr, i_hc, masks, self.weights)
