"""Seconds per Mamba mixer call with mambapy's parallel and sequential scans and our blocked
sequential scan, at inference.

    python benchmarks/mamba_scan.py [--threads 1] [--device cpu] [--repeats 3]

amdiff.models.mamba_backend.MambapyMixer takes the blocked scan on CPU without autograd
(fastest there) and the parallel scan elsewhere. The shapes (batch x tokens x channels) are
those of the demo segmenter's three Mamba stages at 32^3 windows (batch 4, four siamese views:
16 sequences) and two larger ones. Prints per shape the best time of each scan and the largest
difference of the others from the parallel scan's output, relative to its largest value.
"""

from __future__ import annotations

import argparse
import time

import torch

from amdiff.models.mamba_backend import MambapyMixer

SHAPES = [(16, 4096, 16), (16, 512, 32), (16, 64, 64), (2, 32768, 32), (4, 4096, 128)]


def scans(mixer: MambapyMixer) -> dict:
    return {"parallel": super(MambapyMixer, mixer).selective_scan,
            "sequential": mixer.selective_scan_seq, "blocked": mixer.selective_scan_blocked}


def time_scan(mixer: MambapyMixer, x: torch.Tensor, scan, repeats: int):
    """Best seconds of ``repeats`` calls with the scan forced, and the last output."""
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
    print("| batch x tokens x channels | parallel scan, s | mambapy sequential, s | blocked (ours), s | "
          "blocked vs parallel | difference: sequential, blocked |")
    print("|---|---|---|---|---|---|")
    for b, length, d in SHAPES:
        mixer = MambapyMixer(d).eval().to(args.device)
        x = torch.randn(b, length, d, device=args.device)
        with torch.no_grad():
            timed = {name: time_scan(mixer, x, scan, args.repeats) for name, scan in scans(mixer).items()}
        y_par = timed["parallel"][1]
        diff = {name: float((timed[name][1] - y_par).abs().max() / y_par.abs().max())
                for name in ("sequential", "blocked")}
        seconds = {name: value[0] for name, value in timed.items()}
        print(f"| {b} x {length} x {d} | {seconds['parallel']:.3f} | {seconds['sequential']:.3f} | "
              f"{seconds['blocked']:.3f} | {seconds['parallel'] / seconds['blocked']:.2f}x | "
              f"{diff['sequential']:.1e}, {diff['blocked']:.1e} |")

if __name__ == "__main__":
    main()
