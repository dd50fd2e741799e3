"""Seconds to predict one subject's test images: one `amdiff predict` process per image vs one
process for all of them (what the workflow's prediction jobs do), and whether the files agree.

    python benchmarks/predict_per_subject.py [--results results] [--site uexplorer]
        [--subject uexplorer005] [--models amdiff med_ddpm medsam3d] [--threads 1]

Run after `make run`: it reads that run's trained models (``models/{model}/{train site}``), the
subject's low-count test images, and for a comparison segmenter the run's Med-DDPM predictions.
Each model predicts the subject's images once per image, then in one call, into a temporary
folder; it prints the seconds of both, the seconds saved per process start, and whether every
output file is bit-identical between the two and to the run's own prediction. The subject's
images are those the run predicted (the folders under ``predictions/{model}/{site}/{subject}``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from amdiff.models.baselines import SEGMENTERS


def trained_on(results: Path, model: str, site: str) -> Path:
    """The checkpoint of ``model`` that predicted ``site`` (the demo's vision is mct's models)."""
    checkpoints = sorted((results / "models" / model).glob("*/best.pt"))
    own = [c for c in checkpoints if c.parent.name == site]
    if own or len(checkpoints) == 1:
        return (own or checkpoints)[0]
    sys.exit(f"predict_per_subject: {results}/models/{model}: no checkpoint of site {site} "
             f"(found {', '.join(c.parent.name for c in checkpoints) or 'none'})")


def command(results: Path, model: str, site: str, subject: str, images: list[str], out: Path,
            threads: int) -> list[str]:
    amdiff = Path(sys.executable).with_name("amdiff")
    argv = [str(amdiff), "predict", "--config", str(results / "config" / "inference.yaml"),
            "--checkpoint", str(trained_on(results, model, site)), "--subject", subject,
            "--threads", str(threads),
            "--lc", *[str(results / site / subject / f"lc_{i}.nii.gz") for i in images],
            "--level", *images, "--out-dir", *[str(out / i) for i in images]]
    if model in SEGMENTERS:
        argv += ["--denoised", *[str(results / "predictions" / "med_ddpm" / site / subject / i / "denoised.nii.gz")
                                 for i in images]]
    return argv


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def same_files(a: Path, b: Path) -> bool:
    """Every .nii.gz under ``a`` has a voxel-identical namesake under ``b``."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    return bool(files) and all(np.array_equal(np.asarray(nib.load(a / f).dataobj), np.asarray(nib.load(b / f).dataobj))
                               for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--site", default="uexplorer")
    ap.add_argument("--subject", default="uexplorer005")
    ap.add_argument("--models", nargs="+", default=["amdiff", "med_ddpm", "medsam3d"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print("| model | images | s, a process per image | s, one process | s saved per start | identical (to each other, to the run) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            run = args.results / "predictions" / model / args.site / args.subject
            images = sorted(p.name for p in run.iterdir() if p.is_dir()) if run.is_dir() else []
            if not images:
                sys.exit(f"predict_per_subject: {run}: no predictions (run the workflow first)")
            apart, together = Path(tmp) / model / "apart", Path(tmp) / model / "together"
            seconds_apart = sum(timed(command(args.results, model, args.site, args.subject, [i], apart, args.threads))
                                for i in images)
            seconds_together = timed(command(args.results, model, args.site, args.subject, images, together,
                                             args.threads))
            saved = (seconds_apart - seconds_together) / max(1, len(images) - 1)
            print(f"| {model} | {len(images)} | {seconds_apart:.1f} | {seconds_together:.1f} | {saved:.1f} | "
                  f"{same_files(apart, together)}, {same_files(together, run)} |", flush=True)
            shutil.rmtree(Path(tmp) / model)


if __name__ == "__main__":
    main()
