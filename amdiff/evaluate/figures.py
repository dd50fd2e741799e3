"""Evaluation figures: Fig. 4-6 analogs (coronal slices), Fig. 7 analog (regression of automatic
on ground-truth quantification) and the training curves.

Everything reads the per-case metrics table of :mod:`amdiff.evaluate.columns` and the file
layout of the workflow:

* references  ``{results}/{site}/{subject}/hc.nii.gz``, ``lc_{image}.nii.gz``, ``lesion.nii.gz``,
  ``organs.nii.gz``;
* predictions ``{results}/predictions/{model}/{site}/{subject}/{image}/{denoised,lesion,organs}.nii.gz``
  (AMDiff variants write all three, comparison denoisers only ``denoised``, comparison
  segmenters only ``lesion`` and ``organs``).

Display conventions (the QC figure's, :mod:`amdiff.qc.figures`): images are reoriented to the
closest RAS+ axes; a slice panel is the coronal plane (fixed index on RAS+ axis 1, anterior-
posterior) with the head up and the patient's right on the viewer's left (radiological);
PET uses an inverted grey scale (high uptake dark) with one SUV window shared by all panels
of a figure. A 2D array handed to a panel function is taken as already laid out this way.

Missing model outputs: a model whose prediction folder holds none of the three files is left
out of every slice figure and named in a footnote ("no predictions: ..."); a model that lacks
only the outputs its kind never writes (a denoiser's masks, a segmenter's image) simply has no
panel in the figure that needs them.

A demo run's figures carry its smoke-test line (``banner``, `amdiff.evaluate.budget`) as the
first line of their title.

Figures are built on :class:`matplotlib.figure.Figure` directly (not pyplot), so nothing is
registered globally and nothing needs closing; files are written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the workflow runs on clusters without a display

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
from scipy import ndimage, stats  # noqa: E402

from amdiff.errors import InputError  # noqa: E402
from amdiff.io.files import check_input_file  # noqa: E402
from amdiff.evaluate import columns  # noqa: E402
from amdiff.evaluate.columns import ORGANS as ORGAN_NAMES  # noqa: E402
from amdiff.io.atomic import atomic_path  # noqa: E402
from amdiff.io.nifti import read_volume  # noqa: E402
from amdiff.listmode.levels import parse_image_name  # noqa: E402
from amdiff.qc.figures import (  # noqa: E402
    LESION_RGBA, ORGAN_COLOURS, ORGANS, SUV_PERCENTILE, _canonical, _coronal, _style_axis)

DPI = 150
TRUTH_COLOUR = "#0072b2"     # blue dashed truth outline; red (LESION_RGBA) is the prediction
# One style for the true lesion outline in every Fig. 5 panel, the reference panel included.
TRUTH_STYLE = {"colors": [TRUTH_COLOUR], "linewidths": 1.1, "linestyles": "--"}
ORGAN_ALPHA = 0.5
PANEL_HEIGHT_IN = 4.2
# Slice figures wrap into rows of at most this many panels: a paper-size Fig. 4 has 11
# (input, 9 denoisers, reference), legible in one row only when zoomed in (our choice).
PANELS_PER_ROW = 5

def model_label(model: str) -> str:
    return columns.model_label(model, standalone=True)


def with_banner(title: str, banner: str | None) -> str:
    """``title`` under ``banner`` (a demo run's smoke-test line, `amdiff.evaluate.budget`)."""
    return f"{banner}\n{title}" if banner else title


def model_family(model: str) -> str:
    """AMDiff and its ablations form one family; every comparison model is its own."""
    return "amdiff" if model.startswith("amdiff") else model


# The paper's Fig. 7 compares AMDiff with "w/o regularizer" (all of L_lor removed) and
# "w/o revision"; their rows lead the figure, in this order.
FIG7_MODELS = ("amdiff", "amdiff_no_lor", "amdiff_no_revision")


def order_models(models: Sequence[str]) -> list[str]:
    """AMDiff family first, led by the paper's Fig. 7 models; otherwise the given order."""
    def key(model: str) -> tuple[bool, int]:
        rank = FIG7_MODELS.index(model) if model in FIG7_MODELS else len(FIG7_MODELS)
        return model_family(model) != "amdiff", rank
    return sorted(dict.fromkeys(models), key=key)


# ---- Fig. 7: regression of automatic on ground-truth quantification --------------------------

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


def _fmt(value: float, spec: str = ".3f") -> str:
    return format(value, spec) if np.isfinite(value) else "n/a"


def _fit_text(fit: Mapping[str, float]) -> str:
    lines = [f"R² = {_fmt(fit['r2'])}"]
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


# ---- Figs. 4-6: one test image per site, coronal slice panels --------------------------------

@dataclass(frozen=True)
class Case:
    """The test image a slice figure shows."""

    site: str
    subject: str
    level: str
    realization: int
    count_percent: float
    mtv_true_ml: float

    @property
    def image(self) -> str:
        """Image name of the path contract (lc_{image}.nii.gz, predictions/.../{image}/)."""
        return self.level if "_r" in self.level else f"{self.level}_r{self.realization}"


def _count_percent(row) -> float:
    value = pd.to_numeric(row.get("count_percent"), errors="coerce")
    return float(value) if np.isfinite(value) else parse_image_name(str(row["level"]))[0]


def _column(df: pd.DataFrame, name: str, default) -> pd.Series:
    if name not in df.columns:
        return pd.Series(default, index=df.index, dtype=float)
    return pd.to_numeric(df[name], errors="coerce")


def choose_case(metrics_df: pd.DataFrame, site: str) -> Case:
    """Deterministic choice: lowest count level, then the largest true MTV (lesion-rich images
    show the segmenters' differences), then subject name, then realization."""
    rows = metrics_df[metrics_df["site"].astype(str) == str(site)]
    if rows.empty:
        raise InputError("metrics", f"no test cases for site {site!r}")
    rows = rows.assign(_pct=rows.apply(_count_percent, axis=1), _real=_column(rows, "realization", 0),
                       _mtv=_column(rows, "mtv_true_ml", np.nan))
    rows["_real"] = rows["_real"].fillna(0).astype(int)
    # MTV is a property of the case, not the model: any model's finite value will do.
    cases = (rows.groupby(["subject", "level", "_real"], as_index=False)
             .agg(_pct=("_pct", "min"), _mtv=("_mtv", "max")))
    cases["_key_mtv"] = -cases["_mtv"].fillna(-np.inf)
    best = cases.sort_values(["_pct", "_key_mtv", "subject", "_real"], kind="mergesort").iloc[0]
    return Case(site=str(site), subject=str(best["subject"]), level=str(best["level"]),
                realization=int(best["_real"]), count_percent=float(best["_pct"]),
                mtv_true_ml=float(best["_mtv"]))


def lesion_slice(lesion_mask: np.ndarray) -> int:
    """Index on axis 1 (RAS+ anterior-posterior) of the coronal slice through the centroid of the
    largest true lesion (26-connected); the middle slice when there is no lesion."""
    mask = np.asarray(lesion_mask) > 0
    if mask.ndim != 3:
        raise ValueError(f"lesion_slice expects a 3D mask, got shape {mask.shape}")
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask.shape[1] // 2
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1        # ties: the first in scan order
    centroid_y = ndimage.center_of_mass(labels == largest)[1]
    return int(np.clip(round(centroid_y), 0, mask.shape[1] - 1))


def coronal_slice(volume: np.ndarray, y: int) -> np.ndarray:
    """One coronal plane laid out like the QC MIPs: rows head -> feet, columns patient R -> L."""
    return _coronal(np.asarray(volume)[:, y:y + 1, :])


@dataclass
class _Layout:
    """How 2D/3D inputs become display planes with a millimetre extent."""

    slice_index: int | None
    voxel_mm: tuple[float, float, float]

    def plane(self, arr: np.ndarray) -> np.ndarray:
        arr = np.asarray(arr)
        if arr.ndim == 2:
            return arr
        if arr.ndim != 3:
            raise ValueError(f"panel images must be 2D or 3D, got shape {arr.shape}")
        y = arr.shape[1] // 2 if self.slice_index is None else self.slice_index
        return coronal_slice(arr, y)

    def extent(self, plane: np.ndarray) -> tuple[float, float, float, float]:
        rows, cols = plane.shape
        return (0.0, cols * self.voxel_mm[0], 0.0, rows * self.voxel_mm[2])


def _default_slice(slice_index, truth) -> int | None:
    if slice_index is not None or truth is None or np.asarray(truth).ndim != 3:
        return slice_index
    return lesion_slice(truth)


def _suv_window(plane: np.ndarray) -> float:
    vmax = float(np.percentile(plane, SUV_PERCENTILE)) if plane.size else 0.0
    return vmax if np.isfinite(vmax) and vmax > 0 else 1.0


def panel_grid(n: int) -> tuple[int, int]:
    """(rows, columns) for n slice panels: as few rows as keep at most `PANELS_PER_ROW` in
    one, the panels spread evenly over them (11 -> 3 x 4, 10 -> 2 x 5, 4 -> 1 x 4)."""
    rows = max(1, -(-n // PANELS_PER_ROW))
    return rows, max(1, -(-n // rows))


def _panel_figure(n: int, plane_shape, layout: _Layout, title: str | None, note: str | None):
    """A figure with n panel axes on the `panel_grid`, in reading order; unused cells removed."""
    rows, cols = plane_shape
    width_mm, height_mm = cols * layout.voxel_mm[0], rows * layout.voxel_mm[2]
    panel_w = PANEL_HEIGHT_IN * width_mm / height_mm
    n_rows, n_cols = panel_grid(n)
    fig = Figure(figsize=(n_cols * (panel_w + 0.25) + 1.2, n_rows * (PANEL_HEIGHT_IN + 0.9) + 0.7),
                 layout="constrained")
    grid = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for spare in grid[max(n, 1):]:
        spare.remove()
    axes = grid[:max(n, 1)]
    if title:
        fig.suptitle(title, fontsize=10, wrap=True)   # wrap: a banner line may be wider than the panels
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="0.35", ha="left", va="bottom")
    return fig, axes


def _show_pet(ax, plane, layout, vmax, alpha=1.0):
    return ax.imshow(plane, cmap="gray_r", vmin=0.0, vmax=vmax, extent=layout.extent(plane),
                     interpolation="nearest", aspect="equal", alpha=alpha)


def _orientation_marks(ax) -> None:
    for x, text, ha in ((0.03, "R", "left"), (0.97, "L", "right")):
        ax.text(x, 0.01, text, transform=ax.transAxes, fontsize=8, color="tab:blue", ha=ha, va="bottom")


def _caption(ax, name: str, caption: str) -> None:
    _style_axis(ax)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(caption, fontsize=8.5)   # under the panel: ticks are off


def _missing_note(missing: Sequence[str]) -> str | None:
    return f"no predictions: {', '.join(missing)}" if missing else None


def denoising_caption(metrics: tuple[float, float] | None) -> str:
    if metrics is None:
        return ""
    lesion, liver = (float(v) for v in metrics)
    return f"NRMSE lesion {_fmt(lesion)}\nNRMSE liver {_fmt(liver)}"


def denoising_panels(images: Mapping[str, np.ndarray], metrics: Mapping[str, tuple[float, float]],
                     png=None, pdf=None, *, truth_lesion: np.ndarray | None = None,
                     slice_index: int | None = None, voxel_mm=(1.0, 1.0, 1.0),
                     suv_max: float | None = None, title: str | None = None,
                     missing: Sequence[str] = (), dpi: int = DPI) -> Figure:
    """Fig. 4 analog: panels in the order given (LC input, each denoiser, HC reference last),
    in rows of at most `PANELS_PER_ROW` (`panel_grid`).

    ``metrics`` maps panel names to (NRMSE lesion, NRMSE liver), written under the panel; panels
    without an entry (input, reference) get no numbers. 3D images are cut at ``slice_index``,
    else through the largest lesion of ``truth_lesion``, else in the middle. The SUV window
    is shared; its top defaults to the 99.9th percentile of the last (reference) panel.
    """
    if not images:
        raise InputError("figures", "denoising panels need at least one image")
    layout = _Layout(_default_slice(slice_index, truth_lesion), tuple(voxel_mm))
    planes = {name: layout.plane(img) for name, img in images.items()}
    vmax = float(suv_max) if suv_max is not None else _suv_window(list(planes.values())[-1])
    fig, axes = _panel_figure(len(planes), next(iter(planes.values())).shape, layout, title,
                              _missing_note(missing))
    im = None
    for ax, (name, plane) in zip(axes, planes.items()):
        im = _show_pet(ax, plane, layout, vmax)
        _caption(ax, name, denoising_caption(metrics.get(name)))
    _orientation_marks(axes[0])
    fig.colorbar(im, ax=list(axes), shrink=0.7, extend="max", pad=0.01, aspect=30).set_label("SUV (g/mL)")
    save_figure(fig, png, pdf, dpi)
    return fig


def _contour(ax, mask_plane, layout, **style) -> None:
    # contour() warns on a constant field; an empty (or full) mask has no outline to draw
    if mask_plane.any() and not mask_plane.all():
        ax.contour(mask_plane.astype(float), levels=[0.5], extent=layout.extent(mask_plane),
                   origin="upper", **style)


def _with_underlay(title: str | None, underlay: str) -> str:
    """The figure title with a line saying which image lies under the masks."""
    line = f"underlay: {underlay}"
    return f"{title}\n{line}" if title else line


def _underlay_colorbar(fig, image, axes, underlay: str) -> None:
    # The masks' figures show the underlay's SUV window too, so its grey levels can be read.
    fig.colorbar(image, ax=list(axes), shrink=0.7, extend="max", pad=0.01,
                 aspect=30).set_label(f"{underlay}: SUV (g/mL)")


def lesion_caption(dice: float | None) -> str:
    return "" if dice is None else f"Dice {_fmt(float(dice))}"


def lesion_panels(background: np.ndarray, masks: Mapping[str, np.ndarray], dice: Mapping[str, float],
                  truth: np.ndarray, png=None, pdf=None, *, truth_name: str = "Ground truth",
                  slice_index: int | None = None, voxel_mm=(1.0, 1.0, 1.0), suv_max: float | None = None,
                  title: str | None = None, missing: Sequence[str] = (), dpi: int = DPI,
                  underlay: str = "PET") -> Figure:
    """Fig. 5 analog: per segmenter its lesion mask outline (red) over the image, the true outline
    (blue dashed, `TRUTH_STYLE`, in every panel) and its lesion Dice underneath; the truth alone
    last. ``underlay`` names the image underneath (title line and colorbar of its SUV window)."""
    layout = _Layout(_default_slice(slice_index, truth), tuple(voxel_mm))
    bg = layout.plane(background)
    vmax = float(suv_max) if suv_max is not None else _suv_window(bg)
    truth_plane = layout.plane(truth) > 0
    names = [*masks, truth_name]
    fig, axes = _panel_figure(len(names), bg.shape, layout, _with_underlay(title, underlay),
                              _missing_note(missing))
    red = {"colors": [LESION_RGBA], "linewidths": 1.4}
    im = None
    for ax, name in zip(axes, names):
        im = _show_pet(ax, bg, layout, vmax)
        _contour(ax, truth_plane, layout, **TRUTH_STYLE)
        if name == truth_name:
            _caption(ax, name, "reference")
            continue
        _contour(ax, layout.plane(masks[name]) > 0, layout, **red)
        _caption(ax, name, lesion_caption(dice.get(name)))
    _orientation_marks(axes[0])
    _underlay_colorbar(fig, im, axes, underlay)
    handles = [Line2D([], [], color=LESION_RGBA, label="predicted lesion"),
               Line2D([], [], color=TRUTH_COLOUR, ls="--", label="true lesion")]
    fig.legend(handles=handles, loc="outside lower right", ncol=2, fontsize=8, frameon=False)
    save_figure(fig, png, pdf, dpi)
    return fig


def organ_caption(dice: Mapping[str, float] | None) -> str:
    """Mean Dice over the organs with a value, and the worst organ."""
    if dice is None:
        return ""
    values = {k: float(v) for k, v in dice.items() if v is not None and np.isfinite(v)}
    if not values:
        return "Dice n/a"
    worst = min(values, key=values.get)
    return f"Dice mean {np.mean(list(values.values())):.3f}\nworst {worst} {values[worst]:.3f}"


def _organ_overlay(ax, labels_plane, layout) -> None:
    rgba = np.zeros(labels_plane.shape + (4,))
    for value, colour in ORGAN_COLOURS.items():
        rgba[labels_plane == value] = to_rgba(colour, alpha=ORGAN_ALPHA)
    ax.imshow(rgba, extent=layout.extent(labels_plane), interpolation="nearest", aspect="equal")


def organ_panels(background: np.ndarray, label_maps: Mapping[str, np.ndarray],
                 dice: Mapping[str, Mapping[str, float]], truth: np.ndarray, png=None, pdf=None, *,
                 truth_name: str = "Ground truth", truth_lesion: np.ndarray | None = None,
                 slice_index: int | None = None, voxel_mm=(1.0, 1.0, 1.0), suv_max: float | None = None,
                 title: str | None = None, missing: Sequence[str] = (), dpi: int = DPI,
                 underlay: str = "PET") -> Figure:
    """Fig. 6 analog: per segmenter its organ labels in colour over the image, with the mean
    organ Dice and the worst organ underneath; the true labels last. ``underlay`` names the
    image underneath in the title."""
    layout = _Layout(_default_slice(slice_index, truth_lesion), tuple(voxel_mm))
    bg = layout.plane(background)
    vmax = float(suv_max) if suv_max is not None else _suv_window(bg)
    maps = {**label_maps, truth_name: truth}
    fig, axes = _panel_figure(len(maps), bg.shape, layout, _with_underlay(title, underlay),
                              _missing_note(missing))
    for ax, (name, labels) in zip(axes, maps.items()):
        _show_pet(ax, bg, layout, vmax, alpha=0.6)
        _organ_overlay(ax, layout.plane(labels), layout)
        _caption(ax, name, "reference" if name == truth_name else organ_caption(dice.get(name)))
    _orientation_marks(axes[0])
    handles = [Line2D([], [], ls="", marker="s", color=ORGAN_COLOURS[k], label=v) for k, v in ORGANS.items()]
    fig.legend(handles=handles, loc="outside lower right", ncol=len(handles), fontsize=8, frameon=False)
    save_figure(fig, png, pdf, dpi)
    return fig


@dataclass
class CaseImages:
    """One test image with its references and each model's outputs, all in closest-RAS+ axes."""

    lc: np.ndarray
    hc: np.ndarray
    lesion: np.ndarray
    organs: np.ndarray
    voxel_mm: tuple[float, float, float]
    denoised: dict[str, np.ndarray] = field(default_factory=dict)
    lesion_pred: dict[str, np.ndarray] = field(default_factory=dict)
    organs_pred: dict[str, np.ndarray] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)   # models with no prediction file at all


def _read_canonical(path, kind) -> tuple[np.ndarray, tuple[float, float, float]]:
    return _canonical(read_volume(path, kind))


def load_case(results_dir, site: str, subject: str, image: str, models: Sequence[str]) -> CaseImages:
    """Read the references and whatever outputs each model wrote for this image (see the module
    docstring for the path contract). Reference files must exist; model files may not."""
    results = Path(results_dir)
    ref = results / site / subject
    hc, zooms = _read_canonical(ref / "hc.nii.gz", "suv")
    case = CaseImages(lc=_read_canonical(ref / f"lc_{image}.nii.gz", "suv")[0], hc=hc,
                      lesion=_read_canonical(ref / "lesion.nii.gz", "labels")[0],
                      organs=_read_canonical(ref / "organs.nii.gz", "labels")[0], voxel_mm=zooms)
    for model in models:
        pred = results / "predictions" / model / site / subject / image
        found = False
        for item, kind, store in (("denoised", "suv", case.denoised), ("lesion", "labels", case.lesion_pred),
                                  ("organs", "labels", case.organs_pred)):
            path = pred / f"{item}.nii.gz"
            if path.is_file():
                data, _ = _read_canonical(path, kind)
                if data.shape != case.hc.shape:
                    raise InputError(path, f"shape {data.shape} differs from the reference {case.hc.shape}")
                store[model] = data
                found = True
        if not found:
            case.missing.append(model)
    return case


def case_rows(metrics_df: pd.DataFrame, case: Case) -> pd.DataFrame:
    """The metrics rows of one test image, indexed by model."""
    rows = metrics_df[(metrics_df["site"].astype(str) == case.site)
                      & (metrics_df["subject"].astype(str) == case.subject)
                      & (metrics_df["level"].astype(str) == case.level)]
    rows = rows[_column(rows, "realization", 0).fillna(0).astype(int) == case.realization]
    return rows.drop_duplicates("model", keep="first").set_index("model")


def _value(rows: pd.DataFrame, model: str, column: str) -> float:
    if model not in rows.index or column not in rows.columns:
        return float("nan")
    return float(pd.to_numeric(rows.at[model, column], errors="coerce"))


SLICE_FIGURES = ((4, "denoising"), (5, "lesions"), (6, "organs"))


def slice_figure_paths(out_dir, site: str) -> dict[str, tuple[Path, Path]]:
    """Figure kind -> (png, pdf) that `write_slice_figures` writes for ``site``."""
    out_dir = Path(out_dir)
    return {kind: (out_dir / f"fig{n}_{kind}_{site}.png", out_dir / f"fig{n}_{kind}_{site}.pdf")
            for n, kind in SLICE_FIGURES}


def write_slice_figures(results_dir, metrics_df: pd.DataFrame, site: str, models: Sequence[str],
                        out_dir, background: str = "lc", dpi: int = DPI,
                        banner: str | None = None) -> dict[str, tuple[Path, Path]]:
    """Write fig4_denoising_{site}, fig5_lesions_{site}, fig6_organs_{site} (.png and .pdf) for the
    image :func:`choose_case` picks. Masks are drawn over the low-count input (``background="lc"``,
    what every model saw) or the high-count reference (``"hc"``). Every file is always written,
    with only the reference panel when no model has the outputs a figure needs."""
    case = choose_case(metrics_df, site)
    data = load_case(results_dir, site, case.subject, case.image, models)
    rows = case_rows(metrics_df, case)
    y = lesion_slice(data.lesion)
    title = (f"{site}: {case.subject}, {case.image} ({case.count_percent:g} % counts), "
             f"coronal slice {y} (through the largest lesion)")
    missing = [model_label(m) for m in data.missing]
    common = {"slice_index": y, "voxel_mm": data.voxel_mm, "missing": missing, "dpi": dpi}
    paths = slice_figure_paths(out_dir, site)
    suv_max = _suv_window(coronal_slice(data.hc, y))
    bg = data.hc if background == "hc" else data.lc
    underlay = ("high-count reference" if background == "hc"
                else f"low-count input ({case.count_percent:g} % counts)")

    images = {f"LC input ({case.count_percent:g} %)": data.lc,
              **{model_label(m): data.denoised[m] for m in models if m in data.denoised},
              "HC reference": data.hc}
    nrmse = {model_label(m): (_value(rows, m, "nrmse_lesion"), _value(rows, m, "nrmse_liver"))
             for m in models if m in data.denoised}
    denoising_panels(images, nrmse, *paths["denoising"], suv_max=suv_max,
                     title=with_banner(f"Denoising: {title}", banner), **common)

    segmenters = [m for m in models if m in data.lesion_pred]
    lesion_panels(bg, {model_label(m): data.lesion_pred[m] for m in segmenters},
                  {model_label(m): _value(rows, m, "dice_lesion") for m in segmenters}, data.lesion,
                  *paths["lesions"], suv_max=suv_max,
                  title=with_banner(f"Lesion segmentation: {title}", banner),
                  underlay=underlay, **common)

    segmenters = [m for m in models if m in data.organs_pred]
    organ_dice = {model_label(m): {o: _value(rows, m, f"dice_{o}") for o in ORGAN_NAMES} for m in segmenters}
    organ_panels(bg, {model_label(m): data.organs_pred[m] for m in segmenters}, organ_dice, data.organs,
                 *paths["organs"], suv_max=suv_max,
                 title=with_banner(f"Organ segmentation: {title}", banner),
                 underlay=underlay, **common)
    return paths


# ---- Training curves -------------------------------------------------------------------------

def _log_key(key) -> tuple[str, str]:
    if isinstance(key, str):          # "model/site", as the workflow names its inputs
        model, _, site = key.partition("/")
        return model, site
    model, site = key
    return str(model), str(site)


def _read_log(path) -> pd.DataFrame:
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
    entries = sorted(((_log_key(k), _read_log(v)) for k, v in logs.items()),
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


# ---- Output ----------------------------------------------------------------------------------

def save_figure(fig: Figure, png=None, pdf=None, dpi: int = DPI) -> None:
    """Write the PNG and/or PDF atomically (a failed save leaves no partial file)."""
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        if path is None:
            continue
        with atomic_path(os.fspath(path)) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
