"""Inference fast path: time and accuracy of fast settings against the paper's full setting.

Runs a trained AMDiff checkpoint of the study (``make study``; defaults: results_study's mct
model; ``--model amdiff_no_revision`` for the diffusion output itself) on test images of the study and compares, per setting, seconds per image and accuracy
against the high-count reference, as the evaluation computes it (amdiff.evaluate.metrics):
whole-image NRMSE (the config's nrmse_whole reading, body from the CT), lesion NRMSE (range of
the reference inside the true lesion) and lesion Dice. The reference setting is the paper's:
DDPM with all T steps at window overlap 0.75 (stride = a quarter of the window). Each fast
setting is a combination of inference keys (sampler, steps, overlap, samples, sw_batch_size,
precision); the table gives its speed-up and its change in each metric against the reference.
Reduced precision is measured only on a GPU (CPU autocast is slower than float32 here).

The reference is itself one draw of a stochastic sampler. Its second row runs it again from the
next seed: that row's change is the reference's own seed-to-seed spread, the smallest change any
fast setting could be measured to within. Settings with ``samples`` > 1 report the voxel-wise mean
of that many draws (``inference.samples``), which trades time for lower sampling noise.

Rows already in ``--tsv`` (same setting and image) are read back instead of rerun, so a long
table can be filled in over several runs; delete the file to remeasure.

    python benchmarks/fast_path.py [--images mct/mct006/p005_r0 ...] [--device cuda] [--threads 2]
        [--tsv benchmarks/fast_path.tsv]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from amdiff.config import derived_seed
from amdiff.evaluate.metrics import body_mask, dice, nrmse, whole_image_nrmse
from amdiff.infer.predict import predict_volume
from amdiff.io.nifti import read_volume
from amdiff.train.checkpoint import load_checkpoint, load_weights, model_of_checkpoint

REPO = Path(__file__).resolve().parent.parent
REFERENCE = ("DDPM-T, overlap 0.75 (paper)", dict(sampler="ddpm", overlap=0.75))
# the same setting from the next seed: the reference's own sampling spread
REFERENCE_REPEAT = ("DDPM-T, overlap 0.75, next seed", dict(sampler="ddpm", overlap=0.75, seed_offset=1))
FAST = [
    ("DDIM-50, overlap 0.5", dict(sampler="ddim", steps=50, overlap=0.5)),
    ("DDIM-25, overlap 0.5", dict(sampler="ddim", steps=25, overlap=0.5)),
    ("DDIM-10, overlap 0.5", dict(sampler="ddim", steps=10, overlap=0.5)),
    ("DDIM-10, overlap 0.25", dict(sampler="ddim", steps=10, overlap=0.25)),
    ("DDIM-5, overlap 0 (study)", dict(sampler="ddim", steps=5, overlap=0.0)),
    ("DDIM-10, overlap 0.5, mean of 4", dict(sampler="ddim", steps=10, overlap=0.5, samples=4)),
    ("DDIM-10, overlap 0.25, mean of 4", dict(sampler="ddim", steps=10, overlap=0.25, samples=4)),
    ("DDIM-5, overlap 0, mean of 4", dict(sampler="ddim", steps=5, overlap=0.0, samples=4)),
]
FIELDS = ("seconds", "nrmse_whole", "nrmse_lesion", "dice_lesion")
GPU_ONLY = [("DDIM-10, overlap 0.25, bf16", dict(sampler="ddim", steps=10, overlap=0.25,
                                                 precision="bf16"))]


def run_setting(model, image: dict, inference: dict, base_seed: int, device: str) -> dict:
    """Seconds and metrics of one image under ``inference`` (its ``seed_offset``, not an
    inference key, shifts the workflow's seed of the image)."""
    inference = dict(inference)
    lc = read_volume(image["lc"], "suv")
    seed = derived_seed(base_seed, "predict", image["subject"], image["level"]) + inference.pop("seed_offset", 0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    pred = predict_volume(model, lc.data, inference, seed, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds,
            "nrmse_whole": whole_image_nrmse(pred.denoised, image["hc"], image["body"],
                                             image["reading"]),
            "nrmse_lesion": nrmse(pred.denoised, image["hc"], image["lesion"]),
            "dice_lesion": dice(pred.lesion, image["lesion"])}


def load_image(results: Path, spec: str, reading: str) -> dict:
    """``site/subject/level`` -> low-count path, reference, body and lesion masks."""
    site, subject, level = spec.split("/")
    folder = results / site / subject
    return {"name": spec, "subject": subject, "level": level,
            "lc": folder / f"lc_{level}.nii.gz",
            "hc": read_volume(folder / "hc.nii.gz", "suv").data,
            "body": body_mask(read_volume(folder / "ct.nii.gz", "ct").data),
            "lesion": read_volume(folder / "lesion.nii.gz", "labels").data > 0,
            "reading": reading}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "config" / "study.yaml"))
    ap.add_argument("--results", default=str(REPO / "results_study"))
    ap.add_argument("--model", default="amdiff", help="the variant's folder under <results>/models")
    ap.add_argument("--checkpoint", default=None, help="default: <results>/models/<model>/mct/best.pt")
    ap.add_argument("--images", nargs="+", default=["mct/mct006/p005_r0", "vision/vision001/p0167_r0"],
                    help="site/subject/level of test images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sw-batch-size", type=int, default=None, help="windows per call (default: the config's)")
    ap.add_argument("--tsv", default=None,
                    help="per-image rows: those already in it are reused, the rest are run and added")
    ap.add_argument("--settings", default=None,
                    help="comma-separated numbers of the settings to run, in the order of the table "
                         "(0 = the reference, 1 = its next seed, 2 = the first fast setting); "
                         "default all")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())
    results = Path(args.results)
    state = load_checkpoint(args.checkpoint or results / "models" / args.model / "mct" / "best.pt")
    model, _ = model_of_checkpoint(state, "checkpoint")
    load_weights(model, state["model"], "checkpoint", network="AMDiff")
    model = model.to(args.device).eval()
    base = dict(config["inference"], device=args.device, samples=1)
    if args.sw_batch_size:
        base["sw_batch_size"] = args.sw_batch_size
    reading = config.get("evaluation", {}).get("nrmse_whole", "body_mean")
    images = [load_image(results, spec, reading) for spec in args.images]
    settings = [REFERENCE, REFERENCE_REPEAT] + FAST + (GPU_ONLY if args.device.startswith("cuda") else [])
    if args.settings:
        settings = [settings[int(i)] for i in args.settings.split(",")]
    done = read_rows(args.tsv) if args.tsv else {}
    print(f"model {state.get('variant', 'amdiff')} ({model.schedule.T} steps), {len(images)} image(s) "
          f"{', '.join(args.images)}, window {base['patch_size']}, sw_batch_size "
          f"{base['sw_batch_size']}, device {args.device}, {torch.get_num_threads()} thread(s)",
          flush=True)
    for label, keys in settings:
        for image in images:
            key = (label, image["name"])
            reused = key in done
            if not reused:
                done[key] = dict(setting=label, image=image["name"],
                                 **run_setting(model, image, dict(base, **keys), config["seed"], args.device))
                if args.tsv:   # after every row: an interrupted run keeps what it measured
                    write_rows(args.tsv, done.values())
            row = done[key]
            print(f"  {label:34s} {image['name']:24s} {row['seconds']:8.1f} s  NRMSE whole "
                  f"{row['nrmse_whole']:.4f} lesion {row['nrmse_lesion']:.4f}  Dice lesion "
                  f"{row['dice_lesion']:.3f}{'  (from the TSV)' if reused else ''}", flush=True)
    wanted = {(label, image["name"]) for label, _ in settings for image in images}
    summarise([row for key, row in done.items() if key in wanted], [label for label, _ in settings])
    return 0


def read_rows(path: str) -> dict:
    """(setting, image) -> row of an earlier run's TSV; empty when there is none."""
    if not Path(path).exists():
        return {}
    with open(path, newline="") as f:
        return {(row["setting"], row["image"]): dict(row, **{k: float(row[k]) for k in FIELDS})
                for row in csv.DictReader(f, delimiter="\t")}


def write_rows(path: str, rows) -> None:
    tmp = Path(f"{path}.part")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["setting", "image", *FIELDS], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def summarise(rows: list[dict], labels: list[str]) -> None:
    """Per setting: mean seconds, speed-up, and mean metrics with their change vs the reference."""
    def mean(label, key):
        return float(np.nanmean([r[key] for r in rows if r["setting"] == label]))

    ref = {key: mean(labels[0], key) for key in FIELDS}
    print("\n| setting | s per image | speed-up | NRMSE whole (change) | NRMSE lesion (change) | "
          "Dice lesion (change) |\n|---|---|---|---|---|---|")
    for label in labels:
        m = {key: mean(label, key) for key in ref}
        print(f"| {label} | {m['seconds']:.1f} | {ref['seconds'] / m['seconds']:.1f}x | "
              f"{m['nrmse_whole']:.4f} ({100 * (m['nrmse_whole'] / ref['nrmse_whole'] - 1):+.1f} %) | "
              f"{m['nrmse_lesion']:.4f} ({100 * (m['nrmse_lesion'] / ref['nrmse_lesion'] - 1):+.1f} %) | "
              f"{m['dice_lesion']:.3f} ({m['dice_lesion'] - ref['dice_lesion']:+.3f}) |")


if __name__ == "__main__":
    sys.exit(main())
