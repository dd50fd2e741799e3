"""Joint AMDiff training (paper Eqs. 1-11) on the shared epoch loop (amdiff.train.base).

Before e_T only the denoiser trains (lambda_warm = 0, Eq. 11); afterwards P_HC = the x0
estimate from the predicted noise feeds L_lor, the revision module and the segmenter (Eq. 10).
Adam with separate learning rates for the denoiser and for revision + segmenter, both x0.1
after half the epochs. ``med_ddpm`` (no semantic parts) trains with L_diff alone.

Validation (every epoch, fixed patches and steps): NRMSE of the x0 estimate against I_HC and
Dice of lesion and organs on the segmenter output. The checkpoint with the lowest
``val_score = val_nrmse + (1 - mean(val_dice_lesion, val_dice_organs))`` is kept as best.pt
(the paper evaluates the best-validation model; it does not say how the two tasks are combined).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from amdiff.errors import InputError
from amdiff.losses.warmup import AMDiffLoss, lambda_warm
from amdiff.models.amdiff import build_model
from amdiff.train.base import EpochTrainer, batches, nrmse

LOG_COLUMNS = ["epoch", "lambda_warm", "lr_denoiser", "lr_segmenter", "train_total", "train_diff",
               "train_lor", "train_rev", "train_seg", "val_diff", "val_nrmse", "val_dice_lesion",
               "val_dice_organs", "val_score", "best", "seconds"]


def dice_counts(pred: torch.Tensor, truth: torch.Tensor, labels) -> tuple[float, float]:
    """(2 |P & G|, |P| + |G|) pooled over ``labels`` — summed over batches, then divided."""
    inter = total = 0.0
    for k in labels:
        p, g = pred == k, truth == k
        inter += 2.0 * float((p & g).sum())
        total += float(p.sum() + g.sum())
    return inter, total


class Trainer(EpochTrainer):
    """Train one AMDiff variant (or med_ddpm) on one site's train split, validating on its val split."""

    kind = "amdiff"
    columns = LOG_COLUMNS

    def __init__(self, config: dict, variant: str, site: str, manifest, out_dir, device: str | None = None):
        super().__init__(config, variant, site, manifest, out_dir, device)
        self.variant = variant
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
            optimizer, milestones=[max(1, self.e_max // 2)], gamma=self.tcfg.get("lr_decay_factor", 0.1))}
        self.segments = self.model.segmenter is not None
        if not self.segments:   # a denoiser-only model (med_ddpm) never leaves the warm-up: L_diff alone
            self.e_T = self.e_max
        self.loss = AMDiffLoss(self.e_T, self.e_max, lor_weights=self.tcfg.get("class_weights"),
                               rev_weights=self.tcfg.get("class_weights"),
                               seg_weights=self.tcfg.get("class_weights"),
                               seg_form=self.tcfg.get("focal_dice_form", "focal_tversky"),
                               **self.model.lor_switches()).to(self.device)

    def epoch_columns(self, epoch: int) -> dict:
        lrs = [g["lr"] for g in self.optimizers["adam"].param_groups] + [float("nan")]
        return {"lambda_warm": lambda_warm(epoch, self.e_T, self.e_max), "lr_denoiser": lrs[0],
                "lr_segmenter": lrs[1]}

    def _noisy(self, hc: torch.Tensor, generator: torch.Generator):
        m = self.model
        x0 = m.to_diffusion(hc)
        t = m.schedule.sample_t(hc.shape[0], generator).to(self.device)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        return x0, t, noise, m.schedule.q_sample(x0, t, noise)

    def train_batch(self, batch: dict, epoch: int, generator: torch.Generator) -> dict[str, float]:
        m, opt = self.model, self.optimizers["adam"]
        hc, lc = batch["hc"].to(self.device), batch["lc"].to(self.device)
        x0, t, noise, x_t = self._noisy(hc, generator)
        eps_pred = m.eps(x_t, lc, t)
        aux = {}
        if lambda_warm(epoch, self.e_T, self.e_max) > 0:
            # P_HC: the x0 estimate recovered from the predicted noise (diffusion domain)
            x0_hat = m.schedule.predict_x0(x_t, t, eps_pred).clamp(-1.0, 1.0)
            p_hcr = m.revise(m.to_suv(x0_hat), lc)
            seg = m.segment(p_hcr, lc)
            aux = {"p_hc": x0_hat, "i_hc": x0, "i_hc_suv": hc, "p_hcr": p_hcr,
                   "lesion_logits": seg["lesion"], "organ_logits": seg["organs"],
                   "lesion": batch["lesion"].to(self.device)[:, None],
                   "organs": batch["organs"].to(self.device)[:, None]}
        terms = self.loss(eps_pred, noise, epoch=epoch, **aux)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        return {k: float(terms[k].detach()) for k in ("total", "diff", "lor", "rev", "seg")}

    def validate(self) -> dict[str, float]:
        m = self.model
        gen = torch.Generator().manual_seed(self.seed + 7)
        diffs, sq, ranges = [], [], []
        counts = {"lesion": [0.0, 0.0], "organs": [0.0, 0.0]}
        for batch in batches(self.val_patches, int(self.tcfg["batch_size"])):
            hc, lc = batch["hc"].to(self.device), batch["lc"].to(self.device)
            _, t, noise, x_t = self._noisy(hc, gen)
            eps_pred = m.eps(x_t, lc, t)
            diffs.append(float((eps_pred - noise).abs().mean()))
            p_hc = m.to_suv(m.schedule.predict_x0(x_t, t, eps_pred).clamp(-1, 1))
            err, rng = nrmse(p_hc, hc.clamp(max=m.suv_cutoff))
            sq.append(err)
            ranges.append(rng)
            if not self.segments:
                continue
            seg = m.segment(m.revise(p_hc, lc), lc)
            for head, truth, labels in (("lesion", batch["lesion"], [1]), ("organs", batch["organs"], range(1, 8))):
                inter, total = dice_counts(seg[head].argmax(1).cpu(), truth, labels)
                counts[head][0] += inter
                counts[head][1] += total
        dice = {h: (1.0 if c[1] == 0 else c[0] / c[1]) if self.segments else float("nan")
                for h, c in counts.items()}
        val_nrmse = math.sqrt(float(np.mean(sq))) / max(float(np.max(ranges)), 1e-6)
        score = val_nrmse + (1.0 - 0.5 * (dice["lesion"] + dice["organs"]) if self.segments else 0.0)
        return {"val_diff": float(np.mean(diffs)), "val_nrmse": val_nrmse, "val_dice_lesion": dice["lesion"],
                "val_dice_organs": dice["organs"], "val_score": score}
