"""The warm-up weight (paper Eq. 11) and the unified AMDiff objective (Eq. 10).

    L_total = L_diff + lambda_warm (L_lor + L_rev + L_seg)                      (10)
    lambda_warm = (e >= e_T) * exp(-5 (1 - e/e_max)^2)                           (11)

Epochs are 0-based: the first epoch is e = 0, so with e_T = 100 the segmenter terms join at the
101st epoch, and the last epoch of a run is e = e_max - 1 (lambda = exp(-5/e_max^2), ~1);
e = e_max (lambda = 1) is accepted for schedules that evaluate the end point.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from amdiff.errors import InputError
from amdiff.losses.diffusion import diffusion_l1
from amdiff.losses.regularizers import (N_CLASSES, S, WeightsLike, ablation_weights, class_weights,
                                        lesion_organ_regularizer, per_class_l1, revision_loss, semantic_masks)
from amdiff.losses.segmentation import EPS, GAMMA, combine_terms, segmentation_terms


def lambda_warm(epoch: float, e_T: float, e_max: float) -> float:
    """lambda_warm, Eq. 11: 0 for epoch < e_T, else exp(-5 (1 - epoch/e_max)^2); 0-based epochs."""
    if not e_max > 0:
        raise InputError("warm-up schedule", f"e_max must be > 0, got {e_max}")
    if not 0 <= e_T <= e_max:
        raise InputError("warm-up schedule", f"e_T must lie in [0, e_max={e_max}], got {e_T}")
    if not 0 <= epoch <= e_max:
        raise InputError("warm-up schedule", f"epoch must lie in [0, e_max={e_max}], got {epoch}")
    if epoch < e_T:
        return 0.0
    return math.exp(-5.0 * (1.0 - epoch / e_max) ** 2)


AUX_TERMS = ("lor", "rev", "seg")


def total_loss(eps_pred: torch.Tensor, eps: torch.Tensor, *, epoch: float, e_T: float, e_max: float,
               p_hc: torch.Tensor | None = None, i_hc: torch.Tensor | None = None,
               i_hc_suv: torch.Tensor | None = None, p_hcr: torch.Tensor | None = None,
               lesion_logits: torch.Tensor | None = None, organ_logits: torch.Tensor | None = None,
               lesion: torch.Tensor | None = None, organs: torch.Tensor | None = None,
               lor_weights: WeightsLike = None, rev_weights: WeightsLike = None, seg_weights: WeightsLike = None,
               drop_lesion: bool = False, drop_organs: bool = False, terms=("diff", *AUX_TERMS),
               gamma: float = GAMMA, seg_eps: float = EPS, seg_form: str = "printed",
               seg_ce_form: str = "printed", skip_aux: bool = False) -> dict[str, torch.Tensor]:
    """Eq. 10 with every term for logging.

    p_hc / i_hc: denoised x0 estimate and target in one domain (L_lor); p_hcr / i_hc_suv: revised
    map and target in SUV (L_rev); i_hc_suv defaults to i_hc. drop_lesion / drop_organs apply the
    paper's regularizer ablations to L_lor's weights only (`ablation_weights`). ``terms`` are the
    variant's Eq. 10 terms (``Variant.loss_terms``): without "lor" or "rev" that term is 0 and its
    inputs may be None (no revision module, no L_rev).

    The auxiliary inputs may have fewer batch items than eps_pred: the trainer forms P_HC only
    for the items whose diffusion step is small enough (``training.aux_max_t``); ``skip_aux``
    says no item qualified, and the auxiliary terms are then reported as NaN (not computed) and
    left out of the total. While lambda_warm = 0 (epoch < e_T) the auxiliary inputs may be None:
    the trainer need not run the segmenter then, and lor/rev/seg are reported as 0.

    Returns scalar tensors "total", "diff", "lor", "rev", "seg", "lambda_warm", and detached
    per-class vectors "lor_per_class" (9,), "rev_per_class" (9,), indexed by s (lor_per_class[0]
    is logged but not part of L_lor), and "seg_ce_per_class" (8,), "seg_focal_dice_per_class"
    (8,), indexed by s - 1.
    """
    lam = lambda_warm(epoch, e_T, e_max)
    l_diff = diffusion_l1(eps_pred, eps)
    zero = l_diff.new_zeros(())
    out = {"diff": l_diff, "lambda_warm": l_diff.new_tensor(lam), "total": l_diff,
           "lor": zero, "rev": zero, "seg": zero,
           "lor_per_class": l_diff.new_zeros(N_CLASSES), "rev_per_class": l_diff.new_zeros(N_CLASSES),
           "seg_ce_per_class": l_diff.new_zeros(S), "seg_focal_dice_per_class": l_diff.new_zeros(S)}
    if skip_aux:
        nan = l_diff.new_tensor(float("nan"))
        return {**out, "lor": nan, "rev": nan, "seg": nan}
    use_lor, use_rev = "lor" in terms, "rev" in terms
    needed = {"lesion_logits": lesion_logits, "organ_logits": organ_logits, "lesion": lesion, "organs": organs}
    if use_lor:
        needed.update(p_hc=p_hc, i_hc=i_hc)
    if use_rev:
        needed.update(p_hcr=p_hcr, i_hc_suv=i_hc if i_hc_suv is None else i_hc_suv)
    missing = [k for k, v in needed.items() if v is None]
    if lam == 0.0 and missing:
        return out
    if missing:
        raise InputError("total_loss", f"epoch {epoch} >= e_T {e_T}: {', '.join(missing)} required")
    i_hc_suv = needed.get("i_hc_suv")
    ref = lesion_logits
    masks = semantic_masks(lesion, organs, dtype=ref.dtype)
    w_seg = class_weights(seg_weights, device=ref.device, dtype=ref.dtype)
    seg = segmentation_terms(lesion_logits, organ_logits, masks, gamma, seg_eps, seg_form)
    out["seg"] = combine_terms(seg, w_seg, seg_ce_form)["total"]
    out["seg_ce_per_class"] = seg["ce"].detach()
    out["seg_focal_dice_per_class"] = seg["focal_dice"].detach()
    if use_lor:
        w_lor = ablation_weights(lor_weights, drop_lesion, drop_organs).to(ref.device, ref.dtype)
        out["lor"] = lesion_organ_regularizer(p_hc, i_hc, masks, w_lor)
        out["lor_per_class"] = per_class_l1(p_hc, i_hc, masks).detach()
    if use_rev:
        w_rev = class_weights(rev_weights, device=ref.device, dtype=ref.dtype)
        out["rev"] = revision_loss(p_hcr, i_hc_suv, masks, w_rev)
        out["rev_per_class"] = per_class_l1(p_hcr, i_hc_suv, masks).detach()
    # lambda = 0: keep the auxiliary terms out of the graph (0 * inf would still poison the total)
    if lam != 0.0:
        out["total"] = l_diff + lam * (out["lor"] + out["rev"] + out["seg"])
    return out


class AMDiffLoss(nn.Module):
    """Eq. 10 as a module: fixed schedule, weights and ablation switches; forward(..., epoch=e)."""

    def __init__(self, e_T: float, e_max: float, lor_weights: WeightsLike = None, rev_weights: WeightsLike = None,
                 seg_weights: WeightsLike = None, drop_lesion: bool = False, drop_organs: bool = False,
                 terms=("diff", *AUX_TERMS), gamma: float = GAMMA, seg_eps: float = EPS,
                 seg_form: str = "printed", seg_ce_form: str = "printed"):
        super().__init__()
        lambda_warm(0, e_T, e_max)  # validate the schedule now, not at the first e_T epoch
        self.e_T, self.e_max = e_T, e_max
        self.register_buffer("lor_weights", ablation_weights(lor_weights, drop_lesion, drop_organs))
        self.register_buffer("rev_weights", class_weights(rev_weights))
        self.register_buffer("seg_weights", class_weights(seg_weights))
        self.terms = tuple(terms)
        self.gamma, self.seg_eps, self.seg_form, self.seg_ce_form = gamma, seg_eps, seg_form, seg_ce_form

    def forward(self, eps_pred, eps, *, epoch, **aux):
        return total_loss(eps_pred, eps, epoch=epoch, e_T=self.e_T, e_max=self.e_max,
                          lor_weights=self.lor_weights, rev_weights=self.rev_weights, seg_weights=self.seg_weights,
                          terms=self.terms, gamma=self.gamma, seg_eps=self.seg_eps, seg_form=self.seg_form,
                          seg_ce_form=self.seg_ce_form, **aux)
