"""Joint AMDiff training (paper Eqs. 1-11) on the shared epoch loop (amdiff.train.base).

Before e_T only the denoiser trains (lambda_warm = 0, Eq. 11); afterwards P_HC feeds L_lor, the
revision module and the segmenter (Eq. 10), with the terms of the variant
(``Variant.loss_terms``: no L_rev without the revision module, no L_lor for amdiff_no_lor).
Adam with separate learning rates for the denoiser and for revision + segmenter, both x0.1
after half the epochs. ``med_ddpm`` (no semantic parts) trains with L_diff alone.

P_HC in training (our choice; the paper defines P_HC as the sampler's final output I^0, which
training cannot afford). P_HC is the one-step x0 estimate x0^ = (x_t - sqrt(1 - abar) eps^) /
sqrt(abar), an estimate whose error is the noise-prediction error times sqrt(1/abar - 1): about
0.4 at t = T/4, 1 at t = T/2, 5e3 at t = T. With ``diffusion.prediction: v`` it is
sqrt(abar) x_t - sqrt(1 - abar) v^, whose error is the v error times at most 1
(AMDiff.x0_estimate). Two settings (``training``):
- ``aux_max_t_fraction`` (default 0.5): only batch items with t < fraction x T form P_HC and
  enter L_lor, L_rev and L_seg; items at larger t train L_diff alone. Beyond T/2 the estimate is
  mostly noise, and its gradient into the denoiser would be amplified up to 5e3-fold. 1.0 gives
  every t (the earlier behaviour).
- ``p_hc_clamp`` (default ``straight_through``): the estimate is clamped to the diffusion range
  [-1, 1] as the sampler clamps its output, with the clamp's gradient passed straight through,
  so P_HC has inference's range and out-of-range voxels still teach the denoiser. ``hard`` is a
  plain clamp, whose gradient is zero wherever the estimate leaves the range (~96 % of voxels at
  t = 240; the earlier behaviour).

Validation (every epoch, fixed patches and noise): the mean L1 noise error at random t
(``val_diff``), and, as at inference, each validation patch sampled from noise with DDIM
(``training.val_sampler_steps`` steps, default 10; 0 = the one-step estimate at random t), revised
and segmented: ``val_nrmse`` is the NRMSE of the final output (P_HCR, or P_HC without revision)
against I_HC in SUV, the Dice of lesion and organs that of the segmenter on it (organs: the mean
over the organ classes, ``DiceTally``). Patches, not
whole validation volumes: a whole paper-size volume is ~2,000 windows per sampler step, which
no per-epoch validation can afford; the patches are the lesion-balanced, fixed ``val_patches``. The checkpoint
with the lowest ``val_score = val_nrmse + (1 - mean(val_dice_lesion, val_dice_organs))`` is kept
as best.pt (the paper evaluates the best-validation model; it does not say how the two tasks
are combined).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from amdiff.diffusion.samplers import sample
from amdiff.errors import InputError
from amdiff.losses.warmup import AMDiffLoss, lambda_warm
from amdiff.models.amdiff import build_model
from amdiff.train.base import EpochTrainer, batches, nrmse

LOG_COLUMNS = ["epoch", "lambda_warm", "lr_denoiser", "lr_segmenter", "train_total", "train_diff",
               "train_lor", "train_rev", "train_seg", "val_diff", "val_nrmse", "val_dice_lesion",
               "val_dice_organs", "val_score", "best", "seconds"]


P_HC_CLAMPS = ("straight_through", "hard")


def clamp_p_hc(x0_hat: torch.Tensor, mode: str) -> torch.Tensor:
    """The x0 estimate clamped to the diffusion range [-1, 1]; ``straight_through`` keeps the
    identity gradient everywhere, ``hard`` has zero gradient outside the range."""
    clamped = x0_hat.clamp(-1.0, 1.0)
    if mode == "hard":
        return clamped
    if mode == "straight_through":
        return x0_hat + (clamped - x0_hat).detach()
    raise InputError("training.p_hc_clamp", f"must be one of {list(P_HC_CLAMPS)}, got {mode!r}")


class DiceTally:
    """Validation Dice of the segmentation heads, per class, counts summed over batches.

    ``result()`` gives per head the mean over its classes of 2|P & G| / (|P| + |G|), each class
    pooled over all validation patches; a class absent from prediction and truth is left out
    (Dice 1 when no class of a head appears at all). Our choice: the organ score is the mean of
    the organ classes, not one Dice of all their voxels pooled, which muscle (the largest class)
    would dominate, so a segmenter that labels everything muscle would look good.
    """

    def __init__(self) -> None:
        self.counts: dict[str, dict[int, list[float]]] = {}

    def add(self, head: str, pred: torch.Tensor, truth: torch.Tensor, labels) -> None:
        per_class = self.counts.setdefault(head, {})
        for k in labels:
            p, g = pred == k, truth == k
            c = per_class.setdefault(int(k), [0.0, 0.0])
            c[0] += 2.0 * float((p & g).sum())
            c[1] += float(p.sum() + g.sum())

    def result(self) -> dict[str, float]:
        out = {}
        for head, per_class in self.counts.items():
            present = [inter / total for inter, total in per_class.values() if total > 0]
            out[head] = float(np.mean(present)) if present else 1.0
        return out


SEG_HEADS = (("lesion", [1]), ("organs", range(1, 8)))   # head, its foreground labels


class Trainer(EpochTrainer):
    """Train one AMDiff variant (or med_ddpm) on one site's train split, validating on its val split."""

    kind = "amdiff"
    columns = LOG_COLUMNS

    def __init__(self, config: dict, variant: str, site: str, manifest, out_dir, device: str | None = None):
        super().__init__(config, variant, site, manifest, out_dir, device)
        self.variant = variant = self.variant_name   # a seed replicate builds the model it repeats
        self.e_T = int(self.tcfg["warmup_epochs"])
        if self.e_T > self.e_max:
            raise InputError("training.warmup_epochs", f"e_T={self.e_T} exceeds epochs={self.e_max}")
        torch.manual_seed(self.seed)
        self.model = build_model(variant, config).to(self.device)
        den, seg = self.model.parameter_groups()
        groups = [{"params": den, "lr": self.tcfg["lr_denoiser"]}]
        if seg:
            groups.append({"params": seg, "lr": self.tcfg["lr_segmenter"]})
        optimizer = torch.optim.Adam(groups)
        self.optimizers = {"adam": optimizer}
        # both learning rates x0.1 after half the epochs (paper: 400 of 800)
        self.schedulers = {"adam": torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[max(1, self.e_max // 2)], gamma=self.tcfg["lr_decay_factor"])}
        self.segments = self.model.segmenter is not None
        if not self.segments:   # a denoiser-only model (med_ddpm) never leaves the warm-up: L_diff alone
            self.e_T = self.e_max
        fraction = float(self.tcfg["aux_max_t_fraction"])
        if not 0.0 < fraction <= 1.0:
            raise InputError("training.aux_max_t_fraction", f"must lie in (0, 1], got {fraction}")
        self.aux_max_t = fraction * self.model.schedule.T   # items with 0-based t < this form P_HC
        self.p_hc_clamp = self.tcfg["p_hc_clamp"]
        clamp_p_hc(torch.zeros(1), self.p_hc_clamp)   # validate now, not after the warm-up
        self.val_steps = int(self.tcfg["val_sampler_steps"])
        self.loss = AMDiffLoss(self.e_T, self.e_max, lor_weights=self.tcfg.get("class_weights"),
                               rev_weights=self.tcfg.get("class_weights"),
                               seg_weights=self.tcfg.get("class_weights"),
                               terms=self.model.variant.loss_terms(),
                               seg_form=self.tcfg["focal_dice_form"],
                               seg_ce_form=self.tcfg["seg_ce_form"],
                               **self.model.lor_switches()).to(self.device)

    def epoch_columns(self, epoch: int) -> dict:
        lrs = [g["lr"] for g in self.optimizers["adam"].param_groups] + [float("nan")]
        return {"lambda_warm": lambda_warm(epoch, self.e_T, self.e_max), "lr_denoiser": lrs[0],
                "lr_segmenter": lrs[1]}

    def _noisy(self, hc: torch.Tensor, generator: torch.Generator, shard: bool = False):
        """x0, t, noise and x_t of a batch. ``shard``: ``hc`` is this process's block of a
        data-parallel global batch; the draws are the global batch's, of which it keeps its rows,
        so every item gets the t and noise it gets in single-process training."""
        m = self.model
        x0 = m.to_diffusion(hc)
        n = hc.shape[0] * (self.parallel.world if shard else 1)
        rows = self.parallel.rows(n) if shard else slice(None)
        t = m.schedule.sample_t(n, generator)[rows].to(self.device)
        noise = torch.randn((n, *x0.shape[1:]), generator=generator)[rows].to(self.device)
        return x0, t, noise, m.schedule.q_sample(x0, t, noise)

    def train_batch(self, batch: dict, epoch: int, generator: torch.Generator) -> dict[str, float]:
        m, opt = self.model, self.optimizers["adam"]
        hc, lc = batch["hc"].to(self.device), batch["lc"].to(self.device)
        x0, t, noise, x_t = self._noisy(hc, generator, shard=True)
        out = m.network(x_t, lc, t)   # the noise, or v (diffusion.prediction)
        aux = {}
        if lambda_warm(epoch, self.e_T, self.e_max) > 0:
            keep = (t < self.aux_max_t).nonzero().squeeze(1)
            if keep.numel() == 0:
                aux = {"skip_aux": True}   # every item too noisy for a meaningful P_HC
            else:
                # P_HC: the clamped one-step x0 estimate of the kept items (diffusion domain)
                p_hc = clamp_p_hc(m.x0_estimate(x_t[keep], t[keep], out[keep]), self.p_hc_clamp)
                lc_k, hc_k = lc[keep], hc[keep]
                p_hcr = m.revise(m.to_suv(p_hc), lc_k)
                seg = m.segment(p_hcr, lc_k)
                aux = {"p_hc": p_hc, "i_hc": x0[keep], "i_hc_suv": hc_k, "p_hcr": p_hcr,
                       "lesion_logits": seg["lesion"], "organ_logits": seg["organs"],
                       "lesion": batch["lesion"].to(self.device)[keep][:, None],
                       "organs": batch["organs"].to(self.device)[keep][:, None]}
        terms = self.loss(out, m.target(x0, t, noise), epoch=epoch, **aux)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        return {k: float(terms[k].detach()) for k in ("total", "diff", "lor", "rev", "seg")}

    def _final_output(self, lc: torch.Tensor, hc: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The model's denoised output in SUV for validation: sampled from noise with DDIM as at
        inference (``val_steps`` > 0), else the one-step estimate at a random t; then revised."""
        m = self.model
        if self.val_steps > 0:
            x0 = sample(lambda x, t: m.eps(x, lc, t), tuple(lc.shape), m.schedule, method="ddim",
                        steps=self.val_steps, generator=gen, device=self.device)
        else:
            _, t, _, x_t = self._noisy(hc, gen)
            x0 = m.x0_estimate(x_t, t, m.network(x_t, lc, t))
        return m.revise(m.to_suv(x0.clamp(-1, 1)), lc)

    def validate(self) -> dict[str, float]:
        m = self.model
        gen = torch.Generator().manual_seed(self.seed + 7)
        diffs, sq, ranges = [], [], []
        tally = DiceTally()
        for batch in batches(self.val_patches, int(self.tcfg["batch_size"])):
            hc, lc = batch["hc"].to(self.device), batch["lc"].to(self.device)
            _, t, noise, x_t = self._noisy(hc, gen)
            diffs.append(float((m.eps(x_t, lc, t) - noise).abs().mean()))
            output = self._final_output(lc, hc, gen).clamp(min=0.0)   # SUV >= 0, as predict writes it
            err, rng = nrmse(output, hc)
            sq.append(err)
            ranges.append(rng)
            if not self.segments:
                continue
            seg = m.segment(output, lc)
            for head, labels in SEG_HEADS:
                tally.add(head, seg[head].argmax(1).cpu(), batch[head], labels)
        dice = tally.result() if self.segments else {"lesion": float("nan"), "organs": float("nan")}
        val_nrmse = math.sqrt(float(np.mean(sq))) / max(float(np.max(ranges)), 1e-6)
        score = val_nrmse + (1.0 - 0.5 * (dice["lesion"] + dice["organs"]) if self.segments else 0.0)
        return {"val_diff": float(np.mean(diffs)), "val_nrmse": val_nrmse, "val_dice_lesion": dice["lesion"],
                "val_dice_organs": dice["organs"], "val_score": score}
