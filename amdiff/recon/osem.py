"""OSEM reconstruction of histogrammed list-mode data, written as an SUV NIfTI.

The system model is the one the simulator uses (``amdiff.physics.system``), without the PSF:

    ybar = s * a * (P x) + b,    s = T * calibration_factor * count_fraction

- a = exp(-(P mu) / 10) from the mu-map (1/cm) on the image grid;
- T is the list's duration (first block start to last block stop), ``calibration_factor`` the
  header's eta (counts per (Bq/mL * mm) per s, the simulator's count_scale folded in);
- ``count_fraction`` (percent / 100) is the share of events a non-overlapping down-sampled list
  kept. Its header and time blocks are those of the full list, so the duration is unchanged;
  keeping a random fraction f of the events is statistically a scan with f times the
  sensitivity, hence s is scaled by f. Without it a p005 image would be 20x too low.
- b is flat (randoms + scatter). By default it is estimated as the simulator defines it,
  b_i = background_fraction * (measured prompts) / n_lors; an explicit per-LOR or scalar
  ``background`` (for the list being reconstructed) overrides it.

Subsets are interleaved angular subsets: in-plane crystal pairs are grouped by view
(ca + cb) mod n_crystals (view angle = pi * view / n_crystals) and view v goes to subset
v mod n_subsets, with all ring pairs of a crystal pair. Each subset has its own sensitivity
image P_s^T (s a_s). The result (Bq/mL) is post-filtered with a Gaussian of
``postfilter_fwhm_mm`` and converted to SUV.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from amdiff.joblog import progress as progress_of

from amdiff.errors import InputError
from amdiff.io.nifti import AFFINE_ATOL_MM, read_volume, write_volume
from amdiff.physics.projector import RayProjector
from amdiff.physics.suv import concentration_to_suv
from amdiff.io.nifti import voxel_size_from_affine
from amdiff.physics.system import attenuation_factors, gaussian_blur
from amdiff.physics.scanner import CylindricalScanner

log = logging.getLogger(__name__)


# Our choice: subset sensitivity images are kept when all of them fit in 2 GiB (the demo's 21:
# 52 MB); at paper size (21 x 310 MB) each is recomputed when its subset is updated instead.
SENSITIVITY_CACHE_BYTES = 2 << 30


def angular_subsets(scanner: CylindricalScanner, n_subsets: int) -> list[np.ndarray]:
    """LOR indices of each interleaved angular subset (sorted)."""
    if not 1 <= n_subsets <= scanner.n_crystals:
        raise ValueError(f"subsets must lie in 1..{scanner.n_crystals}, got {n_subsets}")
    n_rp = scanner.n_ring_pairs
    pairs = np.arange(scanner.n_inplane_pairs)
    bin_a, bin_b = scanner.lor_detectors(pairs * n_rp)
    ca, _ = scanner.split_bin(bin_a)
    cb, _ = scanner.split_bin(bin_b)
    view = (ca + cb) % scanner.n_crystals
    subsets = []
    for s in range(n_subsets):
        p = pairs[view % n_subsets == s]
        subsets.append((p[:, None] * n_rp + np.arange(n_rp)[None, :]).ravel())
    return subsets


@torch.no_grad()
def fov_mask(projector: RayProjector) -> torch.Tensor:
    """Voxels whose centre lies within the scanner's transaxial FOV radius."""
    nx, ny, nz = projector.shape
    vx, vy, _ = projector.voxel_size_mm
    x = (torch.arange(nx, device=projector.device) - (nx - 1) / 2) * vx
    y = (torch.arange(ny, device=projector.device) - (ny - 1) / 2) * vy
    inside = (x[:, None] ** 2 + y[None, :] ** 2) <= projector.scanner.fov_radius_mm ** 2
    return inside[:, :, None].expand(nx, ny, nz)


def run_osem(projector: RayProjector, counts, scale: float, attenuation, background,
             iterations: int, subsets: int, progress: bool = True) -> torch.Tensor:
    """OSEM estimate of the activity x (Bq/mL) from prompts ``counts`` (one per LOR).

    ``scale`` = T * eta (* count_fraction); ``attenuation`` a_i; ``background`` b_i
    (scalar or per LOR), all in the model ybar = scale * a * P x + b. The subset
    sensitivity images are kept in memory when they fit in ``SENSITIVITY_CACHE_BYTES``, else
    each is recomputed at its subset's update (the same numbers, one more back-projection).
    """
    dev = projector.device
    y = torch.as_tensor(counts, dtype=torch.float32, device=dev)
    a = torch.as_tensor(attenuation, dtype=torch.float32, device=dev)
    b = torch.as_tensor(background, dtype=torch.float32, device=dev).expand(projector.n_lors)
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    lor_sets = [torch.as_tensor(s, device=dev) for s in angular_subsets(projector.scanner, subsets)]
    lor_sets_np = [s.cpu().numpy() for s in lor_sets]

    def sensitivity(s, lors):
        return projector.back(scale * a[s], lors)

    keep = subsets * int(np.prod(projector.shape)) * 4 <= SENSITIVITY_CACHE_BYTES
    kept, total = [], torch.zeros(projector.shape, device=dev)
    for s, lors in zip(lor_sets, lor_sets_np):
        sen = sensitivity(s, lors)
        total += sen
        if keep:
            kept.append(sen)
    # Reconstruct inside the scanner's transaxial field of view only, as scanners do: voxels
    # beyond it are seen by few, grazing LORs and would hold only noise spikes.
    support = (total > 1e-6 * float(total.max())) & fov_mask(projector)
    # start from a uniform image with the right total count, which saves an iteration
    net = max(float(y.double().sum() - b.double().sum()), 1e-12)
    x = support.to(torch.float32) * (net / float(total[support].double().sum()))
    bar = progress_of(total=iterations * subsets, desc="OSEM", unit="subset", enabled=progress, leave=False)
    for _ in range(iterations):
        for i, (s, lors) in enumerate(zip(lor_sets, lor_sets_np)):
            sen = kept[i] if keep else sensitivity(s, lors)
            # voxels a subset hardly sees keep their value for that subset (no division by ~0)
            ok = sen > 1e-6 * float(sen.max())
            ybar = scale * a[s] * projector.forward(x, lors) + b[s]
            ratio = torch.where(ybar > 0, y[s] / ybar.clamp(min=1e-20), torch.zeros_like(ybar))
            update = projector.back(scale * a[s] * ratio, lors)
            x = torch.where(ok, x * update / sen.clamp(min=1e-20), x)
            bar.update(1)
    bar.close()
    return x


def _load_mu(mu_path_or_array, affine):
    if isinstance(mu_path_or_array, (str, os.PathLike)):
        vol = read_volume(mu_path_or_array, kind="mumap")
        if affine is not None and not np.allclose(vol.affine, affine, atol=AFFINE_ATOL_MM):
            raise InputError(mu_path_or_array, "mu-map affine differs from the given image affine")
        return vol.data, vol.affine, str(mu_path_or_array)
    if affine is None:
        raise ValueError("an affine is required when the mu-map is given as an array")
    mu = np.asarray(mu_path_or_array, dtype=np.float32)
    if mu.ndim != 3:
        raise ValueError(f"mu-map must be 3D, got shape {mu.shape}")
    return mu, np.asarray(affine, dtype=np.float64), "<mu array>"


def reconstruct_listmode(listmode_path, mu_path_or_array, affine, recon_cfg: dict, out_path,
                         device: str = "cpu", *, count_fraction: float = 1.0,
                         background_fraction: float | None = None, background=None,
                         scanner: CylindricalScanner | None = None,
                         scanner_source: str = "the configured scanner",
                         progress: bool = True) -> Path:
    """Histogram a PETSIRD list, run OSEM, post-filter, convert to SUV, write NIfTI atomically.

    ``recon_cfg``: iterations, subsets, postfilter_fwhm_mm (and optionally
    background_fraction). ``count_fraction``: share of the full list's events this list holds
    (1.0 for the full list, 0.05 for p005). ``scanner``: the expected scanner (the site's
    config, named by ``scanner_source`` in errors); a list whose header describes another
    geometry is refused before any event is read. Without it the header's scanner is used.
    The image grid is the mu-map's; its affine is written unchanged.
    """
    from amdiff.recon.histogram import histogram_listmode_info
    from amdiff.listmode.header import acquisition_from_header, check_scanner, scanner_from_header
    from amdiff.listmode.petsird_io import read_header

    listmode_path = Path(listmode_path)
    if not 0.0 < float(count_fraction) <= 1.0:
        raise ValueError(f"count_fraction must lie in (0, 1], got {count_fraction}")
    for key in ("iterations", "subsets", "postfilter_fwhm_mm"):
        if key not in recon_cfg:
            raise InputError("recon config", f"missing key '{key}'")
    if background is None:
        if background_fraction is None:
            background_fraction = recon_cfg.get("background_fraction")
        if background_fraction is None:
            raise InputError("recon config", "background_fraction is needed to model the "
                             "flat randoms+scatter background (or pass background=)")
    mu, affine, mu_name = _load_mu(mu_path_or_array, affine)
    if not np.all(np.isfinite(mu)) or mu.min() < 0:
        raise InputError(mu_name, "mu-map must be finite and non-negative (1/cm)")

    header = read_header(listmode_path)
    if scanner is None:
        scanner = scanner_from_header(header, source=listmode_path)
    else:
        check_scanner(header, scanner, listmode_path, scanner_source)
    acq = acquisition_from_header(header, source=listmode_path)
    hist = histogram_listmode_info(listmode_path, scanner)
    if hist.n_events == 0 or hist.duration_s <= 0:
        raise InputError(listmode_path, "list-mode file holds no events or no time blocks")
    if not acq["calibration_factor"] > 0:
        raise InputError(listmode_path, "header calibration factor must be positive")

    vox = voxel_size_from_affine(affine)
    projector = RayProjector(scanner, mu.shape, vox, device=device)
    atten = attenuation_factors(projector, mu)
    scale = hist.duration_s * float(acq["calibration_factor"]) * float(count_fraction)
    if background is None:
        background = float(background_fraction) * hist.n_counted / scanner.n_lors
    log.info("%s: %d events (%d without LOR), %.1f s, scale %.4g, background %.4g/LOR",
             listmode_path.name, hist.n_events, hist.n_without_lor, hist.duration_s, scale,
             float(np.mean(background)))
    x = run_osem(projector, hist.counts, scale, atten, background, int(recon_cfg["iterations"]),
             int(recon_cfg["subsets"]), progress=progress)
    if not bool((x > 0).any()):
        raise InputError(listmode_path, f"OSEM image is all zero: {hist.n_counted} events are "
                         f"too few for {recon_cfg['subsets']} subsets on a {mu.shape} grid "
                         "(raise the count scale or use fewer subsets)")
    image = gaussian_blur(x.cpu().numpy(), float(recon_cfg["postfilter_fwhm_mm"]), vox)
    suv = concentration_to_suv(np.clip(image, 0, None), acq["weight_kg"], acq["injected_mbq"])
    return write_volume(out_path, suv, affine)
