"""Batched ray-driven (Joseph-style) line-integral projector for a cylindrical scanner.

Each line of response (LOR) of :class:`amdiff.physics.scanner.CylindricalScanner` is clipped to the
image's bounding box and sampled at equal steps of at most ``step_fraction`` times the smallest
voxel size (midpoint rule); the image is interpolated trilinearly at every sample
(``torch.nn.functional.grid_sample``, ``align_corners=True``) and the samples are summed times
the step length. The forward projection is therefore a line integral in (image units x mm).

Geometry: voxel (i, j, k) has its centre at ((i-(nx-1)/2) vx, (j-(ny-1)/2) vy, (k-(nz-1)/2) vz)
in the scanner frame (see ``amdiff.io.nifti.centered_affine``): x along i, y along j, z along k.
Beyond the outermost voxel centres the interpolation falls linearly to zero at half a voxel
outside the box (zero padding), so the model is continuous.

The back-projection is the exact adjoint: it is the vector-Jacobian product of the same
``grid_sample`` call (aten ``grid_sampler_3d_backward``), so <P x, y> = <x, P^T y> holds to float
rounding. LORs are processed in chunks so memory is bounded by ``points_per_chunk`` samples,
whatever the number of LORs. The same code runs on CPU and CUDA, in float32.

Fast path (``planar``, the default when ``max_ring_difference == 0``): every LOR then lies in
a plane of constant z, where trilinear interpolation is linear interpolation in z between two
slices of bilinear in-plane values. Each crystal pair is therefore traced once in 2D through
all slices at once (slices as channels of a 2D ``grid_sample``) and each LOR blends the two
slices its ring sits between. This is the same operator as the 3D path (tested), ~10x faster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

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
        shape = tuple(int(n) for n in shape)
        vox = tuple(float(v) for v in voxel_size_mm)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image shape must be 3 positive ints, got {shape}")
        if len(vox) != 3 or min(vox) <= 0:
            raise ValueError(f"voxel size must be 3 positive numbers, got {vox}")
        self.scanner = scanner
        self.shape = shape
        self.voxel_size_mm = vox
        self.device = torch.device(device)
        self.step_mm = step_fraction * min(vox)
        self.half_box = torch.tensor([n * v / 2.0 for n, v in zip(shape, vox)],
                                     dtype=torch.float64, device=self.device)
        # mm -> grid_sample's normalised coordinate (voxel centres at -1 .. 1); a 1-voxel
        # axis maps everything to its single voxel, so any finite scale works there.
        self._to_grid = torch.tensor([2.0 / ((n - 1) * v) if n > 1 else 1.0
                                      for n, v in zip(shape, vox)],
                                     dtype=torch.float32, device=self.device)
        self._detectors = torch.as_tensor(scanner.detector_positions(), dtype=torch.float64,
                                          device=self.device)
        diag = float(torch.linalg.norm(2 * self.half_box))
        self.max_samples = max(1, math.ceil(diag / self.step_mm))
        numel = shape[0] * shape[1] * shape[2]
        # chunks of 2-16 M samples: big images get big chunks, so that the zero-filled
        # gradient image each back-projection chunk allocates is amortised
        self.points_per_chunk = points_per_chunk or max(1 << 21, min(numel, 1 << 24))
        # all LORs in direct planes: project each crystal pair once through all slices
        self.planar = planar if planar is not None else scanner.max_ring_difference == 0
        if self.planar and scanner.max_ring_difference != 0:
            raise ValueError("planar projection needs max_ring_difference == 0")

    @property
    def n_lors(self) -> int:
        return self.scanner.n_lors

    # ---- geometry ----------------------------------------------------------------------
    def _chunks(self, items: np.ndarray, points_per_item: int,
                ) -> Iterator[tuple[slice, np.ndarray]]:
        size = max(1, self.points_per_chunk // max(1, points_per_item))
        for start in range(0, len(items), size):
            yield slice(start, min(start + size, len(items))), items[start:start + size]

    def _samples(self, p0: torch.Tensor, d: torch.Tensor):
        """Sample points (n, K, 3) in mm along p0 + t d inside the box, and weights (n, K) in mm."""
        # slab method: parametric entry/exit of the box [-h, h] per axis (float64 for safety)
        h = self.half_box
        nonzero = d.abs() > 1e-9
        safe_d = torch.where(nonzero, d, torch.ones_like(d))
        t1 = (-h - p0) / safe_d
        t2 = (h - p0) / safe_d
        inside = p0.abs() <= h
        big = torch.full_like(t1, math.inf)
        t_lo = torch.where(nonzero, torch.minimum(t1, t2), torch.where(inside, -big, big))
        t_hi = torch.where(nonzero, torch.maximum(t1, t2), torch.where(inside, big, -big))
        # clamp to the segment [0, 1]; a ray that misses the box gets t_out = t_in (no NaN)
        t_in = t_lo.amax(dim=1).clamp(0.0, 1.0)
        t_out = torch.maximum(t_hi.amin(dim=1).clamp(0.0, 1.0), t_in)
        length = (t_out - t_in) * torch.linalg.norm(d, dim=1)   # mm inside the box
        n_samp = torch.ceil(length / self.step_mm).to(torch.int64)
        k_max = max(1, int(n_samp.max())) if len(n_samp) else 1
        n_safe = n_samp.clamp(min=1).to(torch.float32)
        # midpoints of n equal steps between entry and exit; per-sample arrays in float32
        # (positions to ~1e-4 mm), only the per-LOR entry/exit above in float64
        start = (p0 + t_in[:, None] * d).to(torch.float32)
        step = ((t_out - t_in)[:, None] * d).to(torch.float32) / n_safe[:, None]
        k = torch.arange(k_max, device=self.device)
        pos = (k.to(torch.float32)[None, :] + 0.5).minimum(n_safe[:, None])
        pts = start[:, None, :] + pos[..., None] * step[:, None, :]
        weight = torch.where(k[None, :] < n_samp[:, None],
                             (length.to(torch.float32) / n_safe)[:, None],
                             torch.zeros((), device=self.device))
        return pts, weight

    def _rays(self, lors: np.ndarray):
        """grid_sample grid (1, n, K, 1, 3) and weights (n, K) for a chunk of LORs."""
        a, b = self.scanner.lor_detectors(lors)
        p0 = self._detectors[torch.as_tensor(a, device=self.device)]
        d = self._detectors[torch.as_tensor(b, device=self.device)] - p0
        pts, weight = self._samples(p0, d)
        # grid_sample on a (1, 1, nx, ny, nz) tensor: last grid dim is (W=z, H=y, D=x)
        grid = (pts * self._to_grid).flip(-1)[None, :, :, None, :].contiguous()
        return grid, weight

    def _planar_rays(self, pairs: np.ndarray):
        """2D grid (1, n, K, 2) and weights (n, K) of in-plane crystal pairs (z = 0)."""
        n_rp = self.scanner.n_ring_pairs
        a, b = self.scanner.lor_detectors(pairs * n_rp)
        p0 = self._detectors[torch.as_tensor(a, device=self.device)].clone()
        p1 = self._detectors[torch.as_tensor(b, device=self.device)].clone()
        p0[:, 2] = 0.0
        p1[:, 2] = 0.0
        pts, weight = self._samples(p0, p1 - p0)
        # grid_sample on a (1, nz, nx, ny) tensor: last grid dim is (W=y, H=x)
        grid = (pts[..., :2] * self._to_grid[:2]).flip(-1)[None].contiguous()
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
    def _as_image(self, image) -> torch.Tensor:
        image = torch.as_tensor(image, dtype=torch.float32, device=self.device)
        if tuple(image.shape) != self.shape:
            raise ValueError(f"image shape {tuple(image.shape)} != projector shape {self.shape}")
        return image

    @torch.no_grad()
    def forward(self, image, lors=None) -> torch.Tensor:
        """Line integrals (image units x mm) of ``image`` along ``lors``."""
        img = self._as_image(image)
        lors = self._lors(lors)
        if self.planar:
            return self._forward_planar(img, lors)
        img = img.reshape(1, 1, *self.shape)
        out = torch.zeros(len(lors), dtype=torch.float32, device=self.device)
        for sl, chunk in self._chunks(lors, self.max_samples):
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
        for sl, chunk in self._chunks(lors, self.max_samples):
            grid, weight = self._rays(chunk)
            grad_out = (values[sl, None] * weight)[None, None, :, :, None].contiguous()
            # vjp of grid_sample w.r.t. its input: the exact transpose of the interpolation
            grad_in, _ = torch.ops.aten.grid_sampler_3d_backward(
                grad_out, out, grid, _BILINEAR, _ZEROS, True, [True, False])
            out += grad_in
        return out[0, 0]

    # direct planes only: one 2D ray per crystal pair, all slices as channels
    def _forward_planar(self, img: torch.Tensor, lors: np.ndarray) -> torch.Tensor:
        pair, taps = self._slice_taps(lors)
        pairs, inverse = np.unique(pair, return_inverse=True)
        slices = img.permute(2, 0, 1)[None].contiguous()            # (1, nz, nx, ny)
        per_slice = torch.empty((self.shape[2], len(pairs)), device=self.device)
        for sl, chunk in self._chunks(pairs, self.max_samples * self.shape[2]):
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
        for sl, chunk in self._chunks(pairs, self.max_samples * self.shape[2]):
            grid, weight = self._planar_rays(chunk)
            grad_out = (per_slice[:, sl, None] * weight[None])[None].contiguous()
            grad_in, _ = torch.ops.aten.grid_sampler_2d_backward(
                grad_out, out, grid, _BILINEAR, _ZEROS, True, [True, False])
            out += grad_in
        return out[0].permute(1, 2, 0).contiguous()
