"""The epoch loop every model shares: seeded patches, checkpoints, resume, CSV log, best.pt.

A subclass builds ``self.model``, ``self.optimizers`` and ``self.schedulers`` (dicts by name)
and implements ``train_batch`` (one optimisation step, returning floats to log), ``validate``
(returning at least ``val_score``, lower is better) and ``epoch_columns`` (extra log columns).
Per epoch e the patches come from (seed, e) and the random generator is seeded from (seed, e),
so a run resumed from ``last.pt`` reproduces the uninterrupted one on the same machine.

Snakemake deletes a job's declared outputs (best.pt, log.csv) before it re-runs the job and
after the job fails, so only undeclared files carry a killed job's state: ``last.pt`` and
``resume_best.pt`` (the best checkpoint, which best.pt is a hard link to, or a copy of). A
resumed run rebuilds best.pt and log.csv from them, and removes the temporaries that a kill
during a write left behind.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from tqdm import tqdm

from amdiff.config import derived_seed
from amdiff.data.cases import load_cases
from amdiff.data.patches import PatchSampler, collate
from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path, write_text
from amdiff.train.checkpoint import load_checkpoint, save_checkpoint


def device_of(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("training.device", "cuda requested but no CUDA device is available")
    return torch.device(name)


BEST_KEPT = "resume_best.pt"   # undeclared copy of best.pt that survives a Snakemake re-run


def link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a hard link to ``src`` (a copy where links are not supported)."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield collate(items[i:i + size])


class EpochTrainer(ABC):
    kind = "model"
    columns: list[str] = []

    def __init__(self, config: dict, name: str, site: str, manifest, out_dir, device: str | None = None):
        self.config, self.name, self.site = config, name, site
        self.tcfg = config["training"]
        self.out_dir = Path(out_dir)
        self.device = device_of(device or self.tcfg.get("device", "cpu"))
        self.seed = derived_seed(config["seed"], "train", name, site)
        self.e_max = int(self.tcfg["epochs"])
        patch = tuple(self.tcfg["patch_size"])
        fraction = self.tcfg.get("lesion_fraction", 0.5)
        self.train_sampler = PatchSampler(load_cases(manifest, "train", sites=[site]), patch, fraction, self.seed)
        self.val_sampler = PatchSampler(load_cases(manifest, "val", sites=[site]), patch, fraction, self.seed + 1)
        self.val_patches = self.val_sampler.epoch(int(self.tcfg["val_patches"]), 0)
        self.start_epoch, self.best_score, self.history = 0, math.inf, []
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict = {}

    # ---- what a model family defines ------------------------------------------------------
    @abstractmethod
    def train_batch(self, batch: dict, epoch: int, generator: torch.Generator) -> dict[str, float]:
        """One optimisation step on a collated batch; returns the loss terms to log."""

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Metrics on ``self.val_patches`` (called in eval mode without gradients); needs val_score."""

    def epoch_columns(self, epoch: int) -> dict:
        return {}

    def extra_payload(self) -> dict:
        return {}

    # ---- checkpoints -----------------------------------------------------------------------
    def payload(self, epoch: int) -> dict:
        return {"model": self.model.state_dict(), "kind": self.kind, "variant": self.name, "site": self.site,
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "epoch": epoch, "best_score": self.best_score, "history": self.history,
                "config": self.config, **self.extra_payload()}

    def resume(self) -> bool:
        last = self.out_dir / "last.pt"
        if not last.exists():
            return False
        try:
            state = load_checkpoint(last, map_location=self.device)
        except InputError as err:
            # never restart silently: days of training may be one good copy away
            raise InputError(last, f"{err.problem}; restore it, or delete it to train from scratch") from None
        if state.get("variant") != self.name:
            raise InputError(last, f"checkpoint is for model {state.get('variant')!r}, not {self.name!r}")
        self.model.load_state_dict(state["model"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_score = float(state["best_score"])
        self.history = list(state["history"])
        return True

    def restore_outputs(self) -> None:
        """Rebuild best.pt and log.csv (Snakemake removed them, or a kill came before the log)."""
        best, kept = self.out_dir / "best.pt", self.out_dir / BEST_KEPT
        if not best.exists() and kept.exists():
            load_checkpoint(kept)   # a damaged copy stops here with one line
            link_or_copy(kept, best)
        if self.history:
            self.write_log()

    def remove_temporaries(self) -> None:
        """Drop what ``atomic_path`` left of this folder's files when a kill hit a write."""
        for name in ("last.pt", "best.pt", BEST_KEPT, "log.csv"):
            for tmp in self.out_dir.glob(f".{name}.*.tmp*"):
                tmp.unlink(missing_ok=True)

    def write_log(self) -> None:
        buf = io.StringIO()
        # model families with a fixed log declare their columns; others log what they return
        writer = csv.DictWriter(buf, fieldnames=self.columns or list(self.history[0]))
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.out_dir / "log.csv", buf.getvalue())

    # ---- the loop --------------------------------------------------------------------------
    def fit(self, max_epochs_this_run: int | None = None, progress: bool = True) -> Path:
        """Train from the last checkpoint (if any) to e_max; returns best.pt's path.

        ``max_epochs_this_run`` stops early (as a time-limited cluster job would); a later call
        resumes where it stopped.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.remove_temporaries()
        if self.resume():
            self.restore_outputs()
        n, bs = int(self.tcfg["patches_per_epoch"]), int(self.tcfg["batch_size"])
        end = self.e_max if max_epochs_this_run is None else min(self.e_max, self.start_epoch + max_epochs_this_run)
        self.model.train()
        for epoch in tqdm(range(self.start_epoch, end), desc=f"train {self.name}/{self.site}", unit="epoch",
                          disable=not progress, initial=self.start_epoch, total=self.e_max):
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", str(epoch)))
            patches = self.train_sampler.epoch(n, epoch)
            means = RunningMeans()
            for batch in batches(patches, bs):
                means.add(self.train_batch(batch, epoch, gen), len(batch["hc"]))
            row = {"epoch": epoch, **self.epoch_columns(epoch)}
            for sched in self.schedulers.values():
                sched.step()
            self.model.eval()
            with torch.no_grad():
                val = self.validate()
            self.model.train()
            improved = val["val_score"] < self.best_score
            if improved:
                self.best_score = val["val_score"]
            self.history.append({**row, **{f"train_{k}": v for k, v in means.result().items()}, **val,
                                 "best": int(improved), "seconds": round(time.perf_counter() - t0, 3)})
            if improved:
                save_checkpoint(self.out_dir / BEST_KEPT, self.payload(epoch))
                link_or_copy(self.out_dir / BEST_KEPT, self.out_dir / "best.pt")
            save_checkpoint(self.out_dir / "last.pt", self.payload(epoch))
            self.write_log()
        return self.out_dir / "best.pt"


class RunningMeans:
    """Per-key means of the batch values, weighted by batch size; a NaN value (a term not computed
    for that batch, e.g. no item had a small enough t for P_HC) is left out of its key's mean."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, values: dict[str, float], weight: float) -> None:
        for key, value in values.items():
            self.sums.setdefault(key, 0.0)
            self.weights.setdefault(key, 0.0)
            if not math.isnan(value):
                self.sums[key] += value * weight
                self.weights[key] += weight

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] if self.weights[k] else float("nan") for k in self.sums}


def nrmse(pred: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(sum of squared errors / voxels, range of the reference) for pooled NRMSE over batches."""
    return float(((pred - ref) ** 2).mean()), float(ref.max() - ref.min())
