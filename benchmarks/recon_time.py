"""Reconstruction time and peak memory: one demo volume, and a paper-size volume.

Demo: the ``mct`` site of config/config.yaml (its grid, scanner, acquisition and recon
settings) on a simple synthetic torso; times simulation, histogramming + OSEM + SUV writing.

Paper size: the same for the ``mct`` site of config/paper.yaml (440 x 440 x 400 voxels of
2.04 x 2.04 x 2.03 mm, mCT-like scanner: 624 crystals per ring, radius 427.6 mm, rings covering
the volume as continuous bed motion, 700 mm transaxial FOV, direct planes; clinical counts),
measured end to end, not extrapolated: simulation, then reconstruction of the full list and of
a 5 % list (2 iterations x 21 subsets), each as ``amdiff recon`` runs it.

    python benchmarks/recon_time.py [--device cuda] [--threads 1] [--skip-demo] [--skip-paper]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import ndimage

from amdiff.io.nifti import centered_affine, read_volume, write_volume
from amdiff.listmode.simulate import simulate_listmode
from amdiff.recon.osem import reconstruct_listmode
from amdiff.physics.scanner import CylindricalScanner

REPO = Path(__file__).resolve().parent.parent


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak RSS since the last reset_peak_rss (the process's peak where that is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def gpu_peak_mb(device: str) -> str:
    if device.startswith("cuda"):
        return f", GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return ""


def torso(shape, vox):
    """SUV and mu (1/cm) of an elliptical torso with lungs, liver and three lesions."""
    x, y, z = (((np.arange(n) - (n - 1) / 2) * v) for n, v in zip(shape, vox))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    half_len = 0.4 * shape[2] * vox[2]
    body = ((X / 170) ** 2 + (Y / 110) ** 2 <= 1) & (np.abs(Z) <= half_len)
    lungs = (((np.abs(X) - 70) / 50) ** 2 + (Y / 70) ** 2 + ((Z - 0.3 * half_len) / 120) ** 2) <= 1
    liver = ((X + 60) / 80) ** 2 + ((Y - 10) / 60) ** 2 + ((Z + 0.05 * half_len) / 70) ** 2 <= 1
    suv = np.where(body, 1.0, 0.0)
    suv[lungs & body] = 0.4
    suv[liver & body] = 2.5
    for cx, cy, cz, r in ((60, -30, 0.3 * half_len, 15), (-40, 40, -0.1 * half_len, 12),
                          (20, 0, -0.5 * half_len, 20)):
        suv[(X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2 <= r ** 2] = 8.0
    mu = np.where(body, 0.096, 0.0)
    mu[lungs & body] = 0.03
    return suv.astype(np.float32), mu.astype(np.float32)


def site(config: str, device: str, count_scale: float | None, percent: float) -> None:
    """Simulate the ``mct`` site of ``config`` on the torso, then reconstruct the full list and
    a ``percent`` % list with that site's recon settings; print times, memory and recovery."""
    cfg = yaml.safe_load((REPO / "config" / config).read_text())["sites"]["mct"]
    shape, vox = tuple(cfg["image"]["shape"]), tuple(cfg["image"]["voxel_size_mm"])
    scanner = CylindricalScanner.from_config(cfg["scanner"])
    acq = dict(cfg["acquisition"], dose_mbq=float(cfg["acquisition"]["dose_mbq"][0]))
    if count_scale is not None:
        acq["count_scale"] = count_scale
    recon = dict(cfg["recon"], background_fraction=acq["background_fraction"])
    affine = centered_affine(shape, vox)
    suv, mu = torso(shape, vox)
    print(f"{config} (site mct): grid {shape} at {vox} mm, scanner {scanner.name}: "
          f"{scanner.n_lors:,} LORs, {recon['iterations']} it x {recon['subsets']} subsets, "
          f"count_scale {acq['count_scale']}, device {device}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reset_peak_rss()
        t0 = time.perf_counter()
        sim = simulate_listmode(tmp / "full.petsird", suv, mu, affine, scanner, acq,
                                subject_id="bench", weight_kg=75.0, height_m=1.75, seed=1,
                                device=device)
        t_sim = time.perf_counter() - t0
        print(f"  simulate: {sim['events']:,} events in {t_sim:.1f} s "
              f"(incl. eta calibration and the system matrix), peak RSS {peak_rss_mb():.0f} MiB",
              flush=True)
        write_volume(tmp / "mu.nii.gz", mu, affine)
        body = ndimage.binary_erosion(suv == 1.0, iterations=2)
        liver = ndimage.binary_erosion(suv == 2.5, iterations=2)
        del suv
        for frac in (1.0, percent / 100.0):
            path = tmp / "full.petsird"
            if frac < 1.0:
                path = tmp / "low.petsird"
                thin(tmp / "full.petsird", path, frac)
            reset_peak_rss()
            t0 = time.perf_counter()
            out = reconstruct_listmode(path, tmp / "mu.nii.gz", affine, recon,
                                       tmp / f"{frac}.nii.gz", device=device,
                                       count_fraction=frac, progress=False)
            t_rec = time.perf_counter() - t0
            img = read_volume(out, kind="suv").data
            print(f"  recon {frac:.0%} list: {t_rec:.1f} s (histogram + system matrix + OSEM + "
                  f"post-filter + SUV NIfTI), peak RSS {peak_rss_mb():.0f} MiB"
                  f"{gpu_peak_mb(device)}")
            print(f"    SUVmean (CV) inner liver {img[liver].mean():.2f} "
                  f"({img[liver].std() / img[liver].mean():.2f}), truth 2.5; inner soft tissue "
                  f"{img[body].mean():.2f} ({img[body].std() / img[body].mean():.2f}), truth 1.0;"
                  f" zero voxels in soft tissue {np.mean(img[body] == 0):.1%}", flush=True)


def thin(src, dst, fraction, seed=0):
    from amdiff.listmode.petsird_io import EventBlock, iter_event_blocks, read_header, \
        write_listmode
    rng = np.random.default_rng(seed)
    write_listmode(dst, read_header(src),
                   (EventBlock(b.start_ms, b.stop_ms, b.bins[rng.random(len(b.bins)) < fraction])
                    for b in iter_event_blocks(src)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--count-scale", type=float, default=None,
                    help="override the demo site's acquisition count_scale")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--paper-count-scale", type=float, default=None,
                    help="override the paper site's count_scale (1.0: clinical counts, "
                         "~0.7 G events)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.skip_demo:
        site("config.yaml", args.device, args.count_scale, 5.0)
    if not args.skip_paper:
        site("paper.yaml", args.device, args.paper_count_scale, 5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
