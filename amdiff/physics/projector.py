"""Batched ray-driven (Joseph-style) line-integral projector for a cylindrical scanner.

The lines of response (LORs) of :class:`amdiff.physics.scanner.CylindricalScanner`, by index,
projected by :class:`amdiff.physics.lines.LineProjector` between their crystals' face centres:
clipped to the image's box, sampled at equal steps of at most ``step_fraction`` times the
smallest voxel, trilinear interpolation, so a value is a line integral in (image units x mm),
and the back-projection is its exact adjoint (see that module). LORs are processed in chunks so
memory is bounded by ``points_per_chunk`` samples, whatever the number of LORs.

Fast path (``planar``, the default when ``max_ring_difference == 0``): every LOR then lies in
a plane of constant z, where trilinear interpolation is linear interpolation in z between two
slices of bilinear in-plane values. Each crystal pair is therefore traced once in 2D through
all slices at once (slices as channels of a 2D ``grid_sample``) and each LOR blends the two
slices its ring sits between. This is the same operator as the 3D path (tested), ~10x faster.
"""

from __future__ import annotations

import numpy as np
import torch

from amdiff.physics.lines import LineProjector
from amdiff.physics.scanner import CylindricalScanner

# grid_sample enums as used by aten: bilinear (trilinear in 3D), zero padding
_BILINEAR, _ZEROS = 0, 0


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

    def _planar_rays(self, pairs: np.ndarray):
        """2D grid (1, n, K, 2) and weights (n, K) of in-plane crystal pairs (z = 0)."""
        n_rp = self.scanner.n_ring_pairs
        a, b = self.scanner.lor_detectors(pairs * n_rp)
        p0 = self._detectors[torch.as_tensor(a, device=self.device)].clone()
        p1 = self._detectors[torch.as_tensor(b, device=self.device)].clone()
        p0[:, 2] = 0.0
        p1[:, 2] = 0.0
        pts, weight = self.lines.samples(p0, p1 - p0)
        # grid_sample on a (1, nz, nx, ny) tensor: last grid dim is (W=y, H=x)
        grid = (pts[..., :2] * self.lines.to_grid[:2]).flip(-1)[None].contiguous()
        return grid, weight

    def _slice_taps(self, lors: np.ndarray):
        """Direct-plane LORs: in-plane pair, and the two z slices (index, weight) they blend.

        Along a LOR of constant z, trilinear interpolation is linear interpolation in z of the
        bilinear in-plane values, so each LOR is (1-w) S[k0] + w S[k0+1] of the per-slice line
        integrals S of its crystal pair (a slice index outside the grid carries weight 0).
        """
        pair = lors // self.scanner.n_ring_pairs
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
        return pair, taps

    def _lors(self, lors) -> np.ndarray:
        return np.arange(self.n_lors) if lors is None else np.asarray(lors, dtype=np.int64)

    # ---- operators ---------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, image, lors=None) -> torch.Tensor:
        """Line integrals (image units x mm) of ``image`` along ``lors``."""
        img = self.lines._as_image(image)
        lors = self._lors(lors)
        if self.planar:
            return self._forward_planar(img, lors)
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
        lors = self._lors(lors)
        values = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        if values.shape != (len(lors),):
            raise ValueError(f"expected {len(lors)} LOR values, got shape {tuple(values.shape)}")
        if self.planar:
            return self._back_planar(values, lors)
        out = torch.zeros((1, 1, *self.shape), dtype=torch.float32, device=self.device)
        for sl, chunk in self._chunks(lors, self.lines.max_samples):
            grid, weight = self._rays(chunk)
            self.lines.accumulate(out, grid, values[sl, None] * weight)
        return out[0, 0]

    # direct planes only: one 2D ray per crystal pair, all slices as channels
    def _forward_planar(self, img: torch.Tensor, lors: np.ndarray) -> torch.Tensor:
        pair, taps = self._slice_taps(lors)
        pairs, inverse = np.unique(pair, return_inverse=True)
        slices = img.permute(2, 0, 1)[None].contiguous()            # (1, nz, nx, ny)
        per_slice = torch.empty((self.shape[2], len(pairs)), device=self.device)
        for sl, chunk in self._chunks(pairs, self.lines.max_samples * self.shape[2]):
            grid, weight = self._planar_rays(chunk)
            samples = torch.nn.functional.grid_sample(slices, grid, mode="bilinear",
                                                      padding_mode="zeros", align_corners=True)
            per_slice[:, sl] = (samples[0] * weight).sum(dim=2)
        inverse = torch.as_tensor(inverse, device=self.device)
        return sum(w * per_slice[k, inverse] for k, w in taps)

    def _back_planar(self, values: torch.Tensor, lors: np.ndarray) -> torch.Tensor:
        pair, taps = self._slice_taps(lors)
        pairs, inverse = np.unique(pair, return_inverse=True)
        inverse = torch.as_tensor(inverse, device=self.device)
        per_slice = torch.zeros((self.shape[2], len(pairs)), device=self.device)
        for k, w in taps:                       # transpose of the z interpolation
            per_slice.index_put_((k, inverse), w * values, accumulate=True)
        out = torch.zeros((1, self.shape[2], self.shape[0], self.shape[1]), device=self.device)
        for sl, chunk in self._chunks(pairs, self.lines.max_samples * self.shape[2]):
            grid, weight = self._planar_rays(chunk)
            grad_out = (per_slice[:, sl, None] * weight[None])[None].contiguous()
            grad_in, _ = torch.ops.aten.grid_sampler_2d_backward(
                grad_out, out, grid, _BILINEAR, _ZEROS, True, [True, False])
            out += grad_in
        return out[0].permute(1, 2, 0).contiguous()
