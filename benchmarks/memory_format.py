"""Seconds per whole-volume prediction with the networks' tensors contiguous vs channels_last.

    python benchmarks/memory_format.py [--config config/config.yaml] [--models amdiff med_ddpm ...]
        [--shape 72 72 112] [--threads 1] [--device cpu]

``inference.memory_format`` (amdiff.infer.predict) puts each network's 5-D weights and its
window batches in channels_last (NDHWC) layout. This runs every model the workflow predicts
with (AMDiff and its ablations, the six comparison models), built at the config's sizes with
random weights (an untrained network's zero output layers would hide differences), on one
low-count-like volume of ``--shape`` voxels, once per layout, with the config's other inference
keys. It prints per model the seconds of each layout, the speed-up, and how far the outputs
moved: the largest |difference| of the denoised image relative to its range, and the share of
voxels whose lesion or organ label changed (argmax ties can flip with float rounding).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from amdiff.commands.args import without_torchvision
from amdiff.config import derived_seed, load_config
from amdiff.contracts import VARIANTS
from amdiff.models.baselines import DENOISERS, NAMES, SEGMENTERS

DEFAULT_MODELS = ["amdiff", "amdiff_no_resmamba", *NAMES]


def build(name: str, config: dict) -> torch.nn.Module:
    """The network the workflow trains for ``name``, with every weight perturbed."""
    if name in VARIANTS:
        from amdiff.models.amdiff import build_model

        model = build_model(name, config)
    else:
        from amdiff.models.baselines import get
        from amdiff.train.baselines import baseline_kwargs

        model = get(name).build(**baseline_kwargs(config, name))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def predict(name: str, model, lc: np.ndarray, denoised: np.ndarray, inference: dict, seed: int, device: str):
    from amdiff.infer.predict import predict_baseline, predict_volume

    if name in VARIANTS or name == "med_ddpm":
        return predict_volume(model, lc, inference, seed, device=device)
    return predict_baseline(model, lc, inference, denoised if name in SEGMENTERS else None, device=device)


def moved(a, b) -> tuple[float, float]:
    """(largest denoised difference / its range, share of voxels with another label)."""
    span = float(a.denoised.max() - a.denoised.min()) or 1.0
    gap = float(np.abs(a.denoised - b.denoised).max()) / span
    if a.lesion is None:
        return gap, float("nan")
    flips = np.mean((a.lesion != b.lesion) | (a.organs != b.organs))
    return gap, float(flips)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                    choices=[*VARIANTS, *DENOISERS, *SEGMENTERS])
    ap.add_argument("--shape", nargs=3, type=int, default=[72, 72, 112], help="volume in voxels (demo: 72 72 112)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    without_torchvision()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    rng = np.random.default_rng(0)
    lc = rng.gamma(2.0, 0.5, args.shape).astype(np.float32)            # SUV-like, noisy
    denoised = lc + rng.normal(0, 0.05, args.shape).astype(np.float32)  # a stand-in second input
    seed = derived_seed(config["seed"], "predict", "bench", "p005_r0")
    inference = config["inference"]
    print(f"{args.config}, volume {tuple(args.shape)}, {args.device}, {torch.get_num_threads()} thread(s), "
          f"window {inference['patch_size']}, overlap {inference['overlap']}, "
          f"{inference['sampler']} {inference['steps']} steps")
    print("| model | contiguous, s | channels_last, s | speed-up | denoised max change / range | labels changed |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model = build(name, config).to(args.device)
        seconds, outputs = {}, {}
        for layout in ("contiguous", "channels_last"):
            start = time.perf_counter()
            outputs[layout] = predict(name, model, lc, denoised, dict(inference, memory_format=layout),
                                      seed, args.device)
            seconds[layout] = time.perf_counter() - start
        gap, flips = moved(outputs["contiguous"], outputs["channels_last"])
        print(f"| {name} | {seconds['contiguous']:.1f} | {seconds['channels_last']:.1f} | "
              f"{seconds['contiguous'] / seconds['channels_last']:.2f}x | {gap:.1e} | "
              f"{'–' if np.isnan(flips) else f'{flips:.1e}'} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
