"""Batched ray-driven (Joseph-style) line-integral projector for a cylindrical scanner.

The lines of response (LORs) of :class:`amdiff.physics.scanner.CylindricalScanner`, by index,
projected by :class:`amdiff.physics.lines.LineProjector` between their crystals' face centres:
clipped to the image's box, sampled at equal steps of at most ``step_fraction`` times the
smallest voxel, trilinear interpolation, so a value is a line integral in (image units x mm),
and the back-projection is its exact adjoint (see that module). LORs are processed in chunks so
memory is bounded by ``points_per_chunk`` samples, whatever the number of LORs (the planar
path below holds its sparse matrix instead: ~0.7 GB at paper size).

Fast path (``planar``, the default when ``max_ring_difference == 0``): every LOR then lies in
a plane of constant z, where trilinear interpolation is linear interpolation in z between two
slices of bilinear in-plane values. The in-plane line integrals of all crystal pairs are one
sparse matrix shared by every slice (amdiff.physics.planar.PlanarMatrix, built once per
projector), so a projection is a sparse-dense product with the image as (nx*ny, nz), and each
LOR blends the two slices its ring sits between. This is the same operator as the 3D path
(tested), about 100x faster at paper size.
"""

from __future__ import annotations

import numpy as np
import torch

from amdiff.physics.lines import LineProjector
from amdiff.physics.planar import PlanarMatrix
from amdiff.physics.scanner import CylindricalScanner


class RayProjector:
    """Line integrals through a 3D image along a scanner's LORs.

    ``forward(image, lors)`` returns one value per LOR (image units x mm);
    ``back(values, lors)`` returns the adjoint image. ``lors`` is an index array into the
    scanner's LOR enumeration; ``None`` means all LORs.
    """

    def __init__(self, scanner: CylindricalScanner, shape, voxel_size_mm, *,
                 device: str | torch.device = "cpu", step_fraction: float = 0.5,
                 points_per_chunk: int | None = None, planar: bool | None = None):
        self.lines = LineProjector(shape, voxel_size_mm, device=device, step_fraction=step_fraction,
                                   points_per_chunk=points_per_chunk)
        self.scanner = scanner
        self.shape = self.lines.shape
        self.voxel_size_mm = self.lines.voxel_size_mm
        self.device = self.lines.device
        self._detectors = torch.as_tensor(scanner.detector_positions(), dtype=torch.float64,
                                          device=self.device)
        # all LORs in direct planes: project each crystal pair once through all slices
        self.planar = planar if planar is not None else scanner.max_ring_difference == 0
        if self.planar and scanner.max_ring_difference != 0:
            raise ValueError("planar projection needs max_ring_difference == 0")
        self._planar_matrix: PlanarMatrix | None = None

    @property
    def n_lors(self) -> int:
        return self.scanner.n_lors

    # ---- geometry ----------------------------------------------------------------------
    def _chunks(self, items: np.ndarray, points_per_item: int):
        for sl in self.lines.chunks(len(items), points_per_item):
            yield sl, items[sl]

    def _rays(self, lors: np.ndarray):
        """grid_sample grid (1, n, K, 1, 3) and weights (n, K) for a chunk of LORs."""
        a, b = self.scanner.lor_detectors(lors)
        return self.lines.rays(self._detectors[torch.as_tensor(a, device=self.device)],
                               self._detectors[torch.as_tensor(b, device=self.device)])

    def _slice_taps(self, lors: np.ndarray):
        """Direct-plane LORs: the two z slices (index, weight) each LOR blends.

        Along a LOR of constant z, trilinear interpolation is linear interpolation in z of the
        bilinear in-plane values, so each LOR is (1-w) S[k0] + w S[k0+1] of the per-slice line
        integrals S of its crystal pair (a slice index outside the grid carries weight 0).
        """
        bin_a, _ = self.scanner.lor_detectors(lors)
        _, ring = self.scanner.split_bin(bin_a)
        z = self.scanner.ring_z_mm()[ring]
        nz, vz = self.shape[2], self.voxel_size_mm[2]
        in_box = np.abs(z) <= nz * vz / 2.0
        kf = z / vz + (nz - 1) / 2.0 if nz > 1 else np.zeros_like(z)
        k0 = np.floor(kf).astype(np.int64)
        w1 = kf - k0
        taps = []
        for k, w in ((k0, 1.0 - w1), (k0 + 1, w1)):
            ok = in_box & (k >= 0) & (k < nz)
            taps.append((torch.as_tensor(np.where(ok, k, 0), device=self.device),
                         torch.as_tensor(np.where(ok, w, 0.0), dtype=torch.float32,
                                         device=self.device)))
        return taps

    def _lors(self, lors) -> np.ndarray:
        return np.arange(self.n_lors) if lors is None else np.asarray(lors, dtype=np.int64)

    # ---- operators ---------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, image, lors=None) -> torch.Tensor:
        """Line integrals (image units x mm) of ``image`` along ``lors``."""
        img = self.lines._as_image(image)
        every_lor = lors is None
        lors = self._lors(lors)
        if self.planar:
            return self._forward_planar(img, lors, every_lor)
        img = img.reshape(1, 1, *self.shape)
        out = torch.zeros(len(lors), dtype=torch.float32, device=self.device)
        for sl, chunk in self._chunks(lors, self.lines.max_samples):
            grid, weight = self._rays(chunk)
            samples = torch.nn.functional.grid_sample(img, grid, mode="bilinear",
                                                      padding_mode="zeros", align_corners=True)
            out[sl] = (samples[0, 0, :, :, 0] * weight).sum(dim=1)
        return out

    @torch.no_grad()
    def back(self, values, lors=None) -> torch.Tensor:
        """Adjoint of :meth:`forward`: smear ``values`` (one per LOR) back into the image."""
        every_lor = lors is None
        lors = self._lors(lors)
        values = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        if values.shape != (len(lors),):
            raise ValueError(f"expected {len(lors)} LOR values, got shape {tuple(values.shape)}")
        if self.planar:
            return self._back_planar(values, lors, every_lor)
        out = torch.zeros((1, 1, *self.shape), dtype=torch.float32, device=self.device)
        for sl, chunk in self._chunks(lors, self.lines.max_samples):
            grid, weight = self._rays(chunk)
            self.lines.accumulate(out, grid, values[sl, None] * weight)
        return out[0, 0]

    # direct planes only: the in-plane matrix of each crystal pair, all slices at once
    @property
    def planar_matrix(self) -> PlanarMatrix:
        """The in-plane system matrix of every crystal pair (built on first use)."""
        if self._planar_matrix is None:
            n_rp = self.scanner.n_ring_pairs
            a, b = self.scanner.lor_detectors(np.arange(self.scanner.n_inplane_pairs) * n_rp)
            pos = self.scanner.detector_positions()[:, :2]
            self._planar_matrix = PlanarMatrix(self.lines, pos[a], pos[b])
        return self._planar_matrix

    def _pairs(self, lors: np.ndarray, every_lor: bool):
        """Sorted distinct crystal pairs of ``lors`` and each LOR's index into them."""
        pair = lors // self.scanner.n_ring_pairs
        if every_lor:                           # all LORs: every pair, no sort needed
            return np.arange(self.scanner.n_inplane_pairs), pair
        return np.unique(pair, return_inverse=True)

    def _forward_planar(self, img: torch.Tensor, lors: np.ndarray, every_lor: bool) -> torch.Tensor:
        pairs, inverse = self._pairs(lors, every_lor)
        matrix = self.planar_matrix.rows(pairs)
        nx, ny, nz = self.shape
        per_slice = matrix @ img.reshape(nx * ny, nz)                # (pairs, nz)
        inverse = torch.as_tensor(inverse, device=self.device)
        return sum(w * per_slice[inverse, k] for k, w in self._slice_taps(lors))

    def _back_planar(self, values: torch.Tensor, lors: np.ndarray, every_lor: bool) -> torch.Tensor:
        pairs, inverse = self._pairs(lors, every_lor)
        transposed = self.planar_matrix.rows(pairs, transposed=True)
        inverse = torch.as_tensor(inverse, device=self.device)
        nx, ny, nz = self.shape
        per_slice = torch.zeros((len(pairs), nz), device=self.device)
        for k, w in self._slice_taps(lors):      # transpose of the z interpolation
            per_slice.index_put_((inverse, k), w * values, accumulate=True)
        return (transposed @ per_slice).reshape(nx, ny, nz)
