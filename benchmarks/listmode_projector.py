"""Events per second of the geometry-general list-mode projector (amdiff.physics.lines), with
and without TOF: forward, back, a list-mode EM update (the back-projection of each event's
weight over its expected counts) and the sensitivity image's attenuated back-projection (the
last two trace each line once for both of their projections), on a PETSIRD scanner read from
its header; then the projected time of the whole scanner's sensitivity image at that rate.

    python benchmarks/listmode_projector.py --events 10000000 --device cpu --threads 2
    python benchmarks/listmode_projector.py --input my_scanner.petsird --device cuda
    python benchmarks/listmode_projector.py --events 10000000 --ops forward back   # about 1 h, 1 thread

The scanner is --input's (its events' detection bins are drawn at random from its first
module-type pair), else a paper-size ring (mCT-like: 4.0 mm crystals, 55 rings, 842 mm across)
with a TOF binning of 13 bins of 60 mm and 70 mm FWHM (~470 ps). The image is --shape voxels of
--voxel-mm. Prints one line per operator: seconds, events/s and samples per event (--ops picks
the operators; the whole-scanner projection needs "sensitivity").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from amdiff.listmode.geometry import DetectorGeometry, TofBinning
from amdiff.listmode.header import make_header
from amdiff.listmode.petsird_io import read_header
from amdiff.physics.lines import LineProjector
from amdiff.physics.scanner import CylindricalScanner

PAPER_RING = CylindricalScanner(name="paper-ring", n_crystals=624, n_rings=55, radius_mm=421.0,
                                ring_pitch_mm=4.05, max_ring_difference=54, fov_radius_mm=350.0,
                                crystal_size_mm=(20.0, 4.0, 4.0))


OPS = ("forward", "back", "EM update", "sensitivity")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--input", help="a PETSIRD file whose scanner to use (default: a paper-size ring)")
    ap.add_argument("--shape", type=int, nargs=3, default=[220, 220, 110])
    ap.add_argument("--voxel-mm", type=float, nargs=3, default=[3.3, 3.3, 2.0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--chunk-events", type=int, default=1_000_000, help="events per call")
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="operators to time")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.input:
        header = read_header(args.input)
    else:
        header = make_header(PAPER_RING, subject_id="bench", weight_kg=75.0, height_m=1.75,
                             injected_mbq=250.0, calibration_factor=1.0)
    geometry = DetectorGeometry.from_header(header)
    tof = geometry.tof_binning((0, 0))
    if not tof.is_tof:
        tof = TofBinning(np.arange(-390.0, 391.0, 60.0), 70.0)
    rng = np.random.default_rng(0)
    n_bins = geometry.n_bins(0)
    projector = LineProjector(args.shape, args.voxel_mm, device=args.device)
    image = torch.rand(tuple(args.shape), device=projector.device)
    print(f"scanner: {len(geometry.types)} module type(s), {n_bins} detection bins of type 0; "
          f"image {args.shape} x {args.voxel_mm} mm; device {projector.device}, "
          f"{torch.get_num_threads()} threads; {args.events} events")
    mu_per_mm = torch.full(tuple(args.shape), 0.0096, device=projector.device)   # water
    rates = {}
    for with_tof in (False, True):
        for op in args.ops:
            seconds = 0.0
            for first in range(0, args.events, args.chunk_events):
                n = min(args.chunk_events, args.events - first)
                bins = rng.integers(0, n_bins, (n, 2))
                start, end = geometry.endpoints((0, 0), bins)
                kernel = (tof.edges, tof.fwhm_mm, rng.integers(0, tof.n_bins, n)) if with_tof else None
                values = torch.rand(n, device=projector.device)
                if projector.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                if op == "forward":
                    projector.forward(image, start, end, kernel)
                elif op == "back":
                    projector.back(values, start, end, kernel)
                elif op == "EM update":   # one list-mode OSEM sub-iteration's projections
                    projector.back_of_ratio(image, values, values, start, end, kernel)
                else:   # the sensitivity image's operation: attenuation and back-projection
                    projector.back_attenuated(values, start, end, mu_per_mm, kernel)
                if projector.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - t0
            label = f"{op}{' TOF' if with_tof else ''}"
            rates[label] = args.events / seconds
            print(f"{label:>15}: {seconds:8.2f} s  {args.events / seconds / 1e6:7.3f} M events/s  "
                  f"(<= {projector.max_samples} samples per event)")

    # the sensitivity image traces every element pair of the scanner once (all module types)
    elements = [geometry.n_bins(t) // geometry.types[t].n_energy for t in range(len(geometry.types))]
    n_lines = sum(a * b for i, a in enumerate(elements) for b in elements[:i]) + \
        sum(n * (n - 1) // 2 for n in elements)
    for label in ("sensitivity", "sensitivity TOF") if "sensitivity" in args.ops else ():
        print(f"{label} image over all {n_lines:,} element pairs (at most; pairs with efficiency 0 "
              f"are skipped): {n_lines / rates[label] / 3600:.2f} h at this rate")


if __name__ == "__main__":
    main()
