"""Time and peak memory of the per-case evaluation (every metric of one model on one image).

Synthetic volumes with a body, seven organs and a few spherical lesions, at the demo grid
(72 x 72 x 112) and at the paper's mCT grid (440 x 440 x 400, 2.04 x 2.04 x 2.03 mm). The
"prediction" is the reference with noise and masks shifted by one voxel, so every metric
(NRMSE per class, Dice, MTV/TLG/SUVmean, connected-component detection) does real work.

    python benchmarks/evaluate_time.py [--skip-paper]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from amdiff.evaluate.metrics import evaluate_case

GRIDS = {"demo": ((72, 72, 112), (8.0, 8.0, 8.0)), "paper": ((440, 440, 400), (2.04, 2.04, 2.03))}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def synthetic_case(shape, rng):
    idx = np.indices(shape, sparse=True)
    centre = [n / 2 for n in shape]
    r2 = sum(((i - c) / (n / 2.5)) ** 2 for i, c, n in zip(idx, centre, shape))
    organs = np.zeros(shape, np.uint8)
    organs[r2 < 1] = 4                                             # muscle/body
    for label, shift in zip(range(1, 8), np.linspace(-0.3, 0.3, 7)):
        sub = sum(((i - c * (1 + shift * (k == 2))) / (n / 10)) ** 2 for k, (i, c, n) in enumerate(zip(idx, centre, shape)))
        organs[sub < 1] = label
    hc = np.where(organs > 0, 1.0 + organs, 0.05).astype(np.float32)
    lesion = np.zeros(shape, np.uint8)
    for _ in range(6):
        c = [rng.integers(n // 4, 3 * n // 4) for n in shape]
        rad = max(2, shape[0] // 40)
        lesion[sum(((i - ci) / rad) ** 2 for i, ci in zip(idx, c)) < 1] = 1
    hc[lesion == 1] = 8.0
    hc += rng.normal(0, 0.2, shape).astype(np.float32)
    np.clip(hc, 0, None, out=hc)
    return hc, lesion, organs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for name, (shape, voxel_mm) in GRIDS.items():
        if name == "paper" and args.skip_paper:
            continue
        hc, lesion, organs = synthetic_case(shape, rng)
        denoised = hc + rng.normal(0, 0.1, shape).astype(np.float32)
        lesion_pred, organs_pred = np.roll(lesion, 1, axis=0), np.roll(organs, 1, axis=2)
        t0 = time.perf_counter()
        row = evaluate_case(hc, lesion, organs, float(np.prod(voxel_mm)) / 1000.0, denoised=denoised,
                            lesion_pred=lesion_pred, organs_pred=organs_pred,
                            body=organs > 0)   # the synthetic body: its organs (no CT here)
        seconds = time.perf_counter() - t0
        print(f"{name:5s} {'x'.join(map(str, shape)):>12s}: evaluate_case {seconds:6.2f} s, "
              f"peak RSS {peak_rss_mb():7.0f} MB (process so far), dice_liver {row['dice_liver']:.3f}, "
              f"lesions {row['lesions_true']:.0f} true / {row['lesions_tp']:.0f} found")


if __name__ == "__main__":
    main()
