"""The count model shared by the list-mode simulator and OSEM.

Expected prompts on LOR i:

    ybar_i = s * a_i * (P x)_i + b_i,      s = T * eta * count_scale (* count_fraction)

- x: activity concentration (Bq/mL); P: the geometric projector (line integrals, mm);
- a_i = exp(-(P mu)_i / 10): attenuation factor, mu in 1/cm and path length in mm;
- T: scan duration (s); eta: scanner calibration in counts per (Bq/mL * mm) per second;
- count_scale: the demo's fraction of clinical counts; count_fraction: the share of the list
  kept by non-overlapping down-sampling (a 5 % list is a scan with 5 % of the sensitivity);
- b_i: a flat background standing for randoms + scatter, the same on every LOR, whose total is
  ``background_fraction`` of all prompts: sum(b) = f / (1 - f) * sum(trues).

Calibration (once per scanner geometry and voxel size): a uniform cylinder of 20 cm diameter
filling the scanner's axial FOV, without attenuation, of total activity A (kBq) must give
S * A counts per second, S being the NEMA-style system sensitivity (cps/kBq) of the config:
eta = S * A_kBq / sum_i (P x_cyl)_i. This folds the geometric efficiency of the scanner into
one number so that total counts scale with the sensitivity quoted for the scanner. The
cylinder is voxelised (voxel centres inside the 100 mm radius) on a centred grid with the
image's voxel size, just wide enough to hold it and n_rings * ring_pitch long; A_kBq is the
activity of those voxels, so the relation holds exactly for the projector in use.

The detector PSF (Gaussian, ``psf_fwhm_mm``) is applied to the activity in simulation only;
the reconstruction does not model it, as in standard (non-PSF) OSEM.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from amdiff.physics.projector import RayProjector
from amdiff.physics.scanner import CylindricalScanner

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
CALIBRATION_RADIUS_MM = 100.0   # 20 cm diameter cylinder

_ETA_CACHE: dict[tuple, float] = {}


def gaussian_blur(image: np.ndarray, fwhm_mm: float, voxel_size_mm) -> np.ndarray:
    """Isotropic Gaussian of ``fwhm_mm`` (sigma converted to voxels per axis); 0 = no blur."""
    image = np.asarray(image, dtype=np.float32)
    if fwhm_mm <= 0:
        return image
    sigma = [fwhm_mm / FWHM_PER_SIGMA / float(v) for v in voxel_size_mm]
    # zero outside the grid: activity does not reflect at the image border
    return ndimage.gaussian_filter(image, sigma=sigma, mode="constant", cval=0.0)


def attenuation_factors(projector: RayProjector, mu, lors=None) -> torch.Tensor:
    """a_i = exp(-(P mu)_i / 10): mu in 1/cm, path length in mm."""
    return torch.exp(-projector.forward(mu, lors) / 10.0)


def flat_background(trues_total: float, background_fraction: float, n_lors: int) -> float:
    """Per-LOR flat background so that background is ``background_fraction`` of all prompts."""
    f = float(background_fraction)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"background_fraction must lie in [0, 1), got {f}")
    return f / (1.0 - f) * float(trues_total) / n_lors


def calibration_cylinder(scanner: CylindricalScanner, voxel_size_mm):
    """Uniform 1 Bq/mL cylinder, 20 cm diameter, spanning the scanner's axial FOV.

    Returns (image, voxel_size) on a centred grid just large enough to hold it.
    """
    vx, vy, vz = (float(v) for v in voxel_size_mm)
    nx = 2 * math.ceil(CALIBRATION_RADIUS_MM / vx) + 2
    ny = 2 * math.ceil(CALIBRATION_RADIUS_MM / vy) + 2
    nz = max(1, round(scanner.axial_length_mm / vz))
    x = (np.arange(nx) - (nx - 1) / 2) * vx
    y = (np.arange(ny) - (ny - 1) / 2) * vy
    inside = (x[:, None] ** 2 + y[None, :] ** 2) <= CALIBRATION_RADIUS_MM ** 2
    image = np.repeat(inside[:, :, None], nz, axis=2).astype(np.float32)
    return image, (vx, vy, vz)


def eta_per_unit_sensitivity(scanner: CylindricalScanner, voxel_size_mm,
                             device="cpu") -> float:
    """eta for S = 1 cps/kBq: A_kBq / sum(P x_cyl), cached per (geometry, voxel size)."""
    key = (scanner, tuple(float(v) for v in voxel_size_mm))
    if key not in _ETA_CACHE:
        image, vox = calibration_cylinder(scanner, voxel_size_mm)
        projector = RayProjector(scanner, image.shape, vox, device=device)
        total_projection = float(projector.forward(image).double().sum())
        if total_projection <= 0:
            raise ValueError(f"scanner {scanner.name}: calibration cylinder is not seen by any LOR")
        voxel_ml = vox[0] * vox[1] * vox[2] / 1000.0
        activity_kbq = float(image.sum()) * voxel_ml / 1000.0     # 1 Bq/mL everywhere inside
        _ETA_CACHE[key] = activity_kbq / total_projection
    return _ETA_CACHE[key]


def scanner_eta(scanner: CylindricalScanner, sensitivity_cps_per_kbq: float, voxel_size_mm,
                device="cpu") -> float:
    """eta = S * A_kBq / sum(P x_cyl) for the NEMA-style sensitivity S (cps/kBq)."""
    if sensitivity_cps_per_kbq <= 0:
        raise ValueError("sensitivity_cps_per_kbq must be positive")
    unit = eta_per_unit_sensitivity(scanner, voxel_size_mm, device)
    return float(sensitivity_cps_per_kbq) * unit


def expected_prompts(projector: RayProjector, activity_bqml, mu, scale: float,
                     background_fraction: float, psf_fwhm_mm: float = 0.0):
    """Noise-free prompts of the count model: returns (trues, background_per_lor, attenuation).

    ``scale`` = T * eta * count_scale; the PSF blur is applied to ``activity_bqml`` first.
    """
    blurred = gaussian_blur(np.asarray(activity_bqml), psf_fwhm_mm, projector.voxel_size_mm)
    atten = attenuation_factors(projector, np.asarray(mu, dtype=np.float32))
    trues = float(scale) * atten * projector.forward(blurred)
    background = flat_background(float(trues.double().sum()), background_fraction,
                                 projector.n_lors)
    return trues, background, atten
