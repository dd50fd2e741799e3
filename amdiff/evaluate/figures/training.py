"""Training curves of every trained model: loss and validation score against epoch."""

from __future__ import annotations

from typing import Mapping, Sequence

from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from amdiff.errors import InputError
from amdiff.evaluate.figures.labels import model_family, model_label
from amdiff.io.files import check_input_file
from amdiff.plotting import DPI, save_figure


def log_key(key) -> tuple[str, str]:
    if isinstance(key, str):          # "model/site", as the workflow names its inputs
        model, _, site = key.partition("/")
        return model, site
    model, site = key
    return str(model), str(site)


def read_log(path) -> pd.DataFrame:
    path = Path(path)
    check_input_file(path, "training log")
    try:
        log = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise InputError(path, f"not a readable CSV log ({exc})") from None
    if "epoch" not in log.columns:
        raise InputError(path, f"training log has no 'epoch' column (columns: {', '.join(log.columns)})")
    return log


def train_column(log: pd.DataFrame) -> str | None:
    """train_total where logged, else the first train_* term (families log different losses)."""
    if "train_total" in log.columns:
        return "train_total"
    return next((c for c in log.columns if c.startswith("train_")), None)


def best_epoch(log: pd.DataFrame) -> int | None:
    """The epoch best.pt holds: the last row flagged best, else the lowest val_score."""
    if "best" in log.columns and (log["best"] == 1).any():
        return int(log.loc[log["best"] == 1, "epoch"].iloc[-1])
    if "val_score" in log.columns and log["val_score"].notna().any():
        return int(log.loc[log["val_score"].idxmin(), "epoch"])
    return None


def _warmup_note(logs: Sequence[pd.DataFrame]) -> str | None:
    # AMDiff's train_total rises while lambda_warm ramps the regularisers in (Eq. 11): say so,
    # or a reader takes a growing training loss for divergence.
    ramps = [log["lambda_warm"] for log in logs if "lambda_warm" in log.columns and log["lambda_warm"].nunique() > 1]
    if not ramps:
        return None
    top = max(float(r.max()) for r in ramps)
    return f"λ_warm ramps 0 → {top:.2g}: regulariser terms enter train_total"


def training_curves(logs: Mapping, png=None, pdf=None, dpi: int = DPI,
                    banner: str | None = None) -> Figure:
    """One column per model family (AMDiff with its ablations; each comparison model): training
    loss on top, validation score (lower is better) below, one line per (model, training site),
    the best epoch starred. Keys are (model, train_site) tuples or "model/site" strings."""
    if not logs:
        raise InputError("figures", "training curves need at least one log")
    entries = sorted(((log_key(k), read_log(v)) for k, v in logs.items()),
                     key=lambda e: (model_family(e[0][0]) != "amdiff", e[0]))
    families = list(dict.fromkeys(model_family(m) for (m, _), _ in entries))
    sites = sorted({s for (_, s), _ in entries})
    styles = dict(zip(sites, ["-", "--", ":", "-."] * (len(sites) // 4 + 1)))
    palette = matplotlib.colormaps["tab10"].colors
    fig = Figure(figsize=(3.6 * len(families), 5.6), layout="constrained")
    axes = fig.subplots(2, len(families), squeeze=False, sharex="col")
    for c, family in enumerate(families):
        top, bottom = axes[0, c], axes[1, c]
        members = [e for e in entries if model_family(e[0][0]) == family]
        colours = {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys(m for (m, _), _ in members))}
        train_cols = set()
        for (model, site), log in members:
            style = {"color": colours[model], "ls": styles[site], "lw": 1.2, "label": f"{model_label(model)} · {site}"}
            col = train_column(log)
            if col is not None:
                train_cols.add(col)
                top.plot(log["epoch"], log[col], **style)
            if "val_score" in log.columns:
                bottom.plot(log["epoch"], log["val_score"], **style)
                epoch = best_epoch(log)
                if epoch is not None:
                    score = log.loc[log["epoch"] == epoch, "val_score"].iloc[0]
                    bottom.plot([epoch], [score], marker="*", ms=10, color=colours[model], ls="")
        note = _warmup_note([log for _, log in members])
        if note:
            top.text(0.02, 0.02, note, transform=top.transAxes, fontsize=6.5, color="0.35", va="bottom")
        name = model_label("amdiff") + " + ablations" if family == "amdiff" else model_label(family)
        top.set_title(name, fontsize=10)
        top.set_ylabel(" / ".join(sorted(train_cols)) or "no training loss logged", fontsize=8)
        bottom.set_ylabel("val_score (lower is better)", fontsize=8)
        bottom.set_xlabel("epoch", fontsize=8)
        for ax in (top, bottom):
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        top.legend(fontsize=6.5, frameon=False)
    fig.legend(handles=[Line2D([], [], marker="*", ms=10, ls="", color="0.3", label="best epoch (best.pt)")],
               loc="outside lower center", fontsize=8, frameon=False)
    if banner:
        fig.suptitle(banner, fontsize=10, wrap=True)
    save_figure(fig, png, pdf, dpi)
    return fig
