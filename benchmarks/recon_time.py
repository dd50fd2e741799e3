"""Reconstruction time and peak memory: one demo volume, and a paper-size volume.

Demo: the ``mct`` site of config/config.yaml (its grid, scanner, acquisition and recon
settings) on a simple synthetic torso; times simulation, histogramming + OSEM + SUV writing.

Paper size: the ``mct`` site of config/paper.yaml (440 x 440 x 400 voxels of 2.04 x 2.04 x
2.03 mm, mCT-like scanner: 624 crystals per ring, radius 427.6 mm, rings covering the volume
as continuous bed motion, 700 mm transaxial FOV; --paper-mrd adds oblique planes). A full
reconstruction is far too slow on CPU, so forward and back projection are timed on a random
sample of LORs of the first angular subset and EXTRAPOLATED to one subset update and to the
whole reconstruction (attenuation + sensitivity images + 2 iterations x 21 subsets).

    python benchmarks/recon_time.py [--device cuda] [--threads 1] [--skip-paper]
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
from amdiff.recon.osem import angular_subsets, reconstruct_listmode
from amdiff.physics.projector import RayProjector
from amdiff.physics.scanner import CylindricalScanner

REPO = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
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


def demo(device: str, count_scale: float | None) -> None:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["sites"]["mct"]
    shape, vox = tuple(cfg["image"]["shape"]), tuple(cfg["image"]["voxel_size_mm"])
    scanner = CylindricalScanner.from_config(cfg["scanner"])
    acq = dict(cfg["acquisition"], dose_mbq=float(cfg["acquisition"]["dose_mbq"][0]))
    if count_scale is not None:
        acq["count_scale"] = count_scale
    recon = dict(cfg["recon"], background_fraction=acq["background_fraction"])
    affine = centered_affine(shape, vox)
    suv, mu = torso(shape, vox)
    print(f"demo (site mct): grid {shape} at {vox} mm, scanner {scanner.name}: "
          f"{scanner.n_lors:,} LORs, {recon['iterations']} it x {recon['subsets']} subsets, "
          f"count_scale {acq['count_scale']}, device {device}, "
          f"{torch.get_num_threads()} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sim = simulate_listmode(tmp / "full.petsird", suv, mu, affine, scanner, acq,
                                subject_id="bench", weight_kg=75.0, height_m=1.75, seed=1,
                                device=device)
        t_sim = time.perf_counter() - t0
        print(f"  simulate: {sim['events']:,} events in {t_sim:.1f} s "
              f"(incl. eta calibration), peak RSS {peak_rss_mb():.0f} MiB")
        write_volume(tmp / "mu.nii.gz", mu, affine)
        for label, frac in (("full list", 1.0), ("5 % list ", 0.05)):
            path = tmp / "full.petsird"
            if frac < 1.0:
                path = tmp / "p005.petsird"
                thin(tmp / "full.petsird", path, frac)
            t0 = time.perf_counter()
            out = reconstruct_listmode(path, tmp / "mu.nii.gz", affine, recon,
                                       tmp / f"{frac}.nii.gz", device=device,
                                       count_fraction=frac, progress=False)
            t_rec = time.perf_counter() - t0
            img = read_volume(out, kind="suv").data
            body = ndimage.binary_erosion(suv == 1.0, iterations=2)
            liver = ndimage.binary_erosion(suv == 2.5, iterations=2)
            print(f"  recon {label}: {t_rec:.1f} s (histogram + OSEM + post-filter + SUV "
                  f"NIfTI), peak RSS {peak_rss_mb():.0f} MiB{gpu_peak_mb(device)}")
            print(f"    SUVmean (CV) inner liver {img[liver].mean():.2f} "
                  f"({img[liver].std() / img[liver].mean():.2f}), truth 2.5; inner soft tissue "
                  f"{img[body].mean():.2f} ({img[body].std() / img[body].mean():.2f}), truth 1.0;"
                  f" zero voxels in soft tissue {np.mean(img[body] == 0):.1%}")


def thin(src, dst, fraction, seed=0):
    from amdiff.listmode.petsird_io import EventBlock, iter_event_blocks, read_header, \
        write_listmode
    rng = np.random.default_rng(seed)
    write_listmode(dst, read_header(src),
                   (EventBlock(b.start_ms, b.stop_ms, b.bins[rng.random(len(b.bins)) < fraction])
                    for b in iter_event_blocks(src)))


def paper(device: str, n_sample_pairs: int, mrd: int | None) -> None:
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["sites"]["mct"]
    shape, vox = tuple(cfg["image"]["shape"]), tuple(cfg["image"]["voxel_size_mm"])
    sc = dict(cfg["scanner"])
    if mrd is not None:
        sc["max_ring_difference"] = mrd
    scanner = CylindricalScanner.from_config(sc)
    n_sub, n_it = cfg["recon"]["subsets"], cfg["recon"]["iterations"]
    print(f"paper size: grid {shape} at {vox} mm, scanner {scanner.name} ({scanner.n_crystals} "
          f"crystals x {scanner.n_rings} rings, MRD {scanner.max_ring_difference}): {scanner.n_lors:,} LORs, "
          f"device {device}, {torch.get_num_threads()} thread(s)")
    proj = RayProjector(scanner, shape, vox, device=device)
    # LORs of the first angular subset: its in-plane pairs are found on a 1-ring copy
    flat = CylindricalScanner.from_config(dict(sc, n_rings=1, max_ring_difference=0))
    pairs0 = angular_subsets(flat, n_sub)[0]
    rng = np.random.default_rng(0)
    pairs = rng.choice(pairs0, size=min(n_sample_pairs, len(pairs0)), replace=False)
    n_rp = scanner.n_ring_pairs
    lors = (pairs[:, None] * n_rp + np.arange(n_rp)[None, :]).ravel()
    image = torch.rand(shape, device=device)
    values = torch.rand(len(lors), device=device)
    proj.forward(image, lors[:1000])                     # warm-up
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    proj.forward(image, lors)
    sync()
    t_f = (time.perf_counter() - t0) / len(lors)
    t0 = time.perf_counter()
    proj.back(values, lors)
    sync()
    t_b = (time.perf_counter() - t0) / len(lors)
    per_subset = len(pairs0) * n_rp
    subset_s = per_subset * (t_f + t_b)
    # attenuation (1 forward) + sensitivity (1 back) + n_it x (forward + back)
    total_s = scanner.n_lors * ((1 + n_it) * t_f + (1 + n_it) * t_b)
    print(f"  measured on {len(lors):,} LORs: forward {t_f * 1e6:.2f} us/LOR, "
          f"back {t_b * 1e6:.2f} us/LOR, peak RSS {peak_rss_mb():.0f} MiB{gpu_peak_mb(device)}")
    print(f"  EXTRAPOLATED one subset update ({per_subset:,} LORs): {subset_s / 60:.1f} min")
    print(f"  EXTRAPOLATED full recon ({n_it} it x {n_sub} subsets + attenuation + "
          f"sensitivity): {total_s / 3600:.1f} h")
    lor_gb = 3 * scanner.n_lors * 4 / 1e9
    img_gb = (n_sub + 3) * np.prod(shape) * 4 / 1e9
    print(f"  memory a full run would need: ~{lor_gb:.1f} GB of LOR arrays (counts, "
          f"attenuation, ratio) + ~{img_gb:.1f} GB of images (21 subset sensitivities)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--count-scale", type=float, default=None,
                    help="override the demo site's acquisition count_scale")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--paper-pairs", type=int, default=96,
                    help="in-plane crystal pairs sampled (x all ring pairs) for the paper timing")
    ap.add_argument("--paper-mrd", type=int, default=None,
                    help="override the max ring difference of config/paper.yaml's mct scanner")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.skip_demo:
        demo(args.device, args.count_scale)
    if not args.skip_paper:
        paper(args.device, args.paper_pairs, args.paper_mrd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
