"""Lesion insertion with exact partial-volume bookkeeping.

A lesion replaces the tissue it occupies in the continuous scene, not the voxel's mixture: each
sub-sample point inside the lesion looks up which tissue the painted anatomy has there (the last
structure containing it, in painting order), and the voxel gains (lesion - displaced tissue)
per sub-sample. The total activity added is therefore volume x (lesion SUV - host SUV) up to the
sub-sampling error, whatever the voxel size, and a lesion next to a hot organ does not erase part
of that organ's activity.
"""

from __future__ import annotations

import numpy as np

from amdiff.phantom.anatomy import Structure
from amdiff.phantom.lesions import Lesion
from amdiff.phantom.raster import Grid, subsample_offsets

_MAX_POINTS = 4_000_000


def lesion_subsamples(lesion: Lesion, grid: Grid, n: int):
    """Sub-sample points inside the lesion within its bounding box.

    Returns ``(slices, box_shape, voxel_index, points)``: ``voxel_index`` is the flat index of each
    point's voxel inside the box.
    """
    e = lesion.shape
    sl = grid.box_slices(e.lo, e.hi)
    if sl is None:
        return None
    xs, ys, zs = (grid.centres(ax)[s] for ax, s in enumerate(sl))
    box = (xs.size, ys.size, zs.size)
    offs = subsample_offsets(grid.voxel_size_mm, n)
    cx, cy, cz = np.meshgrid(xs, ys, zs, indexing="ij")
    centres = np.stack([cx.ravel(), cy.ravel(), cz.ravel()], axis=1)
    per = max(1, _MAX_POINTS // offs.shape[0])
    idx_parts, pt_parts = [], []
    for s in range(0, centres.shape[0], per):
        c = centres[s:s + per]
        p = (c[:, None, :] + offs[None, :, :]).reshape(-1, 3)
        inside = e.sdf(p[:, 0], p[:, 1], p[:, 2]) < 0
        vox = np.repeat(np.arange(s, s + c.shape[0]), offs.shape[0])
        idx_parts.append(vox[inside])
        pt_parts.append(p[inside])
    return sl, box, np.concatenate(idx_parts), np.concatenate(pt_parts)


def scene_tissue(structures: list[Structure], points: np.ndarray) -> list[str]:
    """Tissue key of the painted scene at each point (the last structure that contains it)."""
    out = np.full(points.shape[0], "air", dtype=object)
    todo = np.ones(points.shape[0], dtype=bool)
    lo, hi = points.min(axis=0), points.max(axis=0)
    for st in reversed(structures):
        if not todo.any():
            break
        sh = st.shape
        if np.any(sh.hi < lo) or np.any(sh.lo > hi):
            continue
        idx = np.nonzero(todo)[0]
        p = points[idx]
        hit = sh.sdf(p[:, 0], p[:, 1], p[:, 2]) < 0
        out[idx[hit]] = st.tissue
        todo[idx[hit]] = False
    return out


def insert_lesion(suv, ct, suv_texture, structures, tissues: dict, lesion: Lesion, grid: Grid,
                  n: int):
    """Add one lesion to ``suv``/``ct`` in place.

    Returns ``(slices, occupancy, displaced_suv_mean)`` where ``occupancy`` is the box-shaped
    fractional volume and ``displaced_suv_mean`` the mean SUV of the tissue the lesion replaced.
    """
    res = lesion_subsamples(lesion, grid, n)
    if res is None:
        return None
    sl, box, vox, pts = res
    nvox = int(np.prod(box))
    w = 1.0 / n ** 3
    keys = scene_tissue(structures, pts)
    bg_suv = np.array([tissues[k]["suv"] for k in keys], dtype=np.float64)
    bg_hu = np.array([tissues[k]["hu"] for k in keys], dtype=np.float64)
    les_suv = np.full(pts.shape[0], lesion.suv)
    les_hu = np.full(pts.shape[0], lesion.hu)
    if lesion.core is not None:
        c = lesion.core
        core = c.sdf(pts[:, 0], pts[:, 1], pts[:, 2]) < 0
        les_suv[core] = lesion.core_suv
        les_hu[core] = lesion.hu - 20.0

    def per_voxel(values):
        return (np.bincount(vox, weights=values, minlength=nvox) * w).reshape(box)

    occ = per_voxel(np.ones(pts.shape[0]))
    displaced = per_voxel(bg_suv)
    if suv_texture is not None:
        displaced = displaced * suv_texture[sl]
    s = suv[sl]
    s += (per_voxel(les_suv) - displaced).astype(np.float32)
    np.clip(s, 0.0, None, out=s)
    c = ct[sl]
    c += (per_voxel(les_hu) - per_voxel(bg_hu)).astype(np.float32)
    total = float(occ.sum())
    bg_mean = float(displaced.sum() / total) if total > 0 else 0.0
    return sl, occ.astype(np.float32), bg_mean
