"""The progress figure of one training run, ``progress.png`` next to ``log.csv``.

Rewritten after every epoch (like nnU-Net's progress.png), so a user watching a long run sees
its curves without waiting for the evaluation: the training losses, the learning rates (log
scale) and the validation metrics by epoch, the best epoch (the one best.pt holds) marked.
Panels are built from the log's columns by prefix (``train_``, ``lr``, ``val_``), so every
model family's log draws, whatever losses it records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure

from amdiff.io.atomic import atomic_path

PANELS = (("training loss", "train_", False), ("learning rate", "lr", True), ("validation", "val_", False))
DPI = 100


def progress_figure(history: Sequence[dict], title: str) -> Figure:
    """One panel per column group present in ``history`` (the rows of log.csv)."""
    log = pd.DataFrame(list(history))
    groups = [(name, [c for c in log.columns if c.startswith(prefix)], log_scale)
              for name, prefix, log_scale in PANELS]
    groups = [g for g in groups if g[1]]
    fig = Figure(figsize=(6.0, 2.2 * max(1, len(groups))), layout="constrained")
    axes = fig.subplots(max(1, len(groups)), 1, squeeze=False, sharex=True)[:, 0]
    best = log.loc[log["best"] == 1, "epoch"] if "best" in log.columns else pd.Series(dtype=float)
    for ax, (name, columns, log_scale) in zip(axes, groups):
        for column in columns:
            values = pd.to_numeric(log[column], errors="coerce")
            if values.notna().any():
                ax.plot(log["epoch"], values, marker=".", ms=3, lw=1.0, label=column)
        if log_scale and (log[columns].apply(pd.to_numeric, errors="coerce") > 0).any().any():
            ax.set_yscale("log")
        if name == "validation" and len(best):
            ax.axvline(float(best.iloc[-1]), color="0.4", ls=":", lw=1.0, label="best epoch (best.pt)")
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, frameon=False, loc="upper right")
    axes[-1].set_xlabel("epoch", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def write_progress(history: Sequence[dict], path, title: str) -> None:
    """Draw ``history`` and write it to ``path`` (PNG) atomically: a reader never sees half a file."""
    fig = progress_figure(history, title)
    with atomic_path(os.fspath(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
