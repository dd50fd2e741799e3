"""Joint AMDiff training (paper Eqs. 1-11) with best-validation checkpointing and resume.

Per epoch e (0-based): a deterministic set of lesion-balanced patches (seeded by (seed, e)),
random steps t and noise from a generator seeded by (seed, e), so an interrupted run resumed
from ``last.pt`` reproduces the uninterrupted one exactly on the same machine. Before e_T only
the denoiser trains (lambda_warm = 0, Eq. 11); afterwards P_HC = x0 estimate from the predicted
noise feeds L_lor, the revision module and the segmenter (Eq. 10).

Validation (every epoch, fixed patches and steps): NRMSE of the x0 estimate against I_HC and
Dice of lesion and organs on the segmenter output. The checkpoint with the lowest
``val_score = val_nrmse + (1 - mean(val_dice_lesion, val_dice_organs))`` is kept as best.pt
(the paper evaluates the best-validation model; it does not say how the two tasks are combined).
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from amdiff.config import derived_seed
from amdiff.data.cases import load_cases
from amdiff.data.patches import PatchSampler, collate
from amdiff.errors import InputError
from amdiff.io.atomic import write_text
from amdiff.losses.warmup import AMDiffLoss, lambda_warm
from amdiff.models.amdiff import build_model
from amdiff.train.checkpoint import load_checkpoint, save_checkpoint

LOG_COLUMNS = ["epoch", "lambda_warm", "lr_denoiser", "lr_segmenter", "train_total", "train_diff",
               "train_lor", "train_rev", "train_seg", "val_diff", "val_nrmse", "val_dice_lesion",
               "val_dice_organs", "val_score", "best", "seconds"]


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("training.device", "cuda requested but no CUDA device is available")
    return torch.device(name)


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield collate(items[i:i + size])


def _dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    inter = float((pred & truth).sum())
    total = float(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


class Trainer:
    """Train one AMDiff variant on one site's train split, validating on its val split."""

    def __init__(self, config: dict, variant: str, site: str, manifest, out_dir, device: str | None = None):
        self.config, self.variant, self.site = config, variant, site
        self.tcfg = config["training"]
        self.out_dir = Path(out_dir)
        self.device = _device(device or self.tcfg.get("device", "cpu"))
        self.seed = derived_seed(config["seed"], "train", variant, site)
        self.e_max, self.e_T = int(self.tcfg["epochs"]), int(self.tcfg["warmup_epochs"])
        if self.e_T > self.e_max:
            raise InputError("training.warmup_epochs", f"e_T={self.e_T} exceeds epochs={self.e_max}")
        patch = tuple(self.tcfg["patch_size"])
        fraction = self.tcfg.get("lesion_fraction", 0.5)
        self.train_sampler = PatchSampler(load_cases(manifest, "train", sites=[site]), patch, fraction, self.seed)
        self.val_sampler = PatchSampler(load_cases(manifest, "val", sites=[site]), patch, fraction, self.seed + 1)
        self.val_patches = self.val_sampler.epoch(int(self.tcfg["val_patches"]), 0)

        torch.manual_seed(self.seed)
        self.model = build_model(variant, config).to(self.device)
        den, seg = self.model.parameter_groups()
        groups = [{"params": den, "lr": self.tcfg["lr_denoiser"]}]
        if seg:
            groups.append({"params": seg, "lr": self.tcfg["lr_segmenter"]})
        self.optimizer = torch.optim.Adam(groups)
        self.segments = self.model.segmenter is not None
        if not self.segments:   # a denoiser-only model (med_ddpm) never leaves the warm-up: L_diff alone
            self.e_T = self.e_max
        # both learning rates x0.1 after half the epochs (paper: 400 of 800)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=[max(1, self.e_max // 2)], gamma=self.tcfg.get("lr_decay_factor", 0.1))
        self.loss = AMDiffLoss(self.e_T, self.e_max, lor_weights=self.tcfg.get("class_weights"),
                               rev_weights=self.tcfg.get("class_weights"),
                               seg_weights=self.tcfg.get("class_weights"),
                               seg_form=self.tcfg.get("focal_dice_form", "focal_tversky"),
                               **self.model.lor_switches()).to(self.device)
        self.start_epoch, self.best_score, self.history = 0, math.inf, []

    # ---- checkpoints -------------------------------------------------------------------
    def _payload(self, epoch: int) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch, "best_score": self.best_score,
                "history": self.history, "variant": self.variant, "site": self.site,
                "config": self.config}

    def resume(self) -> bool:
        last = self.out_dir / "last.pt"
        if not last.exists():
            return False
        state = load_checkpoint(last, map_location=self.device)
        if state.get("variant") != self.variant:
            raise InputError(last, f"checkpoint is for variant {state.get('variant')!r}, not {self.variant!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_score = float(state["best_score"])
        self.history = list(state["history"])
        return True

    # ---- one epoch -----------------------------------------------------------------------
    def _forward(self, batch: dict, epoch: int, generator: torch.Generator) -> dict:
        m = self.model
        hc = batch["hc"].to(self.device)
        lc = batch["lc"].to(self.device)
        x0 = m.to_diffusion(hc)
        t = m.schedule.sample_t(hc.shape[0], generator).to(self.device)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        x_t = m.schedule.q_sample(x0, t, noise)
        eps_pred = m.eps(x_t, lc, t)
        aux = {}
        if lambda_warm(epoch, self.e_T, self.e_max) > 0:
            # P_HC: the x0 estimate recovered from the predicted noise (diffusion domain)
            x0_hat = m.schedule.predict_x0(x_t, t, eps_pred).clamp(-1.0, 1.0)
            p_hc = m.to_suv(x0_hat)
            p_hcr = m.revise(p_hc, lc)
            seg = m.segment(p_hcr, lc)
            aux = {"p_hc": x0_hat, "i_hc": x0, "i_hc_suv": hc, "p_hcr": p_hcr,
                   "lesion_logits": seg["lesion"], "organ_logits": seg["organs"],
                   "lesion": batch["lesion"].to(self.device)[:, None],
                   "organs": batch["organs"].to(self.device)[:, None]}
        return self.loss(eps_pred, noise, epoch=epoch, **aux)

    def _validate(self) -> dict:
        m = self.model
        m.eval()
        gen = torch.Generator().manual_seed(self.seed + 7)
        diffs, sq, ranges = [], [], []
        inter = {"lesion": 0.0, "organs": 0.0}
        total = {"lesion": 0.0, "organs": 0.0}
        with torch.no_grad():
            for batch in _batches(self.val_patches, int(self.tcfg["batch_size"])):
                hc, lc = batch["hc"].to(self.device), batch["lc"].to(self.device)
                x0 = m.to_diffusion(hc)
                t = m.schedule.sample_t(hc.shape[0], gen).to(self.device)
                noise = torch.randn(x0.shape, generator=gen).to(self.device)
                x_t = m.schedule.q_sample(x0, t, noise)
                eps_pred = m.eps(x_t, lc, t)
                diffs.append(float((eps_pred - noise).abs().mean()))
                p_hc = m.to_suv(m.schedule.predict_x0(x_t, t, eps_pred).clamp(-1, 1))
                ref = hc.clamp(max=m.suv_cutoff)
                sq.append(float(((p_hc - ref) ** 2).mean()))
                ranges.append(float(ref.max() - ref.min()))
                if not self.segments:
                    continue
                seg = m.segment(m.revise(p_hc, lc), lc)
                for head, truth in (("lesion", batch["lesion"] > 0), ("organs", batch["organs"])):
                    pred = seg[head].argmax(1).cpu()
                    if head == "lesion":
                        p, g = pred > 0, truth
                        inter[head] += float((p & g).sum())
                        total[head] += float(p.sum() + g.sum())
                    else:
                        for k in range(1, 8):
                            p, g = pred == k, truth == k
                            inter[head] += float((p & g).sum())
                            total[head] += float(p.sum() + g.sum())
        m.train()
        dice = {h: (1.0 if total[h] == 0 else 2 * inter[h] / total[h]) for h in inter}
        nrmse = math.sqrt(float(np.mean(sq))) / max(float(np.max(ranges)), 1e-6)
        if not self.segments:
            dice = {h: float("nan") for h in dice}
        score = nrmse + (1.0 - 0.5 * (dice["lesion"] + dice["organs"]) if self.segments else 0.0)
        return {"val_diff": float(np.mean(diffs)), "val_nrmse": nrmse, "val_dice_lesion": dice["lesion"],
                "val_dice_organs": dice["organs"], "val_score": score}

    def _write_log(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.out_dir / "log.csv", buf.getvalue())

    def fit(self, max_epochs_this_run: int | None = None, progress: bool = True) -> Path:
        """Train from the last checkpoint (if any) to e_max; returns best.pt's path.

        ``max_epochs_this_run`` stops early (as a time-limited cluster job would); a later call
        resumes where it stopped.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        n = int(self.tcfg["patches_per_epoch"])
        bs = int(self.tcfg["batch_size"])
        end = self.e_max if max_epochs_this_run is None else min(self.e_max, self.start_epoch + max_epochs_this_run)
        self.model.train()
        for epoch in tqdm(range(self.start_epoch, end), desc=f"train {self.variant}/{self.site}",
                          unit="epoch", disable=not progress, initial=self.start_epoch, total=self.e_max):
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", str(epoch)))
            sums: dict[str, float] = {}
            patches = self.train_sampler.epoch(n, epoch)
            for batch in _batches(patches, bs):
                self.optimizer.zero_grad(set_to_none=True)
                terms = self._forward(batch, epoch, gen)
                terms["total"].backward()
                self.optimizer.step()
                for key in ("total", "diff", "lor", "rev", "seg"):
                    sums[key] = sums.get(key, 0.0) + float(terms[key].detach()) * len(batch["hc"]) / len(patches)
            lrs = [g["lr"] for g in self.optimizer.param_groups] + [float("nan")]
            self.scheduler.step()
            val = self._validate()
            improved = val["val_score"] < self.best_score
            if improved:
                self.best_score = val["val_score"]
            self.history.append({"epoch": epoch, "lambda_warm": lambda_warm(epoch, self.e_T, self.e_max),
                                 "lr_denoiser": lrs[0], "lr_segmenter": lrs[1],
                                 **{f"train_{k}": v for k, v in sums.items()}, **val,
                                 "best": int(improved), "seconds": round(time.perf_counter() - t0, 3)})
            if improved:
                save_checkpoint(self.out_dir / "best.pt", self._payload(epoch))
            save_checkpoint(self.out_dir / "last.pt", self._payload(epoch))
            self._write_log()
        return self.out_dir / "best.pt"
