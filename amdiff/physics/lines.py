"""Line integrals through a 3D image between any pairs of points, with an optional TOF kernel.

The geometry-free core of every projector here: amdiff.physics.projector.RayProjector (a ring
scanner's LOR enumeration) and list-mode reconstruction of any PETSIRD scanner
(amdiff.listmode.geometry gives each event's two detection points).

Each line from ``start`` to ``end`` (mm, scanner frame) is clipped to the image's bounding box
and sampled at equal steps of at most ``step_fraction`` times the smallest voxel size
(midpoint rule); the image is interpolated trilinearly at every sample
(``torch.nn.functional.grid_sample``, ``align_corners=True``) and the samples are summed times
the step length, so a value is a line integral in (image units x mm). Voxel (i, j, k) has its
centre at ((i-(nx-1)/2) vx, (j-(ny-1)/2) vy, (k-(nz-1)/2) vz) (amdiff.io.nifti.centered_affine).
Beyond the outermost voxel centres the interpolation falls linearly to zero at half a voxel
outside the box (zero padding).

TOF: with ``tof=(edges_mm, fwhm_mm, bins)`` each sample is weighted by the probability that an
emission there is recorded in the event's TOF bin: Phi((e[k+1] - s) / sigma) - Phi((e[k] - s) / sigma),
s its signed distance from the line's midpoint towards ``end`` (PETSIRD's (t1 - t2) c / 2),
sigma = FWHM / (2 sqrt(2 ln 2)). Summed over all TOF bins of a binning that spans the line, the
TOF values give the non-TOF value.

The back-projection is the exact adjoint: the vector-Jacobian product of the same
``grid_sample`` call (aten ``grid_sampler_3d_backward``) with the same weights, so
<P x, y> = <x, P^T y> holds to float rounding, with and without TOF. Lines are processed in
chunks of ``points_per_chunk`` samples; the same code runs on CPU and CUDA, in float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

# grid_sample enums as used by aten: bilinear (trilinear in 3D), zero padding
_BILINEAR, _ZEROS = 0, 0
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


class LineProjector:
    """``forward(image, start, end, tof=None)``: one line integral per line;
    ``back(values, start, end, tof=None)``: the adjoint image."""

    def __init__(self, shape, voxel_size_mm, *, device: str | torch.device = "cpu",
                 step_fraction: float = 0.5, points_per_chunk: int | None = None):
        shape = tuple(int(n) for n in shape)
        vox = tuple(float(v) for v in voxel_size_mm)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image shape must be 3 positive ints, got {shape}")
        if len(vox) != 3 or min(vox) <= 0:
            raise ValueError(f"voxel size must be 3 positive numbers, got {vox}")
        self.shape = shape
        self.voxel_size_mm = vox
        self.device = torch.device(device)
        self.step_mm = step_fraction * min(vox)
        self.half_box = torch.tensor([n * v / 2.0 for n, v in zip(shape, vox)],
                                     dtype=torch.float64, device=self.device)
        # mm -> grid_sample's normalised coordinate (voxel centres at -1 .. 1); a 1-voxel
        # axis maps everything to its single voxel, so any finite scale works there.
        self.to_grid = torch.tensor([2.0 / ((n - 1) * v) if n > 1 else 1.0
                                     for n, v in zip(shape, vox)],
                                    dtype=torch.float32, device=self.device)
        diag = float(torch.linalg.norm(2 * self.half_box))
        self.max_samples = max(1, math.ceil(diag / self.step_mm))
        numel = shape[0] * shape[1] * shape[2]
        # chunks of 2-16 M samples: big images get big chunks, so that the zero-filled
        # gradient image each back-projection chunk allocates is amortised
        self.points_per_chunk = points_per_chunk or max(1 << 21, min(numel, 1 << 24))

    def chunks(self, n_items: int, points_per_item: int) -> Iterator[slice]:
        size = max(1, self.points_per_chunk // max(1, points_per_item))
        for first in range(0, n_items, size):
            yield slice(first, min(first + size, n_items))

    def samples(self, p0: torch.Tensor, d: torch.Tensor):
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

    def rays(self, p0: torch.Tensor, p1: torch.Tensor, tof=None):
        """grid_sample grid (1, n, K, 1, 3) and weights (n, K) of lines from p0 to p1 (float64)."""
        d = p1 - p0
        pts, weight = self.samples(p0, d)
        if tof is not None:
            weight = weight * tof_weights(pts, p0, d, *tof)
        return self._grid(pts), weight

    def _grid(self, pts: torch.Tensor) -> torch.Tensor:
        """grid_sample's grid (1, n, K, 1, 3) of sample points (n, K, 3) mm: on a
        (1, 1, nx, ny, nz) tensor its last dimension is (W=z, H=y, D=x)."""
        return (pts * self.to_grid).flip(-1)[None, :, :, None, :].contiguous()

    def _as_image(self, image) -> torch.Tensor:
        image = torch.as_tensor(image, dtype=torch.float32, device=self.device)
        if tuple(image.shape) != self.shape:
            raise ValueError(f"image shape {tuple(image.shape)} != projector shape {self.shape}")
        return image

    def _points(self, points) -> torch.Tensor:
        return torch.as_tensor(np.asarray(points, dtype=np.float64), device=self.device)

    @torch.no_grad()
    def forward(self, image, start, end, tof=None) -> torch.Tensor:
        """Line integrals (image units x mm) of ``image`` from ``start`` to ``end`` ((n, 3) mm);
        ``tof``: (edges_mm, fwhm_mm, bin per line) weights each line by its TOF kernel."""
        img = self._as_image(image).reshape(1, 1, *self.shape)
        start, end = self._points(start), self._points(end)
        out = torch.zeros(len(start), dtype=torch.float32, device=self.device)
        for sl in self.chunks(len(start), self.max_samples):
            grid, weight = self.rays(start[sl], end[sl], _tof_chunk(tof, sl, self.device))
            out[sl] = _integrals(img, grid, weight)
        return out

    @torch.no_grad()
    def back(self, values, start, end, tof=None) -> torch.Tensor:
        """Adjoint of :meth:`forward`: smear ``values`` (one per line) back into the image."""
        start, end = self._points(start), self._points(end)
        values = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        if values.shape != (len(start),):
            raise ValueError(f"expected {len(start)} line values, got shape {tuple(values.shape)}")
        out = torch.zeros((1, 1, *self.shape), dtype=torch.float32, device=self.device)
        for sl in self.chunks(len(start), self.max_samples):
            grid, weight = self.rays(start[sl], end[sl], _tof_chunk(tof, sl, self.device))
            self.accumulate(out, grid, values[sl, None] * weight)
        return out[0, 0]

    @torch.no_grad()
    def back_attenuated(self, values, start, end, mu_per_mm, tof=None) -> torch.Tensor:
        """``back(values * exp(-forward(mu_per_mm)), start, end, tof)``, the sensitivity image's
        operation, with each chunk's lines traced once for both projections: the transmission
        along every line is the non-TOF line integral of the attenuation map (1/mm)."""
        mu = self._as_image(mu_per_mm).reshape(1, 1, *self.shape)
        start, end = self._points(start), self._points(end)
        values = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        out = torch.zeros((1, 1, *self.shape), dtype=torch.float32, device=self.device)
        for sl in self.chunks(len(start), self.max_samples):
            p0, d = start[sl], end[sl] - start[sl]
            pts, weight = self.samples(p0, d)
            grid = self._grid(pts)
            transmission = torch.exp(-_integrals(mu, grid, weight))
            tof_sl = _tof_chunk(tof, sl, self.device)
            if tof_sl is not None:
                weight = weight * tof_weights(pts, p0, d, *tof_sl)
            self.accumulate(out, grid, (values[sl] * transmission)[:, None] * weight)
        return out[0, 0]

    @torch.no_grad()
    def back_of_ratio(self, image, weight, background, start, end, tof=None) -> torch.Tensor:
        """``back(weight / (weight * forward(image) + background), start, end, tof)``: the
        back-projection of a list-mode EM update (weights s eta a and the expected background
        per event), each chunk's lines traced once for both projections."""
        img = self._as_image(image).reshape(1, 1, *self.shape)
        start, end = self._points(start), self._points(end)
        weight = torch.as_tensor(weight, dtype=torch.float32, device=self.device)
        background = torch.as_tensor(background, dtype=torch.float32, device=self.device)
        out = torch.zeros((1, 1, *self.shape), dtype=torch.float32, device=self.device)
        for sl in self.chunks(len(start), self.max_samples):
            grid, samples_weight = self.rays(start[sl], end[sl], _tof_chunk(tof, sl, self.device))
            expected = weight[sl] * _integrals(img, grid, samples_weight) + background[sl]
            ratio = weight[sl] / expected.clamp(min=1e-20)
            self.accumulate(out, grid, ratio[:, None] * samples_weight)
        return out[0, 0]

    @staticmethod
    def accumulate(out: torch.Tensor, grid: torch.Tensor, sample_values: torch.Tensor) -> None:
        """out += the transpose of the trilinear interpolation at ``grid`` applied to the
        per-sample values (n, K): grid_sample's vector-Jacobian product w.r.t. its input."""
        grad_out = sample_values[None, None, :, :, None].contiguous()
        grad_in, _ = torch.ops.aten.grid_sampler_3d_backward(
            grad_out, out, grid, _BILINEAR, _ZEROS, True, [True, False])
        out += grad_in


def _integrals(image: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Line integrals (n,) of a (1, 1, nx, ny, nz) image: trilinear samples at ``grid`` times
    their step weights (n, K), summed."""
    samples = torch.nn.functional.grid_sample(image, grid, mode="bilinear",
                                              padding_mode="zeros", align_corners=True)
    return (samples[0, 0, :, :, 0] * weight).sum(dim=1)


def _tof_chunk(tof, sl: slice, device):
    if tof is None:
        return None
    edges, fwhm_mm, bins = tof
    return (torch.as_tensor(np.asarray(edges, dtype=np.float64), device=device), float(fwhm_mm),
            torch.as_tensor(np.asarray(bins[sl], dtype=np.int64), device=device))


def tof_weights(pts: torch.Tensor, p0: torch.Tensor, d: torch.Tensor, edges: torch.Tensor,
                fwhm_mm: float, bins: torch.Tensor) -> torch.Tensor:
    """(n, K) probabilities that an emission at sample ``pts`` of the line p0 -> p0 + d is
    recorded in TOF bin ``bins`` (edges in mm of s, the signed offset from the midpoint
    towards p0 + d; Gaussian timing error of FWHM ``fwhm_mm``)."""
    length = torch.linalg.norm(d, dim=1, keepdim=True)
    u = (d / length.clamp(min=1e-9)).to(torch.float32)
    mid = (p0 + 0.5 * d).to(torch.float32)
    s = ((pts - mid[:, None, :]) * u[:, None, :]).sum(dim=-1)
    sigma = fwhm_mm / FWHM_PER_SIGMA
    lo = edges[bins].to(torch.float32)[:, None]
    hi = edges[bins + 1].to(torch.float32)[:, None]
    scale = 1.0 / (sigma * math.sqrt(2.0))
    return 0.5 * (torch.erf((hi - s) * scale) - torch.erf((lo - s) * scale))
