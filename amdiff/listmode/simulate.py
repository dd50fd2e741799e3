"""Simulate a PETSIRD list-mode acquisition from an SUV image and its mu-map.

Works for any activity image with a co-registered mu-map (the phantom, or e.g. an autoPET SUV
with its CT converted to mu at 511 keV): only SUV, mu (1/cm), the affine, body weight and
injected dose are needed. The image is placed with its centre at the scanner centre.

Steps:
1. activity concentration C (Bq/mL) = SUV * injected_Bq / weight_g (decay-corrected to
   injection: no decay is simulated);
2. expected prompts per LOR from the count model of ``amdiff.physics.system`` (PSF blur,
   attenuation, eta from the scanner sensitivity, flat randoms+scatter background);
3. Poisson counts per LOR from a seeded numpy Generator;
4. events in time: the counts are split over consecutive time slices by sequential binomial
   draws (a multinomial split, uniform in time) so that at most ~``events_per_slice`` events
   are in memory at once; inside a slice every event gets a uniform time, events are sorted by
   time and cut into PETSIRD time blocks of ``block_ms``. Every block of the scan is written,
   empty or not, so the blocks span exactly [0, duration].
Detection bins come from ``scanner.lor_detectors`` (bin_a > bin_b, the PETSIRD order).
The header's calibration factor is eta * count_scale (counts per (Bq/mL * mm) per s).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from amdiff.errors import InputError
from amdiff.physics.projector import RayProjector
from amdiff.physics.suv import suv_to_concentration
from amdiff.io.nifti import voxel_size_from_affine
from amdiff.physics.system import expected_prompts, scanner_eta
from amdiff.physics.scanner import CylindricalScanner

ACQUISITION_KEYS = ("dose_mbq", "duration_s", "sensitivity_cps_per_kbq", "count_scale",
                    "background_fraction", "psf_fwhm_mm")


def _check_inputs(suv, mu, acquisition: dict, weight_kg: float):
    missing = [k for k in ACQUISITION_KEYS if k not in acquisition]
    if missing:
        raise InputError("acquisition", f"missing key(s) {', '.join(missing)}")
    for key in ("dose_mbq", "duration_s", "sensitivity_cps_per_kbq", "count_scale"):
        if not float(acquisition[key]) > 0:
            raise InputError("acquisition", f"{key} must be positive, got {acquisition[key]}")
    if not (math.isfinite(weight_kg) and weight_kg > 0):
        raise InputError("subject", f"weight_kg must be a positive number, got {weight_kg}")
    suv = np.asarray(suv, dtype=np.float32)
    mu = np.asarray(mu, dtype=np.float32)
    if suv.ndim != 3 or suv.shape != mu.shape:
        raise InputError("simulation input", f"SUV {suv.shape} and mu-map {mu.shape} must be "
                         "3D images on the same grid")
    if not (np.all(np.isfinite(suv)) and np.all(np.isfinite(mu))):
        raise InputError("simulation input", "SUV or mu-map holds NaN or Inf")
    if mu.min() < 0:
        raise InputError("simulation input", f"mu-map has negative values ({mu.min():.3g} /cm)")
    # activity is non-negative; small negative SUVs (e.g. from a noisy image) are clipped
    return np.clip(suv, 0.0, None), mu


def expected_counts(suv, mu, affine, scanner: CylindricalScanner, acquisition: dict,
                    weight_kg: float, device: str = "cpu") -> dict:
    """Noise-free prompts per LOR: dict(trues, background, calibration_factor, eta)."""
    suv, mu = _check_inputs(suv, mu, acquisition, weight_kg)
    vox = voxel_size_from_affine(affine)
    activity = suv_to_concentration(suv, weight_kg, float(acquisition["dose_mbq"]))
    eta = scanner_eta(scanner, float(acquisition["sensitivity_cps_per_kbq"]), vox, device)
    calibration = eta * float(acquisition["count_scale"])
    projector = RayProjector(scanner, suv.shape, vox, device=device)
    trues, background, _ = expected_prompts(
        projector, activity, mu, float(acquisition["duration_s"]) * calibration,
        float(acquisition["background_fraction"]), float(acquisition["psf_fwhm_mm"]))
    return {"trues": trues.cpu().numpy().astype(np.float64), "background": background,
            "calibration_factor": calibration, "eta": eta}


def event_blocks(counts: np.ndarray, scanner: CylindricalScanner, duration_s: float,
                 rng: np.random.Generator, block_ms: int = 1000,
                 events_per_slice: int = 1 << 23) -> Iterator:
    """Yield time-ordered ``EventBlock``s holding ``counts[i]`` events of every LOR i."""
    from amdiff.listmode.petsird_io import EventBlock

    remaining = np.asarray(counts, dtype=np.int64).copy()
    total_ms = int(round(duration_s * 1000))
    n_blocks = math.ceil(total_ms / block_ms)
    n_slices = min(n_blocks, max(1, math.ceil(int(remaining.sum()) / events_per_slice)))
    blocks_per_slice = math.ceil(n_blocks / n_slices)
    for first in range(0, n_blocks, blocks_per_slice):
        last = min(first + blocks_per_slice, n_blocks)          # blocks [first, last)
        t0, t1 = first * block_ms, min(last * block_ms, total_ms)
        nz = np.flatnonzero(remaining)
        # each remaining event falls in this slice with prob. (slice length)/(time left)
        take = rng.binomial(remaining[nz], (t1 - t0) / (total_ms - t0))
        remaining[nz] -= take
        lors = np.repeat(nz, take)
        times = rng.uniform(t0, t1, size=len(lors))
        order = np.argsort(times, kind="stable")
        lors, times = lors[order], times[order]
        edges = np.searchsorted(times, np.arange(first, last + 1) * block_ms, side="left")
        edges[-1] = len(lors)
        for b in range(first, last):
            sel = lors[edges[b - first]:edges[b - first + 1]]
            bin_a, bin_b = scanner.lor_detectors(sel)
            bins = np.stack([bin_a, bin_b], axis=1).astype(np.uint32).reshape(-1, 2)
            yield EventBlock(b * block_ms, min((b + 1) * block_ms, total_ms), bins)


def simulate_listmode(path, suv, mu, affine, scanner: CylindricalScanner, acquisition: dict,
                      subject_id: str, weight_kg: float, height_m: float, seed: int, *,
                      device: str = "cpu", block_ms: int = 1000,
                      return_counts: bool = False) -> dict:
    """Write a simulated PETSIRD list of ``suv`` (g/mL) with attenuation ``mu`` (1/cm).

    ``acquisition``: dose_mbq (already sampled), duration_s, sensitivity_cps_per_kbq,
    count_scale, background_fraction, psf_fwhm_mm. Returns dict(events, duration_s,
    calibration_factor, expected_trues, expected_background[, counts]).
    """
    from amdiff.listmode.header import make_header
    from amdiff.listmode.petsird_io import write_listmode

    if not (math.isfinite(height_m) and height_m > 0):   # the header's patient size, in m
        raise InputError("subject", f"height_m must be a positive number, got {height_m}")
    model = expected_counts(suv, mu, affine, scanner, acquisition, weight_kg, device)
    ybar = model["trues"] + model["background"]
    rng = np.random.default_rng(seed)
    counts = rng.poisson(ybar)
    duration = float(acquisition["duration_s"])
    header = make_header(scanner, subject_id=subject_id, weight_kg=float(weight_kg),
                         height_m=float(height_m), injected_mbq=float(acquisition["dose_mbq"]),
                         calibration_factor=model["calibration_factor"])
    written = write_listmode(path, header, event_blocks(counts, scanner, duration, rng, block_ms))
    n_events = int(counts.sum())
    if written != n_events:
        raise RuntimeError(f"{path}: wrote {written} events, expected {n_events}")
    out = {"events": n_events, "duration_s": duration,
           "calibration_factor": model["calibration_factor"],
           "expected_trues": float(model["trues"].sum()),
           "expected_background": float(model["background"]) * scanner.n_lors}
    if return_counts:
        out["counts"] = counts
    return out
