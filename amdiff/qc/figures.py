"""Per-subject QC figure: coronal MIPs of the high-count and every low-count image.

A reader should see at a glance that (a) the images are whole-body PET in a sensible SUV
range, (b) noise rises as the count level falls while the total activity stays put, and
(c) the lesion and organ masks sit where the uptake is.

Display conventions (clinical PET MIP): projection along anterior-posterior (RAS+ axis 1),
head up, patient right on the viewer's left (radiological), inverted grey scale
(high uptake dark), one SUV window shared by every PET panel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap, to_rgba
from matplotlib.patches import Patch
from scipy import ndimage

from amdiff.contracts import ORGAN_CLASSES
from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path
from amdiff.io.nifti import Volume, check_same_grid, read_volume
from amdiff.levels import parse_image_name
from amdiff.plotting import LESION_RGBA, ORGAN_COLOURS, SUV_PERCENTILE, canonical, coronal, style_axis

# Organ classes of the data contract, label value -> name.
ORGANS = ORGAN_CLASSES
MAX_PANEL_HEIGHT_IN = 14.0     # keeps paper-size volumes to a viewable PNG
LIVER_MIN_VOXELS = 10          # below this the eroded liver is too small for a CV estimate


def level_percent(name: str) -> float:
    """Percent of the full list encoded in a level name: p005 -> 5, p00625 -> 6.25, p0125_r1 -> 12.5."""
    return _parse(name)[0]


def _parse(name: str) -> tuple[float, int]:
    try:
        return parse_image_name(name)
    except ValueError as err:
        raise InputError(name, f"not a count-level name: {err}") from None


def _level_sort_key(name: str) -> tuple[float, int]:
    return _parse(name)


@dataclass
class QCFigureInfo:
    """What the figure shows, for logs and for tests that check pixels.

    ``panels`` maps panel name ("hc", each level name, "labels") to its image box in PNG pixel
    coordinates (x0, y0, x1, y1), origin top-left, x1/y1 exclusive edges.
    ``stats`` maps the same PET panel names to {"percent", "total_suv_ml", "liver_cv_pct"}.
    """

    path: str
    suv_window: tuple[float, float]
    panels: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    shape_px: tuple[int, int] = (0, 0)


def _check_binary(vol: Volume) -> None:
    values = np.unique(vol.data)
    if not np.all(np.isin(values, (0, 1))):
        raise InputError(vol.path,
                         f"lesion mask must be binary 0/1, found values {values[:8].tolist()}")


def _check_organs(vol: Volume) -> None:
    top = int(vol.data.max()) if vol.data.size else 0
    if top > max(ORGANS):
        raise InputError(vol.path, f"organ labels must lie in 0..{max(ORGANS)}, found {top}")


def image_stats(suv: np.ndarray, organs: np.ndarray, voxel_ml: float,
                lesion: np.ndarray | None = None) -> dict[str, float]:
    """Whole-image total SUV*mL and liver coefficient of variation (%, sample sd / mean).

    The liver is eroded by one voxel and lesions (dilated by one voxel) are removed, so neither
    partial-volume edges nor hot liver lesions inflate the CV: it then measures image noise
    (plus whatever true heterogeneity the liver has).
    """
    total = float(suv.sum(dtype=np.float64)) * voxel_ml
    liver = organs == 1
    if lesion is not None and lesion.any():
        liver &= ~ndimage.binary_dilation(lesion > 0, structure=np.ones((3, 3, 3)))
    core = ndimage.binary_erosion(liver)
    if core.sum() >= LIVER_MIN_VOXELS:
        liver = core
    if liver.sum() >= 2:
        values = suv[liver].astype(np.float64)
        mean = values.mean()
        cv = float(100.0 * values.std(ddof=1) / mean) if mean > 0 else float("nan")
    else:
        cv = float("nan")
    return {"total_suv_ml": total, "liver_cv_pct": cv}


def _fmt_total(value: float) -> str:
    if abs(value) >= 1e4:
        exponent = int(np.floor(np.log10(abs(value))))
        return f"{value / 10 ** exponent:.2f}e{exponent}"
    return f"{value:.3g}"


def _panel_title(label: str, stats: dict[str, float]) -> str:
    cv = stats["liver_cv_pct"]
    cv_text = f"liver CV {cv:.1f} %" if np.isfinite(cv) else "liver CV n/a"
    return f"{label}\n{cv_text}\nΣ {_fmt_total(stats['total_suv_ml'])} SUV·mL"


def qc_figure(hc_path: str | os.PathLike, lc_paths: dict[str, str | os.PathLike],
              lesion_path: str | os.PathLike, organs_path: str | os.PathLike,
              out_png: str | os.PathLike, title: str, suv_max: float | None = None,
              dpi: int = 110) -> QCFigureInfo:
    """Write the per-subject QC PNG and return what it shows.

    ``lc_paths`` maps level names (p005, p0125, optionally with _rN) to low-count SUV images.
    ``suv_max`` fixes the top of the SUV window; by default it is the 99.9th percentile of the
    HC voxels (robust to the bladder and the hottest lesion), shared by all PET panels.
    """
    hc = read_volume(hc_path, "suv")
    lesion = read_volume(lesion_path, "labels")
    organs = read_volume(organs_path, "labels")
    for other in (lesion, organs):
        check_same_grid(hc, other)
    _check_binary(lesion)
    _check_organs(organs)
    levels = sorted((str(k) for k in lc_paths), key=_level_sort_key)
    lcs = {}
    for name in levels:
        lcs[name] = read_volume(lc_paths[name], "suv")
        check_same_grid(hc, lcs[name])

    organs_c, zooms = canonical(organs)
    lesion_c, _ = canonical(lesion)
    voxel_ml = hc.voxel_volume_ml
    images = {"hc": hc, **lcs}
    labels = {"hc": "HC (100 %)", **{n: f"{n} ({level_percent(n):g} %)" for n in levels}}
    mips, stats = {}, {}
    for name, vol in images.items():
        data_c, _ = canonical(vol)
        mips[name] = coronal(data_c)
        stats[name] = {"percent": 100.0 if name == "hc" else level_percent(name),
                       **image_stats(data_c, organs_c, voxel_ml, lesion_c)}

    vmax = float(suv_max) if suv_max is not None else float(np.percentile(hc.data, SUV_PERCENTILE))
    if not np.isfinite(vmax) or vmax <= 0:
        raise InputError(hc.path, "high-count image has no positive uptake to set the SUV window")
    nx, _, nz = organs_c.shape
    width_mm, height_mm = nx * zooms[0], nz * zooms[2]
    extent = (0.0, width_mm, 0.0, height_mm)

    n_pet = len(images)
    # At least ~1 screen pixel per voxel (up to a cap), so a one-voxel lesion cannot vanish
    # when the projection is resampled to the panel.
    panel_h = float(np.clip(max(4.6, 1.15 * nz / dpi, 1.15 * nx / dpi * height_mm / width_mm),
                            4.6, MAX_PANEL_HEIGHT_IN))
    panel_w = panel_h * width_mm / height_mm
    # PET panels, colorbar, then the mask panel with its legend on the right.
    fig = plt.figure(figsize=((n_pet + 1) * (panel_w + 0.15) + 2.6, panel_h + 1.5),
                     dpi=dpi, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.04, wspace=0.04)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    axes = np.atleast_1d(fig.subplots(1, n_pet + 1))
    pet_axes, ax_lab = axes[:n_pet], axes[n_pet]
    im = None
    for ax, name in zip(pet_axes, images):
        im = ax.imshow(mips[name], cmap="gray_r", vmin=0.0, vmax=vmax, extent=extent,
                       interpolation="nearest", aspect="equal")
        ax.set_title(_panel_title(labels[name], stats[name]), fontsize=9)
        style_axis(ax)
    # Orientation markers on the first panel only (radiological: patient right on the left).
    for x, text, ha in ((0.03, "R", "left"), (0.97, "L", "right")):
        pet_axes[0].text(x, 0.01, text, transform=pet_axes[0].transAxes, fontsize=9,
                         color="tab:blue", ha=ha, va="bottom")
    cbar = fig.colorbar(im, ax=list(pet_axes), shrink=0.8, extend="max", pad=0.01, aspect=30)
    cbar.set_label("SUV (g/mL)")

    # Context: the HC MIP, faint, under the organ and lesion projections.
    ax_lab.imshow(mips["hc"], cmap="gray_r", vmin=0.0, vmax=vmax, extent=extent, alpha=0.35,
                  interpolation="nearest", aspect="equal")
    # Paint organs largest projected area first so small organs (aorta, kidney) stay visible.
    organ_proj = {k: coronal(organs_c == k, np.any) for k in ORGANS}
    for k in sorted(ORGANS, key=lambda k: -int(organ_proj[k].sum())):
        if organ_proj[k].any():
            rgba = np.zeros(organ_proj[k].shape + (4,))
            rgba[organ_proj[k]] = to_rgba(ORGAN_COLOURS[k], alpha=0.75)
            ax_lab.imshow(rgba, extent=extent, interpolation="nearest", aspect="equal")
    lesion_proj = coronal(lesion_c > 0, np.any)
    ax_lab.imshow(np.ma.masked_where(~lesion_proj, lesion_proj.astype(float)),
                  cmap=ListedColormap([LESION_RGBA]), vmin=0, vmax=1, extent=extent,
                  interpolation="nearest", aspect="equal")
    n_lesions = ndimage.label(lesion_c > 0, structure=np.ones((3, 3, 3)))[1]
    plural = "s" if n_lesions != 1 else ""
    ax_lab.set_title(f"Masks (coronal projection)\n{n_lesions} lesion{plural}, "
                     f"{lesion_c.sum() * voxel_ml:.3g} mL", fontsize=9)
    style_axis(ax_lab)
    handles = [Patch(facecolor=LESION_RGBA, label="lesion")]
    handles += [Patch(facecolor=ORGAN_COLOURS[k], label=v) for k, v in ORGANS.items()]
    ax_lab.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8,
                  frameon=False)

    fig.canvas.draw()
    width_px, height_px = (int(round(v)) for v in fig.canvas.get_width_height())
    info = QCFigureInfo(path=str(out_png), suv_window=(0.0, vmax), stats=stats,
                        shape_px=(height_px, width_px))
    for name, ax in [*zip(images, pet_axes), ("labels", ax_lab)]:
        box = ax.get_window_extent()
        info.panels[name] = (float(box.x0), float(height_px - box.y1),
                             float(box.x1), float(height_px - box.y0))
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return info
