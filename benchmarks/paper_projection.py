"""Training and inference at the paper's size (config/paper.yaml), projected from timed steps.

    python benchmarks/paper_projection.py [--sizes 32 64] [--batch 1] [--threads 2] [--device cpu]
        [--models amdiff med_ddpm ...] [--skip-training] [--skip-inference]

Training. Each model trains through its real trainer (``amdiff.train.trainer.Trainer`` for
AMDiff and Med-DDPM, ``amdiff.train.baselines.BaselineTrainer`` for the other five) with
paper.yaml's networks and learning rates, on a synthetic three-subject cohort of cubic volumes,
at each of ``--sizes`` (patch edge in voxels; a segmenter whose deepest map would hold one voxel
starts at its smallest valid edge; Med-SAM3D, whose windowed attention costs about the same on
any smaller patch, runs at 64^3 and 128^3 itself), ``--batch`` patches per step, each (model, size) in a fresh
process. It measures seconds per optimisation step (after one warm-up step), floating-point
operations per step (torch's FlopCounterMode, forward and backward) and the step's peak memory
above the built trainer (CPU: resident set; GPU: allocator peak). Operations, seconds and
activation memory are scaled from ``--batch`` to paper.yaml's ``batch_size``; gradients and
Adam's moments (3 x 4 bytes per parameter) and the weights are added once. AMDiff is timed
twice: a warm-up-phase step (L_diff only) and a joint step in which every item of the batch
gets P_HC, f_rev and f_seg (the most a step costs; with ``aux_max_t_fraction`` f, on average a
fraction f of the items do).

The comparison segmenters train on Med-DDPM's outputs, which their trainer samples per batch.
Their own step is timed with a one-step DDIM input; the input's cost at the paper's setting
(``inference`` sampler and steps: DDPM, 250 passes of Med-DDPM's denoiser) is projected
separately from the counted cost of one such pass and shown as its own column.

Projection to 128^3 (a method, stated): operations and memory follow a power law in the voxel
count fitted through the two largest sizes (an exponent of 1 is linear in the voxels);
seconds at 128^3 = seconds at the largest size x the ratio of operations (the rate of
operations measured there is assumed to hold), on the measuring device. The GPU column divides
the operations by an assumed sustained rate: ``--gpu-efficiency`` (default 0.25, our
assumption) of ``--gpu-peak-tflops`` (default 494, an H100 SXM's dense TF32 peak, which cuDNN
uses for float32 convolutions); with ``--device cuda`` the "this device" column is the measured
one. The paper's 800 epochs are 800 x
``patches_per_epoch`` / ``batch_size`` steps; AMDiff's use its warm-up step for the first
``warmup_epochs`` and afterwards the warm-up and joint steps weighted 1 - f and f.

Inference. The AMDiff denoiser's forward pass on one window (and f_rev + f_seg once per window
after sampling), counted and timed at ``--sizes``, projected to the 128^3 window, times the
windows of MONAI's sliding window over a 440 x 440 x 620 volume (benchmarks/gpu_check.py) and the
sampler's steps: the paper's DDPM-250 at overlap 0.75, the fast DDIM-10 at overlap 0.25 and the
mean of 4 DDIM-5 draws at overlap 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))   # benchmarks/: gpu_check, recon_time
from gpu_check import PAPER_VOLUME, SETTINGS, windows_per_pass  # noqa: E402
from recon_time import peak_rss_mb, reset_peak_rss  # noqa: E402

from amdiff.config import load_config  # noqa: E402
from amdiff.contracts import COMPARISON_SEGMENTERS  # noqa: E402
from amdiff.io.manifest import format_lc_pet, write_manifest  # noqa: E402
from amdiff.io.nifti import centered_affine, write_volume  # noqa: E402
from amdiff.models.amdiff import build_model  # noqa: E402
from amdiff.models.baselines import nnmamba, swin_unetr  # noqa: E402
from amdiff.train.base import batches  # noqa: E402
from amdiff.train.baselines import BaselineTrainer  # noqa: E402
from amdiff.train.checkpoint import save_checkpoint  # noqa: E402
from amdiff.train.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PAPER_PATCH = 128
# a segmenter's deepest map (1/DIVISOR of the patch) needs more than one voxel for its norm
MIN_EDGE = {"swin_unetr": 2 * swin_unetr.DIVISOR, "nnmamba": 2 * nnmamba.DIVISOR}
# Med-SAM3D's windowed attention pads a small token grid to whole windows, so its cost hardly
# changes below the paper's patch: it is measured at 128^3 itself
OWN_EDGES = {"medsam3d": [64, PAPER_PATCH]}
MODELS = ("amdiff", "med_ddpm", "leqmod_gan", "spach_transformer", "swin_unetr", "nnmamba", "medsam3d")


def synthetic_cohort(root: Path, edge: int) -> Path:
    """Three subjects (two train, one val) of ``edge``^3 voxels at 4 mm: body, two organs, one
    lesion, a noisy low-count copy; the manifest's path. Content only shapes the losses."""
    rng = np.random.default_rng(0)
    shape = (edge,) * 3
    affine = centered_affine(shape, (4.0, 4.0, 4.0))
    rows = []
    for i, split in enumerate(("train", "train", "val")):
        organs = np.zeros(shape, np.uint8)
        q = edge // 4
        organs[q:3 * q, q:3 * q, q:2 * q] = 1
        organs[q:3 * q, q:3 * q, 2 * q:3 * q] = 2
        lesion = np.zeros(shape, np.uint8)
        c = rng.integers(q, 3 * q - 3, 3)
        lesion[c[0]:c[0] + 4, c[1]:c[1] + 4, c[2]:c[2] + 4] = 1
        hc = (0.3 + 2.0 * (organs == 1) + 0.6 * (organs == 2) + 6.0 * lesion).astype(np.float32)
        lc = np.clip(hc + rng.normal(0, 0.8, shape), 0, None).astype(np.float32)
        name = f"s{i}"
        for key, arr, dtype in (("hc", hc, np.float32), ("lc", lc, np.float32), ("ct", hc * 0, np.float32),
                                ("lesion", lesion, np.uint8), ("organs", organs, np.uint8)):
            write_volume(root / name / f"{key}.nii.gz", arr, affine, dtype=dtype)
        rows.append({"subject": name, "site": "mct", "split": split, "hc_pet": f"{name}/hc.nii.gz",
                     "ct": f"{name}/ct.nii.gz", "lesion": f"{name}/lesion.nii.gz",
                     "organs": f"{name}/organs.nii.gz", "lc_pet": format_lc_pet({"p005_r0": f"{name}/lc.nii.gz"})})
    write_manifest(pd.DataFrame(rows), root / "manifest.tsv")
    return root / "manifest.tsv"


def config_at(paper: dict, edge: int, batch: int, device: str, threads: int) -> dict:
    """paper.yaml with ``batch`` patches of ``edge``^3 on ``device``; segmenter inputs from one
    DDIM step (their DDPM-250 cost is projected apart); every AMDiff item joins the auxiliary terms."""
    config = copy.deepcopy(paper)
    config["training"].update(patch_size=[edge] * 3, batch_size=batch, device=device, threads=threads, gpus=1,
                              aux_max_t_fraction=1.0)
    config["inference"].update(patch_size=[edge] * 3, sampler="ddim", steps=1)
    return config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps(trainer, epoch: int, repeats: int) -> dict:
    """Seconds per step (mean of ``repeats`` after one warm-up), operations of one step, and the
    step's peak memory above the built trainer (MB)."""
    device = trainer.device
    bs = int(trainer.tcfg["batch_size"])
    patches = trainer.train_sampler.epoch(bs * (repeats + 2), epoch)
    steps = list(batches(patches, bs))
    gen = torch.Generator().manual_seed(0)
    trainer.model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        reset_peak_rss()
        base = peak_rss_mb()
    flops = FlopCounterMode(display=False)
    with flops:
        trainer.train_batch(steps[0], epoch, gen)           # also the warm-up
    _sync(device)
    start = time.perf_counter()
    for batch in steps[1:repeats + 1]:
        trainer.train_batch(batch, epoch, gen)
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb())
    return {"seconds": seconds, "flops": float(flops.get_total_flops()), "memory_mb": peak - base}


def denoise_pass_flops(model, edge: int, batch: int, device: torch.device) -> float:
    """Operations of one forward pass of a diffusion denoiser on ``batch`` windows of edge^3."""
    x = torch.randn(batch, 1, edge, edge, edge, device=device)
    t = torch.full((batch,), 10, device=device, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eps(x, x.abs(), t)
    return float(counter.get_total_flops())


def duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def power_law(sizes: list[int], values: list[float], target: int) -> tuple[float, float]:
    """(value at ``target``, exponent in the voxel count) through the two largest sizes; with
    one size (or a value <= 0) linear in the voxels."""
    points = sorted(zip(sizes, values))
    s2, v2 = points[-1]
    if len(points) < 2 or points[-2][1] <= 0 or v2 <= 0:
        return v2 * (target / s2) ** 3, 1.0
    s1, v1 = points[-2]
    p = math.log(v2 / v1) / math.log((s2 / s1) ** 3)
    return v2 * ((target / s2) ** 3) ** p, p


def build_trainer(name: str, config: dict, manifest: Path, work: Path):
    if name in ("amdiff", "med_ddpm"):
        return Trainer(config, name, "mct", manifest, work / name)
    denoiser = None
    if name in COMPARISON_SEGMENTERS:
        denoiser = work / "med_ddpm_input.pt"
        if not denoiser.exists():   # untrained weights: only the cost of its pass matters here
            torch.manual_seed(0)
            save_checkpoint(denoiser, {"model": build_model("med_ddpm", config).state_dict(),
                                       "variant": "med_ddpm", "config": config})
    return BaselineTrainer(config, name, "mct", manifest, work / name, denoiser_checkpoint=denoiser)


def measure_model(job: str, edge: int, batch: int, paper: dict, device: torch.device, threads: int,
                  repeats: int) -> dict:
    """One job (a model, or ``amdiff:warm-up`` / ``amdiff:joint``) at one size in this (fresh)
    process: its figures, and for a comparison segmenter the operations of one pass of its
    input denoiser under ``input``."""
    name, _, phase = job.partition(":")
    with tempfile.TemporaryDirectory(prefix="paper_projection_") as tmp:
        manifest = synthetic_cohort(Path(tmp) / "cohort", edge)
        config = config_at(paper, edge, batch, str(device), threads)
        trainer = build_trainer(name, config, manifest, Path(tmp))
        out = measure_steps(trainer, trainer.e_T if phase == "joint" else 0, repeats)
        out["params"] = sum(p.numel() for p in trainer.model.parameters())
        if name in COMPARISON_SEGMENTERS:
            out["input"] = denoise_pass_flops(trainer.diffusion, edge, int(config["training"]["batch_size"]), device)
    return out


def measure_in_subprocess(job: str, edge: int, args) -> dict:
    """measure_model in a fresh interpreter, so that the resident-set peak is this model's alone
    (memory another model freed stays in a process and would hide the next one's growth)."""
    command = [sys.executable, __file__, "--worker", job, str(edge), "--config", args.config,
               "--device", args.device, "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--batch", str(args.batch)]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{job} at {edge}^3 failed: {run.stderr.strip()[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def training_rows(paper: dict, args, device: torch.device) -> list[dict]:
    rows = []
    steps_total = int(paper["training"]["epochs"]) * int(paper["training"]["patches_per_epoch"]) \
        // int(paper["training"]["batch_size"])
    warm_fraction = int(paper["training"]["warmup_epochs"]) / int(paper["training"]["epochs"])
    bs = int(paper["training"]["batch_size"])
    sampler_passes = (int(paper["diffusion"]["timesteps"]) if paper["inference"]["sampler"] == "ddpm"
                      else int(paper["inference"]["steps"]))
    measured: dict[str, dict[int, dict]] = {}
    input_flops: dict[int, float] = {}
    jobs = [job for name in args.models for job in (("amdiff:warm-up", "amdiff:joint") if name == "amdiff" else (name,))]
    for job in jobs:
        edges = OWN_EDGES.get(job) or [e for e in args.sizes if e >= MIN_EDGE.get(job, 0)]
        if len(edges) < 2:   # two sizes for the fit: the model's smallest and the next
            edges = sorted(set(edges) | {MIN_EDGE[job], MIN_EDGE[job] + 32})
        for edge in edges:
            m = measure_in_subprocess(job, edge, args)
            key = job.replace(":", " (") + ")" if ":" in job else job
            if "input" in m:
                input_flops[edge] = m.pop("input")
            measured.setdefault(key, {})[edge] = m
            print(f"  {key:28s} {edge}^3: {m['seconds']:7.2f} s/step, "
                  f"{m['flops'] / 1e9:9.4g} GFLOP, +{m['memory_mb']:7.0f} MB", flush=True)
    rate_gpu = args.gpu_peak_tflops * 1e12 * args.gpu_efficiency
    scale = bs / args.batch                  # operations and activations grow with the batch
    for key, by_size in measured.items():
        sizes = sorted(by_size)
        largest = by_size[sizes[-1]]
        flops, p = power_law(sizes, [by_size[s]["flops"] for s in sizes], PAPER_PATCH)
        # gradients and Adam's two moments do not grow with the patch or the batch; activations do
        fixed_mb = 3 * 4 * largest["params"] / 2**20
        activations, _ = power_law(sizes, [max(by_size[s]["memory_mb"] - fixed_mb, 1.0) for s in sizes],
                                   PAPER_PATCH)
        row = {"model": key, "params_m": largest["params"] / 1e6, "edge": sizes[-1],
               "seconds_measured": largest["seconds"], "exponent": p,
               "tflop_128": scale * flops / 1e12,
               "seconds_128": scale * largest["seconds"] * flops / largest["flops"],
               "memory_gb_128": (scale * activations + fixed_mb + 4 * largest["params"] / 2**20) / 1024,
               "input_tflop_128": 0.0}
        if key in COMPARISON_SEGMENTERS and input_flops:
            edges = sorted(input_flops)
            row["input_tflop_128"] = scale * sampler_passes * power_law(
                edges, [input_flops[e] for e in edges], PAPER_PATCH)[0] / 1e12
        row["gpu_seconds_128"] = (row["tflop_128"] + row["input_tflop_128"]) * 1e12 / rate_gpu
        rows.append(row)
    by_model = {r["model"]: r for r in rows}
    if "amdiff (warm-up)" in by_model and "amdiff (joint)" in by_model:
        # warm-up epochs: L_diff alone; afterwards half the items (aux_max_t_fraction 0.5) join
        # the auxiliary terms on average: the mean of the two steps
        w, j = by_model["amdiff (warm-up)"], by_model["amdiff (joint)"]
        f = float(paper["training"]["aux_max_t_fraction"])
        mix = {k: warm_fraction * w[k] + (1 - warm_fraction) * ((1 - f) * w[k] + f * j[k])
               for k in ("tflop_128", "seconds_128", "gpu_seconds_128")}
        rows.append({**j, "model": "amdiff (800 epochs' mix)", "exponent": j["exponent"],
                     "memory_gb_128": j["memory_gb_128"], "seconds_measured": math.nan, **mix})
    print(f"\nTraining at 128³, batch {bs}: {steps_total:,} steps for the paper's "
          f"{paper['training']['epochs']} epochs. Measured with batch {args.batch} on {device} "
          f"({args.threads} threads); every 128³ and GPU figure is a PROJECTION (method in this script's "
          f"docstring; GPU: {rate_gpu / 1e12:.0f} TFLOP/s sustained, assumed)")
    print("| model | params (M) | measured s/step (edge) | TFLOP/step at 128³ (exponent) | s/step at 128³, "
          "this device | memory at 128³ | input: Med-DDPM DDPM-250, TFLOP/step | GPU s/step | "
          "800 epochs, one GPU |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        measured_cell = "" if math.isnan(r["seconds_measured"]) else f"{r['seconds_measured']:.2f} ({r['edge']}³)"
        print(f"| {r['model']} | {r['params_m']:.2f} | {measured_cell} | {r['tflop_128']:.3g} "
              f"({r['exponent']:.3f}) | {r['seconds_128']:.0f} | {r['memory_gb_128']:.0f} GB | "
              f"{r['input_tflop_128']:.0f} | {r['gpu_seconds_128']:.2f} | {duration(steps_total * r['gpu_seconds_128'])} |")
    return rows


def inference_rows(paper: dict, args, device: torch.device) -> None:
    """AMDiff's window passes at ``--sizes``, projected to a 440 x 440 x 620 volume."""
    torch.manual_seed(0)
    model = build_model("amdiff", paper).to(device).eval()
    batch = int(paper["inference"]["sw_batch_size"])
    den, tail = {}, {}
    for edge in args.sizes:
        x = torch.randn(batch, 1, edge, edge, edge, device=device)
        t = torch.full((batch,), 10, device=device, dtype=torch.long)
        with torch.no_grad():
            model.denoiser(x, x.abs(), t)                    # warm-up
            _sync(device)
            start = time.perf_counter()
            model.denoiser(x, x.abs(), t)
            _sync(device)
            seconds = (time.perf_counter() - start) / batch
            counter = FlopCounterMode(display=False)
            with counter:
                model.denoiser(x, x.abs(), t)
            den[edge] = (seconds, counter.get_total_flops() / batch)
            counter = FlopCounterMode(display=False)
            with counter:
                model.segment(model.revise(x.abs(), x.abs()), x.abs())
            tail[edge] = counter.get_total_flops() / batch
        print(f"  denoiser window {edge}^3: {seconds:.3f} s, {den[edge][1] / 1e9:.1f} GFLOP; "
              f"f_rev + f_seg {tail[edge] / 1e9:.1f} GFLOP", flush=True)
    sizes = sorted(den)
    flops, p = power_law(sizes, [den[s][1] for s in sizes], PAPER_PATCH)
    tail_flops, _ = power_law(sizes, [tail[s] for s in sizes], PAPER_PATCH)
    device_rate = den[sizes[-1]][1] / den[sizes[-1]][0]
    gpu_rate = args.gpu_peak_tflops * 1e12 * args.gpu_efficiency
    print(f"\nInference of one {'x'.join(map(str, PAPER_VOLUME))} volume, 128³ windows: denoiser "
          f"{flops / 1e12:.2f} TFLOP per window (exponent {p:.2f}), f_rev + f_seg {tail_flops / 1e12:.2f}; "
          f"{device} rate {device_rate / 1e9:.0f} GFLOP/s measured at {sizes[-1]}³; GPU {gpu_rate / 1e12:.0f} "
          f"TFLOP/s sustained (assumed). PROJECTIONS.")
    print("| setting | windows per pass | window passes | PFLOP | this device | one GPU |\n"
          "|---|---|---|---|---|---|")
    for label, (sampler, steps, overlap, samples) in SETTINGS.items():
        n = windows_per_pass(PAPER_VOLUME, [PAPER_PATCH] * 3, overlap)
        # f_rev + f_seg counted once per draw: an upper bound (f_seg runs once, on the mean)
        total = samples * (n * steps * flops + n * tail_flops)
        draws = f", mean of {samples}" if samples > 1 else ""
        print(f"| {label}: {sampler.upper()}-{steps}, overlap {overlap}{draws} | {n:,} | "
              f"{n * steps * samples:,} | {total / 1e15:.1f} | {duration(total / device_rate)} | "
              f"{duration(total / gpu_rate)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "config" / "paper.yaml"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="patch edges to time (voxels)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1,
                    help="patches per measured step; figures are scaled to paper.yaml's batch_size")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per size after the warm-up")
    ap.add_argument("--gpu-peak-tflops", type=float, default=494.0)
    ap.add_argument("--gpu-efficiency", type=float, default=0.25)
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "EDGE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    paper = load_config(Path(args.config))
    if args.worker:
        job, edge = args.worker[0], int(args.worker[1])
        print(json.dumps(measure_model(job, edge, args.batch, paper, device, args.threads, args.repeats)))
        return 0
    print(f"device {device}, {torch.get_num_threads()} threads, sizes {args.sizes}, config {args.config}",
          flush=True)
    if not args.skip_training:
        training_rows(paper, args, device)
    if not args.skip_inference:
        inference_rows(paper, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
