"""Figs. 4-6 analogs: one test image per site, coronal slice panels of every model's denoised
image (Fig. 4), lesion masks (Fig. 5) and organ maps (Fig. 6) beside the reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from amdiff.contracts import ORGAN_CLASSES
from amdiff.errors import InputError
from amdiff.evaluate.columns import ORGANS as ORGAN_NAMES
from amdiff.evaluate.figures.labels import format_value, model_label, with_banner
from amdiff.io.nifti import read_volume
from amdiff.levels import parse_image_name
from amdiff.plotting import (DPI, LESION_RGBA, ORGAN_COLOURS, SUV_PERCENTILE, canonical, coronal,
                             save_figure, style_axis)

TRUTH_COLOUR = "#0072b2"     # blue dashed truth outline; red (LESION_RGBA) is the prediction
# One style for the true lesion outline in every Fig. 5 panel, the reference panel included.
TRUTH_STYLE = {"colors": [TRUTH_COLOUR], "linewidths": 1.1, "linestyles": "--"}
ORGAN_ALPHA = 0.5
PANEL_HEIGHT_IN = 4.2
# Slice figures wrap into rows of at most this many panels: a paper-size Fig. 4 has 11
# (input, 9 denoisers, reference), legible in one row only when zoomed in (our choice).
PANELS_PER_ROW = 5


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
    return coronal(np.asarray(volume)[:, y:y + 1, :])


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
    style_axis(ax)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(caption, fontsize=8.5)   # under the panel: ticks are off


def _missing_note(missing: Sequence[str]) -> str | None:
    return f"no predictions: {', '.join(missing)}" if missing else None


def denoising_caption(metrics: tuple[float, float] | None) -> str:
    if metrics is None:
        return ""
    lesion, liver = (float(v) for v in metrics)
    return f"NRMSE lesion {format_value(lesion)}\nNRMSE liver {format_value(liver)}"


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
    return "" if dice is None else f"Dice {format_value(float(dice))}"


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
    handles = [Line2D([], [], ls="", marker="s", color=ORGAN_COLOURS[k], label=v) for k, v in ORGAN_CLASSES.items()]
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
    return canonical(read_volume(path, kind))


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
