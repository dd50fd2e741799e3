"""Partial-volume rasterisation of signed-distance shapes onto a voxel grid.

Occupancy is the fraction of a voxel inside a shape, estimated on an n x n x n sub-grid, but only
for voxels the conservative distance bound cannot classify (|d| < half the voxel diagonal); all
other voxels are exactly 0 or 1. Work is confined to the shape's bounding box and done in slabs,
so a 440 x 440 x 300 grid stays within memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amdiff.io.nifti import centered_affine
from amdiff.phantom.shapes import Shape

_SLAB_VOXELS = 2_000_000     # centre evaluations per slab
_SUB_POINTS = 2_000_000      # supersample evaluations per batch


@dataclass(frozen=True)
class Grid:
    """Image grid centred on the world origin (see ``centered_affine``); axes x, y, z in mm."""

    shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        return centered_affine(self.shape, self.voxel_size_mm)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.voxel_size_mm)) / 1000.0

    @property
    def half_extent_mm(self) -> np.ndarray:
        return np.asarray(self.shape, float) * np.asarray(self.voxel_size_mm) / 2.0

    def centres(self, axis: int) -> np.ndarray:
        n, vs = self.shape[axis], self.voxel_size_mm[axis]
        return (np.arange(n) - (n - 1) / 2.0) * vs

    def index_of(self, point_mm) -> tuple[int, int, int]:
        """Index of the voxel containing a world point (clipped to the grid)."""
        p = np.asarray(point_mm, float)
        idx = np.floor(p / np.asarray(self.voxel_size_mm) + np.asarray(self.shape) / 2.0)
        return tuple(int(np.clip(i, 0, n - 1)) for i, n in zip(idx, self.shape))

    def box_slices(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Voxel slices overlapping the world box [lo, hi]; None when it misses the grid."""
        out = []
        for ax in range(3):
            n, vs = self.shape[ax], self.voxel_size_mm[ax]
            lo_w = max(float(lo[ax]), -n * vs / 2.0)
            hi_w = min(float(hi[ax]), n * vs / 2.0 - 1e-9)
            if lo_w > hi_w:
                return None
            i0 = max(0, int(np.floor(lo_w / vs + n / 2.0)))
            i1 = min(n - 1, int(np.floor(hi_w / vs + n / 2.0)))
            if i0 > i1:
                return None
            out.append(slice(i0, i1 + 1))
        return tuple(out)


def subsample_offsets(voxel_size_mm, n: int) -> np.ndarray:
    """(n^3, 3) offsets of a regular sub-grid inside one voxel, relative to its centre."""
    f = (np.arange(n) + 0.5) / n - 0.5
    ox, oy, oz = np.meshgrid(*(f * v for v in voxel_size_mm), indexing="ij")
    return np.stack([ox.ravel(), oy.ravel(), oz.ravel()], axis=1)


def occupancy(shape: Shape, grid: Grid, n_sub: int = 3):
    """Fractional occupancy of ``shape`` in its bounding box.

    Returns ``(slices, occ)`` with ``occ`` float32 of the box shape, or None when the shape misses
    the grid or occupies nothing.
    """
    sl = grid.box_slices(shape.lo, shape.hi)
    if sl is None:
        return None
    xs, ys, zs = (grid.centres(ax)[s] for ax, s in enumerate(sl))
    occ = np.zeros((xs.size, ys.size, zs.size), dtype=np.float32)
    r = 0.5 * float(np.linalg.norm(grid.voxel_size_mm))
    offs = subsample_offsets(grid.voxel_size_mm, n_sub)
    step = max(1, _SLAB_VOXELS // max(1, ys.size * zs.size))
    for i0 in range(0, xs.size, step):
        xc = xs[i0:i0 + step, None, None]
        d = shape.sdf(xc, ys[None, :, None], zs[None, None, :])
        d = np.broadcast_to(d, (xc.shape[0], ys.size, zs.size))
        slab = occ[i0:i0 + step]
        slab[d <= -r] = 1.0
        ii, jj, kk = np.nonzero(np.abs(d) < r)
        if ii.size:
            slab[ii, jj, kk] = _supersample(shape, xc[ii, 0, 0], ys[jj], zs[kk], offs)
    if not occ.any():
        return None
    return sl, occ


def _supersample(shape: Shape, xc, yc, zc, offs) -> np.ndarray:
    out = np.empty(xc.size, dtype=np.float32)
    per = max(1, _SUB_POINTS // offs.shape[0])
    for s in range(0, xc.size, per):
        e = s + per
        d = shape.sdf(xc[s:e, None] + offs[None, :, 0],
                      yc[s:e, None] + offs[None, :, 1],
                      zc[s:e, None] + offs[None, :, 2])
        out[s:e] = (d < 0).mean(axis=1)
    return out
