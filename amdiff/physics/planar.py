"""A ring scanner's in-plane line integrals as one sparse matrix, shared by all slices.

When every LOR lies in a plane of constant z (``max_ring_difference == 0``), trilinear
interpolation along it is linear interpolation in z between two slices of bilinear in-plane
values (see amdiff.physics.projector). The in-plane part is the same for every slice: a crystal
pair's line integral through slice k is row ``pair`` of a sparse matrix A (pairs x nx*ny)
times slice k. So the line integrals of all pairs through all slices are one sparse-dense
product ``A @ X`` with X the image as (nx*ny, nz), and the back-projection is ``A^T @ Y``.

A's entries are exactly the interpolation :class:`amdiff.physics.lines.LineProjector` applies:
its sample points (midpoint rule at ``step_fraction`` of the smallest voxel, clipped to the
box) and their bilinear taps as ``grid_sample(..., align_corners=True, padding_mode="zeros")``
takes them (taps outside the grid dropped), times the step length, summed per pixel. So it is
the same operator as the ray-traced path (tested against it), but each pixel-pair weight is
computed once per reconstruction instead of once per projection and slice, and the product
reads every image row (nz contiguous values) once per matrix entry. At paper size (624
crystals, 440 x 440 x 400) this is about 100x faster than sampling the image with
``grid_sample`` per projection (``benchmarks/recon_time.py``).

A is built on the CPU with scipy (sum of duplicate taps, CSR), once per projector (about 85 M
entries, 0.7 GB and 30 s at paper size), and used as torch CSR matrices (int32 indices) on the
projector's device: the rows of each set of crystal pairs asked for (an OSEM subset), and their
transpose for the back-projection, cached per set.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict

import numpy as np
import scipy.sparse as sp
import torch

from amdiff.physics.lines import LineProjector

# samples traced per chunk while building A: 4 taps of each give ~0.5 GB of temporaries
_SAMPLES_PER_CHUNK = 1 << 21
# pair sets x directions kept as device matrices (an OSEM run uses 2 per subset)
_CACHED_SETS = 64


class PlanarMatrix:
    """Sparse in-plane system matrix of crystal pairs ``starts`` -> ``ends`` ((n, 2) mm).

    ``rows(pairs)`` returns A_s, ``rows(pairs, transposed=True)`` A_s^T: torch CSR matrices
    on ``lines.device`` of the rows ``pairs`` (sorted, unique indices into the pair list), in
    mm (line-integral weight per pixel value); pixel index is ``i * ny + j`` of an (nx, ny)
    slice.
    """

    def __init__(self, lines: LineProjector, starts: np.ndarray, ends: np.ndarray):
        self.lines = lines
        self.starts = np.asarray(starts, dtype=np.float64)
        self.ends = np.asarray(ends, dtype=np.float64)
        if self.starts.shape != self.ends.shape or self.starts.shape[1:] != (2,):
            raise ValueError("starts and ends must both be (n, 2) arrays")
        self.n_pixels = lines.shape[0] * lines.shape[1]
        self._matrix: sp.csr_matrix | None = None
        self._device_rows: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def matrix(self) -> sp.csr_matrix:
        """The whole matrix A (all pairs), float32 CSR on the CPU, built on first use."""
        if self._matrix is None:
            self._matrix = self._build()
        return self._matrix

    def _build(self) -> sp.csr_matrix:
        lines = self.lines
        nx, ny = lines.shape[:2]
        vx, vy = lines.voxel_size_mm[:2]
        n = len(self.starts)
        per_chunk = max(1, _SAMPLES_PER_CHUNK // lines.max_samples)
        blocks = []
        for first in range(0, n, per_chunk):
            last = min(first + per_chunk, n)
            p0 = torch.zeros((last - first, 3), dtype=torch.float64)
            p1 = torch.zeros_like(p0)
            p0[:, :2] = torch.from_numpy(self.starts[first:last])
            p1[:, :2] = torch.from_numpy(self.ends[first:last])
            pts, weight = lines.samples(p0.to(lines.device), (p1 - p0).to(lines.device))
            pts, weight = pts.cpu().numpy(), weight.cpu().numpy()
            # continuous pixel indices as grid_sample computes them (a 1-pixel axis: index 0)
            fx = pts[..., 0] / vx + (nx - 1) / 2.0 if nx > 1 else np.zeros_like(weight)
            fy = pts[..., 1] / vy + (ny - 1) / 2.0 if ny > 1 else np.zeros_like(weight)
            x0, y0 = np.floor(fx), np.floor(fy)
            wx1, wy1 = (fx - x0).astype(np.float32), (fy - y0).astype(np.float32)
            x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
            row = np.broadcast_to(np.arange(last - first)[:, None], weight.shape)
            rows, cols, vals = [], [], []
            for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
                for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
                    ix, iy = x0 + dx, y0 + dy
                    v = weight * wx * wy
                    keep = (v != 0) & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
                    rows.append(row[keep])
                    cols.append(ix[keep] * ny + iy[keep])
                    vals.append(v[keep])
            # COO -> CSR sums the taps that several samples put on one pixel
            blocks.append(sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(last - first, self.n_pixels), dtype=np.float32))
        matrix = sp.vstack(blocks, format="csr") if blocks else \
            sp.csr_matrix((0, self.n_pixels), dtype=np.float32)
        matrix.sort_indices()
        return matrix

    def rows(self, pairs: np.ndarray, transposed: bool = False) -> torch.Tensor:
        """A_s (or A_s^T) of the sorted unique pair indices ``pairs`` as torch CSR on the device.

        Cached per pair set and direction, except A of all pairs, which on the CPU shares the
        whole matrix's buffers (no copy) and is cheap to wrap again.
        """
        pairs = np.ascontiguousarray(pairs, dtype=np.int64)
        full = self.matrix
        every_pair = len(pairs) == full.shape[0]
        if every_pair and not transposed:
            return self._to_torch(full)
        key = (transposed, len(pairs), hashlib.blake2b(pairs.tobytes(), digest_size=16).digest())
        if key in self._device_rows:
            self._device_rows.move_to_end(key)
            return self._device_rows[key]
        part = full if every_pair else full[pairs]
        entry = self._to_torch(part.T.tocsr() if transposed else part)
        self._device_rows[key] = entry
        if len(self._device_rows) > _CACHED_SETS:
            self._device_rows.popitem(last=False)
        return entry

    def _to_torch(self, m: sp.csr_matrix) -> torch.Tensor:
        """torch CSR of ``m``; on the CPU it shares ``m``'s buffers when their types allow."""
        index = np.int32 if m.nnz < 2 ** 31 - 1 else np.int64
        with warnings.catch_warnings():          # torch calls its CSR support "beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                torch.from_numpy(np.ascontiguousarray(m.indptr, dtype=index)),
                torch.from_numpy(np.ascontiguousarray(m.indices, dtype=index)),
                torch.from_numpy(np.ascontiguousarray(m.data, dtype=np.float32)),
                size=m.shape, check_invariants=False).to(self.lines.device)
