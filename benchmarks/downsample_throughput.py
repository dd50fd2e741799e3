"""Throughput and peak memory of PETSIRD reading and down-sampling.

    python benchmarks/downsample_throughput.py --events 50000000 --out-dir /tmp/lm_bench
    python benchmarks/downsample_throughput.py --input my_scanner.petsird   # any PETSIRD file

Writes synthetic PETSIRD lists of N/4 and N prompts (mCT-demo scanner, random LORs,
time blocks of --block-events), or takes the --input files as they are (any header: several
module types, TOF, energy bins), then runs each measurement in a fresh subprocess and
reports wall time (best of --repeat), events/s and peak RSS (the child's own ru_maxrss):
  petsird   petsird's per-event object reader (on the first --object-events only)
  read      the vectorised reader (RawReader), every event kind of every module-type pair
  downsample  levels 5/10/20 %, one realization each
  header    opening the file: parsing its header only (every tool pays this)
  baseline  the interpreter with the same imports and no data (subtract for data memory)
Flat memory = the same peak RSS for N/4 and N.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from amdiff.listmode.downsample import downsample
from amdiff.listmode.header import make_header
from amdiff.listmode.petsird_io import EventBlock, RawEventBlock, RawReader, write_listmode
from amdiff.physics.scanner import CylindricalScanner

SCANNER = CylindricalScanner(name="mct-demo", n_crystals=96, n_rings=96, radius_mm=300.0,
                             ring_pitch_mm=8.0, max_ring_difference=0, fov_radius_mm=195.0)
LEVELS = (5, 10, 20)


def write_synthetic(path: Path, n: int, block_events: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    header = make_header(SCANNER, subject_id="bench", weight_kg=75.0, height_m=1.75,
                         injected_mbq=250.0, calibration_factor=1.0)

    def blocks():
        for k, first in enumerate(range(0, n, block_events)):
            lors = rng.integers(0, SCANNER.n_lors, min(block_events, n - first))
            a, b = SCANNER.lor_detectors(lors)
            yield EventBlock(1000 * k, 1000 * (k + 1), np.stack([a, b], 1).astype(np.uint32))
    write_listmode(path, header, blocks())


# ---- workers (run in a subprocess; print one JSON line) --------------------------------------
def work_read(path: str) -> int:
    """Prompts read, of every module-type pair (delayeds and singles are read too)."""
    with RawReader(path) as reader:
        return sum(len(ev) for b in reader.time_blocks() if isinstance(b, RawEventBlock)
                   for row in b.prompts for ev in row)


def work_header(path: str) -> int:
    """Bytes of header parsed (the file is opened and closed, no time block read)."""
    with RawReader(path) as reader:
        return len(reader.header_bytes())


def work_petsird(path: str, limit: int) -> int:
    import petsird
    n = 0
    with petsird.BinaryPETSIRDReader(path, skip_completed_check=True) as reader:
        reader.read_header()
        for tb in reader.read_time_blocks():
            if isinstance(tb, petsird.TimeBlock.EventTimeBlock):
                for row in tb.value.prompt_events:
                    for events in row:
                        n += len(np.array([e.detection_bins for e in events], dtype=np.uint32))
            if n >= limit:
                break
    return n


def work_downsample(path: str, out_dir: str) -> int:
    outs = {p: [Path(out_dir) / f"bench_p{p:03d}.petsird"] for p in LEVELS}
    counts = downsample(path, outs, seed=1)
    for paths in outs.values():
        for p in paths:
            p.unlink()
    return sum(counts.values())


def worker(args) -> None:
    t0 = time.perf_counter()
    if args.worker == "read":
        n = work_read(args.path)
    elif args.worker == "petsird":
        n = work_petsird(args.path, args.object_events)
    elif args.worker == "downsample":
        n = work_downsample(args.path, args.out_dir)
    elif args.worker == "header":
        n = work_header(args.path)
    else:
        n = 0
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
    print(json.dumps({"events": n, "seconds": seconds, "peak_rss_mb": rss_mb}))


def measure(kind: str, path: Path | None, args) -> dict:
    """Best time (CPU is shared) and largest peak RSS over --repeat fresh subprocesses."""
    cmd = [sys.executable, __file__, "--worker", kind, "--out-dir", str(args.out_dir),
           "--object-events", str(args.object_events)]
    if path is not None:
        cmd += ["--path", str(path)]
    runs = []
    for _ in range(args.repeat):
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return {"events": runs[0]["events"], "seconds": min(r["seconds"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000_000, help="prompts in the large file")
    ap.add_argument("--out-dir", type=Path, default=None, help="scratch folder (default: temp)")
    ap.add_argument("--block-events", type=int, default=100_000, help="events per time block")
    ap.add_argument("--object-events", type=int, default=300_000,
                    help="events read with petsird's object reader")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (best time)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic files")
    ap.add_argument("--input", type=Path, nargs="+", help="benchmark these PETSIRD files instead "
                    "of synthetic ones (any header)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    scratch = args.out_dir is None
    args.out_dir = Path(tempfile.mkdtemp(prefix="lm_bench_")) if scratch else args.out_dir
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        base = measure("baseline", None, args)
        rows = []
        inputs = args.input or [args.events // 4, args.events]
        for item in inputs:
            if isinstance(item, Path):
                path, write_s = item, float("nan")
            else:
                path = args.out_dir / f"synthetic_{item}.petsird"
                t0 = time.perf_counter()
                write_synthetic(path, item, args.block_events)
                write_s = time.perf_counter() - t0
            header = measure("header", path, args)
            read = measure("read", path, args)
            ds = measure("downsample", path, args)
            rows.append((read["events"], path.stat().st_size / 1e6, write_s, header, read, ds))
            if item is inputs[0]:
                obj = measure("petsird", path, args)
            if not args.keep and not isinstance(item, Path):
                path.unlink()
    finally:
        if scratch and not args.keep:
            shutil.rmtree(args.out_dir, ignore_errors=True)

    print(f"baseline interpreter + imports: peak RSS {base['peak_rss_mb']:.0f} MB")
    print(f"petsird object reader: {obj['events'] / obj['seconds'] / 1e6:.2f} M events/s "
          f"({obj['events']} events)")
    print(f"{'prompts':>11} {'MB':>7} {'write s':>8} | {'hdr MB':>6} {'hdr s':>6} {'RSS MB':>7} | "
          f"{'read s':>7} {'Mev/s':>6} {'RSS MB':>7} | {'ds s':>7} {'Mev/s':>6} {'RSS MB':>7} | "
          f"{'ds/read':>7}")
    for n, mb, write_s, header, read, ds in rows:
        print(f"{n:>11} {mb:>7.0f} {write_s:>8.1f} | {header['events'] / 1e6:>6.1f} "
              f"{header['seconds']:>6.2f} {header['peak_rss_mb']:>7.0f} | {read['seconds']:>7.2f} "
              f"{n / read['seconds'] / 1e6:>6.1f} {read['peak_rss_mb']:>7.0f} | "
              f"{ds['seconds']:>7.2f} {n / ds['seconds'] / 1e6:>6.1f} {ds['peak_rss_mb']:>7.0f} | "
              f"{ds['seconds'] / read['seconds']:>7.2f}")


if __name__ == "__main__":
    main()
