"""The Gaussian-filter row of Table 2: a denoiser without training, whose one parameter, the
FWHM, is chosen on the training site's validation images.

Beside the low-count input itself (FWHM 0), it is the baseline every trained denoiser must beat
(our addition; the paper has no such rows). The FWHM is the candidate of a grid
(config ``evaluation.gaussian_filter.fwhm_mm_grid``) with the lowest mean whole-image NRMSE of
the filtered validation low-count images against their high-count image, under the reading the
evaluation uses (`metrics.whole_image_nrmse`, config ``evaluation.nrmse_whole``), so the
criterion is the Table 2 number itself, measured on validation instead of test images. One
FWHM per training site serves every count level (our choice), as one trained network does; a
level far above the validation levels' mean noise may therefore be over-smoothed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from amdiff.errors import InputError
from amdiff.io.files import check_input_file
from amdiff.evaluate.columns import ALL_SITES
from amdiff.evaluate.metrics import NRMSE_WHOLE_DEFAULT, body_mask, whole_image_nrmse
from amdiff.evaluate.subject import axial_axis
from amdiff.io.manifest import lc_pet_images, read_manifest
from amdiff.io.nifti import check_same_grid, read_volume

MODEL = "gaussian_filter"
DEFAULT_FWHM_GRID_MM = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))   # FWHM = 2 sqrt(2 ln 2) sigma


def sigma_voxels(fwhm_mm: float, voxel_size_mm) -> list[float]:
    """The Gaussian's sigma in voxels along each axis: FWHM / (2 sqrt(2 ln 2)) / voxel edge."""
    return [float(fwhm_mm) / FWHM_PER_SIGMA / float(v) for v in voxel_size_mm]


def gaussian_filter(image: np.ndarray, fwhm_mm: float, voxel_size_mm) -> np.ndarray:
    """``image`` smoothed by an isotropic 3D Gaussian of ``fwhm_mm`` (float32); 0 returns the
    image itself.

    Not `recon.system.gaussian_blur` (the scanner's post-filter), which imports torch and pads
    with zeros: here the border is mirrored (scipy's default, our choice), so slices at the end
    of the axial field of view, where the body goes on, are not pulled towards zero.
    """
    image = np.asarray(image, dtype=np.float32)
    if not (math.isfinite(fwhm_mm) and fwhm_mm >= 0):
        raise ValueError(f"FWHM must be a finite number, not negative, got {fwhm_mm} mm")
    if fwhm_mm == 0:
        return image
    return ndimage.gaussian_filter(image, sigma=sigma_voxels(fwhm_mm, voxel_size_mm))


def validation_images(manifest: str | Path, site: str, reading: str = NRMSE_WHOLE_DEFAULT):
    """Yield (subject, image name, low-count Volume, high-count Volume, body mask or None) for
    every low-count image of the site's validation subjects, one subject in memory at a time."""
    manifest = Path(manifest)
    df = read_manifest(manifest, data_roots=[str(manifest.absolute().parent)])
    rows = [r for r in df.to_dict("records") if r["split"] == "val" and r["site"] == site]
    if not rows:
        raise InputError(manifest, f"no validation subjects of site {site!r} to choose the FWHM on")
    for row in rows:
        hc = read_volume(row["hc_pet"], "suv")
        body = None
        if reading != "image_range":   # the body readings need the CT (a manifest's required column)
            ct = read_volume(row["ct"], "ct")
            check_same_grid(hc, ct)
            body = body_mask(ct.data, axial_axis(ct.affine))
        images = lc_pet_images(row["lc_pet"])
        if not images:
            raise InputError(manifest, f"subject {row['subject']!r}: no lc_pet images")
        for name, path in sorted(images.items()):
            lc = read_volume(path, "suv")
            check_same_grid(hc, lc)
            yield row["subject"], name if "_r" in name else f"{name}_r0", lc, hc, body


def nrmse_curve(images, fwhm_grid_mm, reading: str = NRMSE_WHOLE_DEFAULT) -> dict:
    """Whole-image NRMSE of every image at every FWHM: {"fwhm_mm": sorted grid,
    "per_image": {subject/image: [NRMSE per FWHM]}, "subjects": number of subjects}."""
    grid = sorted({float(v) for v in fwhm_grid_mm})
    if not grid or grid[0] < 0:
        raise ValueError(f"the FWHM grid needs at least one value, none negative: {list(fwhm_grid_mm)}")
    per_image, subjects = {}, set()
    for subject, name, lc, hc, body in images:
        subjects.add(subject)
        per_image[f"{subject}/{name}"] = [
            whole_image_nrmse(gaussian_filter(lc.data, fwhm, lc.voxel_size_mm), hc.data, body, reading)
            for fwhm in grid]
    return {"fwhm_mm": grid, "per_image": per_image, "subjects": len(subjects)}


def choose_fwhm(fwhm_mm, mean_nrmse) -> float:
    """The FWHM of the lowest mean NRMSE (NaN never wins); on a tie the smaller FWHM, the
    lighter smoothing."""
    values = np.asarray(mean_nrmse, dtype=float)
    if not np.isfinite(values).any():
        raise ValueError("no finite NRMSE on the validation images: cannot choose a FWHM")
    order = np.argsort(np.asarray(fwhm_mm, dtype=float), kind="stable")
    best = order[np.nanargmin(values[order])]
    return float(np.asarray(fwhm_mm, dtype=float)[best])


def fit(manifest: str | Path, site: str, fwhm_grid_mm=DEFAULT_FWHM_GRID_MM,
        reading: str = NRMSE_WHOLE_DEFAULT) -> dict:
    """The fit record written next to the trained models: the chosen FWHM, the criterion, the
    mean NRMSE against FWHM (the curve) and each validation image's values."""
    curve = nrmse_curve(validation_images(manifest, site, reading), fwhm_grid_mm, reading)
    values = np.array(list(curve["per_image"].values()), dtype=float)   # images x FWHMs
    means = np.nanmean(values, axis=0)   # an undefined (NaN) image value is left out, as in the tables
    chosen = choose_fwhm(curve["fwhm_mm"], means)
    return {
        "model": MODEL, "site": site, "fwhm_mm": chosen,
        "criterion": f"lowest mean whole-image NRMSE ({reading}) over the validation images",
        "nrmse_whole": reading, "n_subjects": curve["subjects"], "n_images": len(values),
        # the largest candidate winning means the grid may stop short of the optimum
        "at_grid_edge": bool(chosen == max(curve["fwhm_mm"]) and len(curve["fwhm_mm"]) > 1),
        "curve": [{"fwhm_mm": f, "nrmse_whole": float(m)} for f, m in zip(curve["fwhm_mm"], means)],
        "per_image": curve["per_image"],
    }


def read_fit(path: str | Path) -> float:
    """The chosen FWHM (mm) of a fit record written by `fit`."""
    path = Path(path)
    check_input_file(path, "Gaussian-filter fit")
    try:
        fwhm = float(json.loads(path.read_text())["fwhm_mm"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InputError(path, "not a Gaussian-filter fit (JSON with a numeric fwhm_mm)") from None
    if not math.isfinite(fwhm) or fwhm < 0:
        raise InputError(path, f"fwhm_mm must be a non-negative number, got {fwhm}")
    return fwhm


def row_labels(fwhm_by_site: dict[str, float], all_group: str = ALL_SITES) -> dict[str, dict[str, str]]:
    """Table 2's label of the Gaussian row per group, with the FWHM its images were filtered
    with: {"gaussian_filter": {site: "Gaussian filter (FWHM 6 mm)", ...}}. The pooled group
    names one FWHM where every site has the same, else says it is each site's."""
    labels = {site: f"Gaussian filter (FWHM {fwhm:g} mm)" for site, fwhm in fwhm_by_site.items()}
    if fwhm_by_site:
        same = len(set(fwhm_by_site.values())) == 1
        labels[all_group] = next(iter(labels.values())) if same else "Gaussian filter (each site's FWHM)"
    return {MODEL: labels}
