"""Whole-body 18F-FDG PET/CT phantom subjects: SUV, CT, mu-map, organ labels and lesions.

Every structure is painted back to front with partial-volume occupancy (value = occ * new +
(1 - occ) * old), so SUV and HU are volume-weighted mixtures at tissue borders and a lesion of
0.05 mL adds its true activity even on 8 mm voxels. Organ labels take the last structure covering
at least half a voxel. Four independent random streams (body, tissue values, lesions, texture)
are spawned from the seed, so changing the lesion count leaves the anatomy unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from amdiff.errors import InputError
from amdiff.phantom.anatomy import ORGAN_NAMES, AnatomyBuilder, sample_body
from amdiff.phantom.insert import insert_lesion
from amdiff.phantom.lesions import REGION_WEIGHTS, Lesion, LesionPlacer
from amdiff.phantom.raster import Grid, occupancy
from amdiff.phantom.shapes import Shape
from amdiff.phantom.tissue import CARNEY_2006, hu_to_mu_511, sample_tissues

DEFAULT_PARAMS = {
    "lesions_per_subject": [2, 6],      # inclusive range
    "min_lesion_volume_ml": 0.05,
    "max_lesion_volume_ml": 200.0,
    "lesion_region_weights": None,      # None: REGION_WEIGHTS
    "sex": None,                        # None: drawn; "M" or "F"
    "arms": "auto",                     # auto: at the sides if they fit the grid, else raised
    "fov_bottom_frac": 0.48,            # grid bottom (fraction of height) when the body is longer
    "suv_texture_cv": 0.04,             # smooth multiplicative uptake heterogeneity
    "ct_noise_hu": 10.0,                # smooth CT texture inside the body
    "texture_fwhm_mm": 8.0,
    "kvp": 120,
}
_SOURCE = "phantom params"


@dataclass
class PhantomSubject:
    suv: np.ndarray            # float32, SUV (g/mL), true activity distribution
    ct: np.ndarray             # float32, HU
    mu: np.ndarray             # float32, 1/cm at 511 keV
    organs: np.ndarray         # uint8, 0..7 (DESIGN.md)
    lesions: np.ndarray        # uint8, binary lesion mask
    affine: np.ndarray         # 4x4 RAS+ mm, centred grid
    weight_kg: float
    height_cm: float
    sex: str
    lesion_table: list[dict]
    lesion_ids: np.ndarray = field(repr=False, default=None)   # uint16 instance map (0 = none)
    meta: dict = field(default_factory=dict)

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def _check_params(params: dict | None) -> dict:
    p = dict(DEFAULT_PARAMS)
    if params is None:
        return p
    if not isinstance(params, dict):
        raise InputError(_SOURCE, f"expected a mapping, got {type(params).__name__}")
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise InputError(_SOURCE, f"unknown key(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}")
    p.update({k: v for k, v in params.items()})
    lps = p["lesions_per_subject"]
    if (not isinstance(lps, (list, tuple)) or len(lps) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in lps)
            or lps[0] < 0 or lps[1] < lps[0]):
        raise InputError(_SOURCE, f"lesions_per_subject must be [min, max] integers with "
                                  f"0 <= min <= max, got {lps!r}")
    vmin, vmax = p["min_lesion_volume_ml"], p["max_lesion_volume_ml"]
    if not (isinstance(vmin, (int, float)) and isinstance(vmax, (int, float))
            and 0 < vmin <= vmax):
        raise InputError(_SOURCE, f"need 0 < min_lesion_volume_ml <= max_lesion_volume_ml, "
                                  f"got {vmin!r}, {vmax!r}")
    w = p["lesion_region_weights"]
    if w is not None:
        bad = sorted(set(w) - set(REGION_WEIGHTS))
        if bad or any(float(v) < 0 for v in w.values()) or sum(float(v) for v in w.values()) <= 0:
            raise InputError(_SOURCE, f"lesion_region_weights must map regions "
                                      f"{sorted(REGION_WEIGHTS)} to non-negative weights")
    if p["sex"] not in (None, "M", "F"):
        raise InputError(_SOURCE, f"sex must be null, 'M' or 'F', got {p['sex']!r}")
    if p["arms"] not in ("auto", "sides", "none"):
        raise InputError(_SOURCE, f"arms must be auto, sides or none, got {p['arms']!r}")
    if not 0.3 <= float(p["fov_bottom_frac"]) <= 0.9:
        raise InputError(_SOURCE, "fov_bottom_frac must lie in [0.3, 0.9]")
    for key in ("suv_texture_cv", "ct_noise_hu", "texture_fwhm_mm"):
        if float(p[key]) < 0:
            raise InputError(_SOURCE, f"{key} must be >= 0")
    if p["kvp"] not in CARNEY_2006:
        raise InputError(_SOURCE, f"kvp must be one of {sorted(CARNEY_2006)}")
    return p


def _check_grid(shape, voxel_size_mm) -> Grid:
    try:
        shp = tuple(int(s) for s in shape)
        vs = np.broadcast_to(np.asarray(voxel_size_mm, dtype=float), (3,))
    except (TypeError, ValueError):
        raise InputError("phantom grid", f"bad shape {shape!r} or voxel size {voxel_size_mm!r}")
    if len(shp) != 3 or min(shp) < 1 or any(int(s) != s for s in shape):
        raise InputError("phantom grid", f"shape must be three positive integers, got {shape!r}")
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise InputError("phantom grid", f"voxel size must be positive mm, got {voxel_size_mm!r}")
    return Grid(shp, tuple(float(v) for v in vs))


def _n_sub(feature_mm: float, grid: Grid, lo: int, hi: int, per_feature: float) -> int:
    vmax = max(grid.voxel_size_mm)
    if not math.isfinite(feature_mm) or feature_mm <= 0:
        return lo
    return int(np.clip(math.ceil(per_feature * vmax / feature_mm), lo, hi))


class _Canvas:
    """SUV, HU and label volumes painted with fractional occupancy."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.suv = np.zeros(grid.shape, np.float32)
        self.ct = np.full(grid.shape, -1000.0, np.float32)
        self.labels = np.zeros(grid.shape, np.uint8)
        self.body = np.zeros(grid.shape, np.float32)

    def paint(self, shape: Shape, suv: float, hu: float, label: int, n_sub: int) -> None:
        res = occupancy(shape, self.grid, n_sub)
        if res is None:
            return
        sl, occ = res
        s = self.suv[sl]
        s += occ * (np.float32(suv) - s)
        c = self.ct[sl]
        c += occ * (np.float32(hu) - c)
        if self.body is not None:
            b = self.body[sl]
            b += occ * (1.0 - b)
        self.labels[sl][occ >= 0.5] = label


def _smooth_noise(rng, shape, voxel_size_mm, fwhm_mm) -> np.ndarray:
    n = rng.standard_normal(shape, dtype=np.float32)
    sigma = [fwhm_mm / 2.3548 / v for v in voxel_size_mm]
    if max(sigma) > 0.1:
        gaussian_filter(n, sigma=sigma, mode="wrap", output=n)
    sd = float(n.std(dtype=np.float64))
    if sd > 0:
        n /= np.float32(sd)
    return n


def generate_subject(shape, voxel_size_mm, seed: int, params: dict | None = None) -> PhantomSubject:
    """Generate one phantom subject on a grid centred on the scanner axis (head at +z).

    Same (shape, voxel size, seed, params) -> identical arrays. ``params`` keys and defaults:
    ``DEFAULT_PARAMS``.
    """
    grid = _check_grid(shape, voxel_size_mm)
    p = _check_params(params)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(_SOURCE, f"seed must be a non-negative integer, got {seed!r}")
    rng_body, rng_tissue, rng_lesion, rng_tex = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4))

    body = sample_body(rng_body, p["sex"])
    tissues = sample_tissues(rng_tissue)
    anatomy = AnatomyBuilder(body, grid, arms=p["arms"],
                             fov_bottom_frac=float(p["fov_bottom_frac"])).build()

    cv = _Canvas(grid)
    for st in anatomy.structures:
        t = tissues[st.tissue]
        n_sub = _n_sub(st.shape.feature_mm, grid, 3, 5, 4.0)
        cv.paint(st.shape, t["suv"], t["hu"], st.label, n_sub)

    # Smooth texture: additive HU noise inside the body, multiplicative uptake heterogeneity.
    if p["ct_noise_hu"] > 0:
        tex = _smooth_noise(rng_tex, grid.shape, grid.voxel_size_mm, p["texture_fwhm_mm"])
        tex *= np.float32(p["ct_noise_hu"])
        tex *= cv.body
        cv.ct += tex
        del tex
    suv_tex = None
    if p["suv_texture_cv"] > 0:
        suv_tex = _smooth_noise(rng_tex, grid.shape, grid.voxel_size_mm, p["texture_fwhm_mm"])
        suv_tex *= np.float32(p["suv_texture_cv"])
        suv_tex += np.float32(1.0)
        np.clip(suv_tex, 0.5, 1.5, out=suv_tex)
        cv.suv *= suv_tex
    cv.body = None

    n_min, n_max = p["lesions_per_subject"]
    n_les = int(rng_lesion.integers(n_min, n_max + 1))
    placer = LesionPlacer(anatomy, tissues, grid, rng_lesion, float(p["min_lesion_volume_ml"]),
                          float(p["max_lesion_volume_ml"]), p["lesion_region_weights"])
    lesions = placer.place(n_les)

    mask = np.zeros(grid.shape, np.uint8)
    ids = np.zeros(grid.shape, np.uint16)
    table = []
    for k, les in enumerate(lesions, start=1):
        table.append(_paint_lesion(cv, anatomy.structures, tissues, suv_tex, les, k, mask, ids))
    del suv_tex

    ct = cv.ct
    # The anatomy is laid out with the liver at -x; RAS+ puts the patient's right at +x,
    # so mirror x once here (the grid is centred, so reversing axis 0 maps x to -x).
    suv, ct, labels, mask, ids = (np.ascontiguousarray(a[::-1]) for a in (cv.suv, ct, cv.labels, mask, ids))
    for row in table:
        row["center_mm"] = [-row["center_mm"][0], *row["center_mm"][1:]]
    subject = PhantomSubject(
        suv=suv, ct=ct, mu=hu_to_mu_511(ct, int(p["kvp"])), organs=labels, lesions=mask,
        affine=grid.affine, weight_kg=round(body.weight_kg, 2), height_cm=round(body.height_cm, 1),
        sex=body.sex, lesion_table=table, lesion_ids=ids,
        meta={
            "seed": int(seed), "shape": list(grid.shape), "voxel_size_mm": list(grid.voxel_size_mm),
            "bmi": round(body.bmi, 2), "bladder_ml": round(body.bladder_ml, 1),
            "lesions_requested": n_les, "lesions_placed": len(lesions),
            "tissues": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in tissues.items()},
            "params": {k: v for k, v in p.items()},
            "organ_names": dict(ORGAN_NAMES),
            **anatomy.meta,
        },
    )
    return subject


def _lesion_n_sub(les: Lesion, grid: Grid) -> int:
    # ~12 sub-samples across the lesion's smallest diameter keeps its volume within a few %.
    return _n_sub(2.0 * float(les.shape.axes.min()), grid, 3, 24, 12.0)


def _paint_lesion(cv: _Canvas, structures, tissues, suv_tex, les: Lesion, lesion_id: int,
                  mask, ids) -> dict:
    grid = cv.grid
    sl, occ, background = insert_lesion(cv.suv, cv.ct, suv_tex, structures, tissues, les, grid,
                                        _lesion_n_sub(les, grid))
    # Mask: voxels at least half inside, plus the voxel holding the centre (tiny lesions).
    m = occ >= 0.5
    ci = grid.index_of(les.shape.center)
    m[tuple(c - s.start for c, s in zip(ci, sl))] = True
    mask[sl][m] = 1
    ids[sl][m] = lesion_id
    vv = grid.voxel_volume_ml
    e = les.shape
    return {
        "lesion_id": lesion_id,
        "region": les.region,
        "host": les.host,
        "center_mm": [round(float(v), 2) for v in e.center],
        "axes_mm": [round(float(v), 2) for v in e.axes],
        "volume_ml": float(les.volume_ml),
        "occupancy_volume_ml": float(occ.sum()) * vv,
        "mask_voxels": int(m.sum()),
        "mask_volume_ml": int(m.sum()) * vv,
        "suv_mean_true": float(les.suv_mean),
        "suv_max_true": float(les.suv),
        "host_tissue_suv": float(les.background_suv),
        "background_suv": background,
        "contrast": float(les.suv / background) if background > 0 else float("inf"),
        "hu": float(les.hu),
        "necrotic_core": les.core is not None,
    }


def phantom_lesion_summary(subject: PhantomSubject) -> list[dict]:
    """One row per lesion, ready for a cohort TSV: site, volumes (mL), SUVs, TLG = SUVmean x MTV."""
    rows = []
    for r in subject.lesion_table:
        rows.append({
            "lesion_id": r["lesion_id"], "region": r["region"],
            "site": "lymph_node" if r["region"].startswith("node_") else r["region"],
            "volume_ml": round(r["volume_ml"], 4), "mask_volume_ml": round(r["mask_volume_ml"], 4),
            "suv_mean_true": round(r["suv_mean_true"], 3),
            "suv_max_true": round(r["suv_max_true"], 3),
            "tlg_true": round(r["suv_mean_true"] * r["volume_ml"], 3),
            "contrast": round(r["contrast"], 3),
        })
    return rows
