"""Seconds per Mamba mixer call with mambapy's parallel and sequential scans, at inference.

    python benchmarks/mamba_scan.py [--threads 1] [--device cpu] [--repeats 3]

amdiff.models.mamba_backend.MambapyMixer takes the sequential scan on CPU without autograd
(faster there) and the parallel scan elsewhere. The shapes (batch x tokens x channels) are
those of the demo segmenter's three Mamba stages at 32^3 windows (batch 4, four siamese views:
16 sequences) and two larger ones. Prints per shape the best time of each scan and their
largest relative difference.
"""

from __future__ import annotations

import argparse
import time

import torch

from amdiff.models.mamba_backend import MambapyMixer

SHAPES = [(16, 4096, 16), (16, 512, 32), (16, 64, 64), (2, 32768, 32), (4, 4096, 128)]


def time_scan(mixer: MambapyMixer, x: torch.Tensor, sequential: bool, repeats: int):
    """Best seconds of ``repeats`` calls with the scan forced, and the last output."""
    scan = mixer.selective_scan_seq if sequential else super(MambapyMixer, mixer).selective_scan
    mixer.selective_scan = scan          # an instance attribute overrides the method
    best, y = float("inf"), None
    for _ in range(repeats):
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = mixer(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    del mixer.selective_scan
    return best, y


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"device {args.device}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print("| batch x tokens x channels | parallel scan, s | sequential scan, s | speed-up | relative difference |")
    print("|---|---|---|---|---|")
    for b, length, d in SHAPES:
        mixer = MambapyMixer(d).eval().to(args.device)
        x = torch.randn(b, length, d, device=args.device)
        with torch.no_grad():
            t_par, y_par = time_scan(mixer, x, False, args.repeats)
            t_seq, y_seq = time_scan(mixer, x, True, args.repeats)
        diff = float((y_par - y_seq).abs().max() / y_par.abs().max())
        print(f"| {b} x {length} x {d} | {t_par:.3f} | {t_seq:.3f} | {t_par / t_seq:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
