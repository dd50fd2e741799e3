"""The epoch loop every model shares: seeded patches, checkpoints, resume, CSV log, best.pt.

A subclass builds ``self.model``, ``self.optimizers`` and ``self.schedulers`` (dicts by name)
and implements ``train_batch`` (one optimisation step, returning floats to log), ``validate``
(returning at least ``val_score``, lower is better) and ``epoch_columns`` (extra log columns).
Per epoch e the patches come from (seed, e) and the random generator is seeded from (seed, e),
as is torch's global generator (dropout draws from it), so a run resumed from ``last.pt``
reproduces the uninterrupted one on the same machine.

Snakemake deletes a job's declared outputs (best.pt, log.csv) before it re-runs the job and
after the job fails, so only undeclared files carry a killed job's state: ``last.pt`` and
``resume_best.pt`` (the best checkpoint, which best.pt is a hard link to, or a copy of). A
resumed run rebuilds best.pt and log.csv from them, and removes the temporaries that a kill
during a write left behind.

Every checkpoint carries the fingerprint of what determines its weights (``fingerprint_inputs``:
the settings the trainer reads, the training manifest's content and the voxels of the images it
lists, variant, site, seed, package version). Snakemake re-runs the job when a setting in its params changes; if last.pt's
fingerprint differs from today's (or it has none, or its state dicts do not fit the network),
the run says so in one line, deletes last.pt, resume_best.pt, best.pt and log.csv, and trains
from scratch instead of republishing the old model.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

import torch

from amdiff import __version__
from amdiff.config import derived_seed, replicate_base, weight_settings
from amdiff.data.cases import content_sha256, load_cases
from amdiff.data.patches import PatchSampler, collate
from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path, write_text
from amdiff.io.nifti import voxel_size_from_affine
from amdiff.io.files import make_output_dir
from amdiff.joblog import progress as progress_of
from amdiff.train.checkpoint import (canonical_sha256, file_sha256, load_checkpoint, load_weights,
                                     save_checkpoint)
from amdiff.train.parallel import DataParallel, check_sizes
from amdiff.train.progress import write_progress


def device_of(name: str, source: str = "training.device") -> torch.device:
    """The torch device ``name`` names, or one-line InputError naming ``source`` (the option or
    config key it came from) when it is no device name or this machine does not have it."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(source, f"{name!r} is not a device name (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(source, f"{name!r} requested, but no CUDA device is available "
                                     "(no GPU, no driver, or a CPU-only torch build); use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(source, f"{name!r} requested, but this machine has {count} CUDA "
                                     f"device(s): cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(source, f"{name!r} requested, but no Apple MPS device is available; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(source, f"{name!r}: device type {device.type!r} is not supported (cpu, cuda, mps)")
    return device


BEST_KEPT = "resume_best.pt"   # undeclared copy of best.pt that survives a Snakemake re-run
PROGRESS = "progress.png"      # the curves so far, redrawn every epoch (amdiff.train.progress)

def changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested dicts (for the log line)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix or "<all>"]
    keys = sorted(set(old) | set(new), key=str)
    return [name for k in keys
            for name in changed_keys(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))]


def what_changed(old, new) -> str:
    """The first changed settings, for the log line: ``"training.lr_denoiser; "`` ('' if unknown)."""
    keys = changed_keys(old, new) if isinstance(old, dict) else []
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return f"{', '.join(keys[:3])}{more}; " if keys else ""


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
        self.variant_name = replicate_base(name)   # what is built; name (a seed replicate's own) seeds it
        self.tcfg = config["training"]
        self.out_dir = Path(out_dir)
        self.parallel = DataParallel()      # one process unless torchrun started several
        check_sizes(self.tcfg, self.parallel.world)
        self.device = self.parallel.start(device_of(device or self.tcfg["device"],
                                                    "--device" if device else "training.device"))
        self.seed = derived_seed(config["seed"], "train", name, site)
        self.e_max = int(self.tcfg["epochs"])
        patch = tuple(self.tcfg["patch_size"])
        fraction = self.tcfg["lesion_fraction"]
        self.train_sampler = PatchSampler(load_cases(manifest, "train", sites=[site]), patch, fraction, self.seed)
        self.val_sampler = PatchSampler(load_cases(manifest, "val", sites=[site]), patch, fraction, self.seed + 1)
        self.val_patches = self.val_sampler.epoch(int(self.tcfg["val_patches"]), 0)
        self.manifest_sha256 = file_sha256(manifest)   # the training data, in the fingerprint:
        self.data_sha256 = content_sha256(self.train_sampler.cases + self.val_sampler.cases)   # and its voxels
        # recorded so inference can say when an image's voxels are not the ones it learned on
        self.voxel_sizes_mm = sorted({tuple(round(v, 3) for v in voxel_size_from_affine(case.affine))
                                      for case in self.train_sampler.cases})
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

    def fingerprint_sections(self) -> dict:
        """The settings this trainer reads that determine the weights; a family reading others
        overrides it (amdiff.train.baselines).

        The default is the AMDiff trainer's: ``training`` (less NOT_WEIGHTS), ``models`` (less the
        variant list, which says which variants train, not how) and ``diffusion``; for Med-DDPM
        also its own SUV cutoff when set (``baselines.med_ddpm``, see models.amdiff.suv_cutoff_of).
        Sections a variant ignores (the segmenter's, for med_ddpm) stay in: a retrain too many costs
        time, one too few publishes a stale model. ``inference`` is not read by this training.
        """
        sections = {"training": weight_settings(self.tcfg),
                    "models": {k: v for k, v in self.config.get("models", {}).items() if k != "variants"},
                    "diffusion": self.config.get("diffusion")}
        own = ((self.config.get("baselines") or {}).get("med_ddpm") or {}).get("suv_cutoff")
        if self.variant_name == "med_ddpm" and own is not None:   # unset or null: diffusion.suv_cutoff, above
            sections["med_ddpm"] = {"suv_cutoff": own}
        return sections

    @cached_property
    def fingerprint_record(self) -> dict:
        """``fingerprint`` (sha256 of canonical JSON) and ``fingerprint_inputs`` (what it hashes),
        stored in every checkpoint; computed once, as it may hash files."""
        inputs = {"kind": self.kind, "variant": self.name, "site": self.site, "seed": self.config["seed"],
                  # a new release may train differently (losses, sampling): retrain on upgrade
                  "amdiff_version": __version__, "manifest_sha256": self.manifest_sha256,
                  "data_sha256": self.data_sha256,
                  **self.fingerprint_sections()}
        inputs = json.loads(json.dumps(inputs, default=str))   # as a checkpoint reloads it: lists, not tuples
        return {"fingerprint": canonical_sha256(inputs), "fingerprint_inputs": inputs}

    # ---- checkpoints -----------------------------------------------------------------------
    def payload(self, epoch: int) -> dict:
        return {"model": self.model.state_dict(), "kind": self.kind, "variant": self.variant_name,
                "model_name": self.name, "site": self.site,
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "epoch": epoch, "best_score": self.best_score, "history": self.history,
                "config": self.config, "voxel_size_mm": [list(v) for v in self.voxel_sizes_mm],
                **self.fingerprint_record, **self.extra_payload()}

    def resume(self) -> bool:
        last = self.out_dir / "last.pt"
        if not last.exists():
            return False
        try:
            state = load_checkpoint(last, map_location=self.device)
        except InputError as err:
            # never restart silently: days of training may be one good copy away
            raise InputError(last, f"{err.problem}; restore it, or delete it to train from scratch") from None
        # another model's or site's checkpoint here is a wrong --out-dir: stop, do not delete it
        written_by = state.get("model_name", state.get("variant"))
        if written_by != self.name:
            raise InputError(last, f"checkpoint is for model {written_by!r}, not {self.name!r}")
        if state.get("site", self.site) != self.site:
            raise InputError(last, f"checkpoint is for site {state.get('site')!r}, not {self.site!r}")
        old, new = state.get("fingerprint"), self.fingerprint_record["fingerprint"]
        if old != new:
            changed = what_changed(state.get("fingerprint_inputs"), self.fingerprint_record["fingerprint_inputs"])
            # none: written before checkpoints had fingerprints, so trained with unknown settings
            why = "settings changed since it was written" if old else "its settings are unknown"
            self.discard(f"{last}: {why} ({changed}fingerprint {(old or 'none')[:12]} -> {new[:12]})")
            return False
        try:
            start, best, history = int(state["epoch"]) + 1, float(state["best_score"]), list(state["history"])
            self.load_state(state, last)
        except (InputError, KeyError, ValueError, RuntimeError, TypeError, IndexError) as err:
            # same fingerprint yet unloadable (e.g. code changed the network): a mismatch, not a crash
            problem = err.problem if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
            self.discard(f"{last}: {' '.join(problem.split())}")
            return False
        self.start_epoch, self.best_score, self.history = start, best, history
        return True

    def load_state(self, state: dict, source) -> None:
        """Weights, optimizer and scheduler states from a checkpoint: all of them or none (after
        an error the trainer is as built, ready to train from scratch)."""
        before = copy.deepcopy((self.model.state_dict(), {k: o.state_dict() for k, o in self.optimizers.items()},
                                {k: s.state_dict() for k, s in self.schedulers.items()}))
        try:
            load_weights(self.model, state["model"], source, network="the network of today's settings")
            for key, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][key])
            for key, sched in self.schedulers.items():
                sched.load_state_dict(state["schedulers"][key])
        except Exception:
            self.model.load_state_dict(before[0])
            for key, opt in self.optimizers.items():
                opt.load_state_dict(before[1][key])
            for key, sched in self.schedulers.items():
                sched.load_state_dict(before[2][key])
            raise

    def discard(self, reason: str) -> None:
        """Say in one line why the kept training state goes, then delete it and the outputs made
        from it. last.pt goes last: a kill mid-way leaves a last.pt that is discarded again.
        (Data-parallel: process 0 does this before the others resume.)"""
        if not self.parallel.is_main:
            return
        print(f"{reason}: training from scratch", file=sys.stderr)
        for name in ("best.pt", "log.csv", PROGRESS, BEST_KEPT, "last.pt"):
            (self.out_dir / name).unlink(missing_ok=True)

    def restore_outputs(self) -> None:
        """Rebuild best.pt and log.csv (Snakemake removed them, or a kill came before the log)."""
        best, kept = self.out_dir / "best.pt", self.out_dir / BEST_KEPT
        if not best.exists() and kept.exists():
            load_checkpoint(kept)   # a damaged copy stops here with one line
            link_or_copy(kept, best)
        if self.history:
            self.write_log()

    def remove_temporaries(self) -> None:
        """Drop what ``atomic_path`` left of this folder's files when a SIGKILL (or a lost node)
        hit a write; SIGTERM and SIGINT remove them at once (``remove_temporaries_on_signals``)."""
        for name in ("last.pt", "best.pt", BEST_KEPT, "log.csv", PROGRESS):
            for tmp in self.out_dir.glob(f".{name}.*.tmp*"):
                tmp.unlink(missing_ok=True)

    def write_log(self) -> None:
        buf = io.StringIO()
        # model families with a fixed log declare their columns; others log what they return
        writer = csv.DictWriter(buf, fieldnames=self.columns or list(self.history[0]))
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.out_dir / "log.csv", buf.getvalue())
        write_progress(self.history, self.out_dir / PROGRESS, f"{self.name} trained on {self.site}")

    # ---- the loop --------------------------------------------------------------------------
    def fit(self, max_epochs_this_run: int | None = None, progress: bool = True) -> Path:
        """Train from the last checkpoint (if any) to e_max; returns best.pt's path.

        ``max_epochs_this_run`` stops early (as a time-limited cluster job would); a later call
        resumes where it stopped.
        """
        main = self.parallel.is_main    # data-parallel: process 0 writes every file
        if main:
            make_output_dir(self.out_dir)   # a file in its place, or no write access: one line
            self.remove_temporaries()
            if self.resume():
                self.restore_outputs()
        self.parallel.barrier()          # the others resume from what process 0 left
        if not main:
            self.resume()
        if not getattr(self, "_gradients_averaged", False):
            for opt in self.optimizers.values():
                self.parallel.average_gradients(opt)
            self._gradients_averaged = True
        n, bs = int(self.tcfg["patches_per_epoch"]), int(self.tcfg["batch_size"])
        end = self.e_max if max_epochs_this_run is None else min(self.e_max, self.start_epoch + max_epochs_this_run)
        self.model.train()
        bar = progress_of(range(self.start_epoch, end), desc=f"train {self.name}/{self.site}", unit="epoch",
                          enabled=progress and main, initial=self.start_epoch, total=self.e_max)
        for epoch in bar:
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", str(epoch)))
            # layers that draw from torch's global generator (dropout) are seeded per epoch as
            # well, so a run resumed in a new process continues exactly as an uninterrupted one
            torch.manual_seed(derived_seed(self.seed, "epoch-global", str(epoch)))
            patches = self.train_sampler.epoch(n, epoch)
            means = RunningMeans()
            for batch in batches(patches, bs):
                local = self.parallel.shard(batch)
                means.add(self.train_batch(local, epoch, gen), len(local["hc"]))
            row = {"epoch": epoch, **self.epoch_columns(epoch)}
            for sched in self.schedulers.values():
                sched.step()
            train_means = means.result(lambda values: self.parallel.sum(values, self.device))
            if not main:                 # process 0 validates and writes while the others go on
                continue
            self.model.eval()
            with torch.no_grad():
                val = self.validate()
            self.model.train()
            improved = val["val_score"] < self.best_score
            if improved:
                self.best_score = val["val_score"]
            self.history.append({**row, **{f"train_{k}": v for k, v in train_means.items()}, **val,
                                 "best": int(improved), "seconds": round(time.perf_counter() - t0, 3)})
            bar.set_postfix(val_score=float(val["val_score"]), best=float(self.best_score))
            if improved:
                save_checkpoint(self.out_dir / BEST_KEPT, self.payload(epoch))
                link_or_copy(self.out_dir / BEST_KEPT, self.out_dir / "best.pt")
            save_checkpoint(self.out_dir / "last.pt", self.payload(epoch))
            every = int(self.tcfg["checkpoint_every_epochs"])
            if every and (epoch + 1) % every == 0:   # kept for learning curves, never read back
                link_or_copy(self.out_dir / "last.pt", self.out_dir / f"epoch_{epoch + 1:04d}.pt")
            self.write_log()
        self.parallel.finish()
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

    def result(self, sum_over_processes=None) -> dict[str, float]:
        """The means; ``sum_over_processes`` (data-parallel) adds the other processes' sums and
        weights first, so the means are over the global batches."""
        keys = list(self.sums)
        sums, weights = [self.sums[k] for k in keys], [self.weights[k] for k in keys]
        if sum_over_processes is not None:
            both = sum_over_processes(sums + weights)
            sums, weights = both[:len(keys)], both[len(keys):]
        return {k: s / w if w else float("nan") for k, s, w in zip(keys, sums, weights)}


def nrmse(pred: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(sum of squared errors / voxels, range of the reference) for pooled NRMSE over batches."""
    return float(((pred - ref) ** 2).mean()), float(ref.max() - ref.min())
