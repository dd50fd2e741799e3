"""Fig. 7 analog: regression of automatic on ground-truth quantification (MTV, TLG), one panel
per model and quantity, with the fit, r and the bias."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator
from scipy import stats

from amdiff.errors import InputError
from amdiff.evaluate.figures.labels import format_value, model_label, order_models, with_banner
from amdiff.plotting import DPI, save_figure


@dataclass(frozen=True)
class Quantity:
    label: str
    true_col: str
    auto_col: str
    unit: str


QUANTITIES = {
    "mtv": Quantity("MTV", "mtv_true_ml", "mtv_auto_ml", "mL"),
    "tlg": Quantity("TLG", "tlg_true", "tlg_auto", "SUV·mL"),
    "suvmean_liver": Quantity("Liver SUVmean", "suvmean_liver_true", "suvmean_liver_auto", "SUV"),
    "suvmean_aorta": Quantity("Aorta SUVmean", "suvmean_aorta_true", "suvmean_aorta_auto", "SUV"),
}
DEFAULT_QUANTITIES = tuple(QUANTITIES)
MIN_POINTS_R2 = 3   # two points always lie on a line: R^2 = 1 says nothing
MAX_TICKS = 5       # per axis of a Fig. 7 panel, so 5-character labels stay apart (our choice)
# Fig. 7 panels share x/y limits (identity line at 45°) while each variable spans at least
# this share of the two together; beyond, e.g. automatic MTVs 1000x the true ones, shared
# limits squash the true values onto a line, so each axis gets its own range (our choice).
SHARED_LIMITS_MIN_SHARE = 1 / 3


def _quantity(name: str) -> Quantity:
    try:
        return QUANTITIES[name]
    except KeyError:
        raise InputError("figures", f"unknown quantity {name!r}; known: {', '.join(QUANTITIES)}") from None


def _pairs(metrics_df: pd.DataFrame, model: str, q: Quantity) -> tuple[np.ndarray, np.ndarray]:
    """(true, auto) of one model's cases where both are finite."""
    missing = [c for c in ("model", q.true_col, q.auto_col) if c not in metrics_df.columns]
    if missing:
        raise InputError("metrics", f"metrics table lacks column(s) {', '.join(missing)}")
    rows = metrics_df.loc[metrics_df["model"] == model, [q.true_col, q.auto_col]]
    rows = rows.apply(pd.to_numeric, errors="coerce")
    rows = rows[np.isfinite(rows).all(axis=1)]
    return rows[q.true_col].to_numpy(float), rows[q.auto_col].to_numpy(float)


def _fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    out = {"n": int(len(x)), "slope": np.nan, "intercept": np.nan, "r2": np.nan}
    if len(x) < 2 or np.ptp(x) == 0:   # no line through fewer than 2 distinct x values
        return out
    fit = stats.linregress(x, y)
    out.update(slope=float(fit.slope), intercept=float(fit.intercept))
    if len(x) >= MIN_POINTS_R2:
        out["r2"] = float(fit.rvalue ** 2)
    return out


def regression_stats(metrics_df: pd.DataFrame, models: Sequence[str],
                     quantities: Sequence[str] = DEFAULT_QUANTITIES) -> pd.DataFrame:
    """OLS of automatic on ground-truth values, per model and quantity, over all its test cases.

    Columns: model, quantity, label, unit, n, slope, intercept, r2. Rows with a NaN in either
    value are dropped; slope/intercept need 2 points with distinct truth, r2 needs 3 (else NaN).
    """
    rows = []
    for model in models:
        for name in quantities:
            q = _quantity(name)
            x, y = _pairs(metrics_df, model, q)
            rows.append({"model": model, "quantity": name, "label": q.label, "unit": q.unit, **_fit(x, y)})
    return pd.DataFrame(rows, columns=["model", "quantity", "label", "unit", "n", "slope", "intercept", "r2"])


def _fit_text(fit: Mapping[str, float]) -> str:
    lines = [f"R² = {format_value(fit['r2'])}"]
    if np.isfinite(fit["slope"]):
        sign = "+" if fit["intercept"] >= 0 else "−"
        lines.append(f"y = {fit['slope']:.3g}x {sign} {abs(fit['intercept']):.3g}")
    lines.append(f"n = {fit['n']}")
    return "\n".join(lines)


def compact_number(value: float, _pos=None) -> str:
    """A tick label without offset or exponent: 0.25, 250, 9000, 12.5k, 3M."""
    value = float(value) + 0.0          # no "-0"
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _padded(lo: float, hi: float) -> tuple[float, float]:
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
    return lo - pad, hi + pad


def regression_limits(x: np.ndarray, y: np.ndarray) -> tuple[tuple, tuple, bool]:
    """(x limits, y limits, shared) of a Fig. 7 panel: both axes on the range of all values
    while each of x and y spans at least `SHARED_LIMITS_MIN_SHARE` of it (a constant counts
    as spanning it: a line is a line); otherwise each axis on its own values' range."""
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    spans = (np.ptp(x), np.ptp(y))
    if hi == lo or min(spans) == 0 or min(spans) / (hi - lo) >= SHARED_LIMITS_MIN_SHARE:
        lims = _padded(lo, hi)
        return lims, lims, True
    return _padded(float(x.min()), float(x.max())), _padded(float(y.min()), float(y.max())), False


def _style_ticks(ax) -> None:
    """At most MAX_TICKS compact labels per axis and no offset text (it met the titles)."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=MAX_TICKS - 1))
        axis.set_major_formatter(FuncFormatter(compact_number))


def _site_colours(metrics_df: pd.DataFrame) -> dict[str, str]:
    sites = sorted(metrics_df["site"].dropna().astype(str).unique()) if "site" in metrics_df else []
    palette = matplotlib.colormaps["tab10"].colors
    return {s: palette[i % len(palette)] for i, s in enumerate(sites)}


def _regression_panel(ax, metrics_df, model, name, colours) -> None:
    q = QUANTITIES[name]
    x, y = _pairs(metrics_df, model, q)
    fit = _fit(x, y)
    ax.set_title(f"{model_label(model)}\n{q.label}", fontsize=9)   # two lines: no overlap
    ax.set_xlabel(f"ground truth ({q.unit})", fontsize=8)
    ax.set_ylabel(f"automatic ({q.unit})", fontsize=8)
    ax.tick_params(labelsize=7)
    _style_ticks(ax)
    if fit["n"] == 0:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.4")
        return
    rows = metrics_df.loc[metrics_df["model"] == model]
    for site, colour in colours.items():
        sx, sy = _pairs(rows[rows["site"].astype(str) == site], model, q)
        if len(sx):
            ax.scatter(sx, sy, s=12, color=colour, alpha=0.8, linewidths=0, label=site)
    xlim, ylim, shared = regression_limits(x, y)
    span = np.array([min(xlim[0], ylim[0]), max(xlim[1], ylim[1])])
    ax.plot(span, span, ls="--", lw=0.8, color="0.5", label="identity")
    if np.isfinite(fit["slope"]):
        ax.plot(np.array(xlim), fit["intercept"] + fit["slope"] * np.array(xlim), lw=1.2, color="k",
                label="OLS fit")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    if shared:
        ax.set_aspect("equal", adjustable="box")
    # Own ranges per axis: the identity line is no longer the diagonal, so say so.
    text = _fit_text(fit) + ("" if shared else "\naxes: own ranges")
    ax.text(0.04, 0.96, text, transform=ax.transAxes, ha="left", va="top", fontsize=7.5,
            bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.85, "pad": 2})


def regression_figure(metrics_df: pd.DataFrame, models: Sequence[str], png=None, pdf=None,
                      quantities: Sequence[str] = DEFAULT_QUANTITIES, dpi: int = DPI,
                      banner: str | None = None) -> Figure:
    """Fig. 7 analog: rows = models (``order_models``: AMDiff, w/o lesion-organ regularizer,
    w/o revision, the other ablations, then the rest), columns = quantities.

    Each panel: cases coloured by test site, the OLS line, the identity line, R², fit and n;
    x and y share limits unless one variable would be squashed (`regression_limits`: then each
    axis has its own range, noted in the panel); at most `MAX_TICKS` compact tick labels per axis.
    """
    for name in quantities:
        _quantity(name)
    models = order_models(models)
    if not models:
        raise InputError("figures", "regression figure needs at least one model")
    colours = _site_colours(metrics_df)
    fig = Figure(figsize=(2.9 * len(quantities), 2.8 * len(models) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(models), len(quantities), squeeze=False))
    for r, model in enumerate(models):
        for c, name in enumerate(quantities):
            _regression_panel(axes[r, c], metrics_df, model, name, colours)
    handles = [Line2D([], [], ls="", marker="o", color=col, label=s) for s, col in colours.items()]
    handles += [Line2D([], [], color="k", label="OLS fit"),
                Line2D([], [], color="0.5", ls="--", label="identity")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(with_banner("Automatic versus ground-truth quantification (test cases)", banner),
                 fontsize=11, wrap=True)
    save_figure(fig, png, pdf, dpi)
    return fig
