"""Fast versus full sampling: time and whole-image NRMSE of DDPM (all T steps) and DDIM.

Runs a trained AMDiff checkpoint on one test volume (defaults: the demo run's mct model and its
first test subject at 5 %) and prints, per sampler, seconds and NRMSE against the high-count
reference (normalised by the reference's range, as in the paper). Needs `make run` first.

    python benchmarks/sampler_speed.py [--checkpoint ...] [--lc ...] [--hc ...] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from amdiff.infer.predict import predict_volume
from amdiff.io.nifti import read_volume
from amdiff.models.amdiff import build_model
from amdiff.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent


def nrmse(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - ref) ** 2)) / (ref.max() - ref.min()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--checkpoint", default="results/models/amdiff/mct/best.pt")
    ap.add_argument("--lc", default="results/mct/mct005/lc_p005_r0.nii.gz")
    ap.add_argument("--hc", default="results/mct/mct005/hc.nii.gz")
    ap.add_argument("--ddim-steps", default="10,25,50")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    inference = yaml.safe_load(Path(args.config).read_text())["inference"]
    state = load_checkpoint(args.checkpoint)
    model = build_model(state["variant"], state["config"])
    model.load_state_dict(state["model"])
    model.to(args.device)
    lc, hc = read_volume(args.lc, "suv"), read_volume(args.hc, "suv")
    print(f"{args.checkpoint} ({state['variant']}, epoch {state['epoch']}), volume {lc.data.shape}, "
          f"patch {inference['patch_size']}, overlap {inference['overlap']}, device {args.device}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'sampler':>14} {'steps':>6} {'seconds':>9} {'NRMSE':>8}")
    print(f"{'low-count in':>14} {'-':>6} {'-':>9} {nrmse(lc.data, hc.data):8.4f}")
    runs = [("ddpm", model.schedule.T)] + [("ddim", int(s)) for s in args.ddim_steps.split(",")]
    results = {}
    for method, steps in runs:
        cfg = dict(inference, sampler=method, steps=steps, samples=1)
        t0 = time.perf_counter()
        pred = predict_volume(model, lc.data, cfg, seed=0, device=args.device)
        seconds = time.perf_counter() - t0
        results[(method, steps)] = (seconds, nrmse(pred.denoised, hc.data))
        print(f"{method:>14} {steps:>6} {seconds:9.1f} {results[(method, steps)][1]:8.4f}")
    ddpm_s, ddpm_e = results[runs[0]]
    for (method, steps), (s, e) in results.items():
        if method == "ddim":
            print(f"DDIM {steps}: {ddpm_s / s:.1f}x faster than DDPM, NRMSE {100 * (e / ddpm_e - 1):+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
