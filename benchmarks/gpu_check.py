"""Every check that needs a CUDA GPU, in one run of a few minutes, printed as one table.

    python benchmarks/gpu_check.py                       # on cuda (the paper's sizes)
    python benchmarks/gpu_check.py --device cpu --small  # the same code on tiny sizes (CI smoke)

Checks, each timed, each a row of the table (status ok, FAIL with the reason, or skip):

1. ``projector``: forward and back projection of the demo mCT scanner on the device against the
   CPU (largest relative difference; float32 sums over different orders differ by ~1e-6).
2. ``mamba``: the segmenter's Mamba mixer (the active backend, ``amdiff.models.mamba_backend``)
   on the device against the CPU with the same weights, and mamba_ssm against mambapy on the
   device when mamba_ssm imports.
3. ``train step``: AMDiff at the paper's size (config/paper.yaml ``models``, 128^3 patches,
   batch 1): f_den and f_seg forward and backward with a proxy loss, seconds per step and peak
   memory. With 800 epochs of ``patches_per_epoch`` patches this gives a projected training time.
4. ``inference``: f_den on ``sw_batch_size`` windows of 128^3, fp32 and bf16 autocast, each
   contiguous and channels_last (``inference.memory_format``), seconds per window; projected
   time of a 440 x 440 x 620 volume for the paper's setting (DDPM, 250 steps, overlap 0.75) and
   for two fast settings (DDIM, 10 steps, overlap 0.25; the mean of 4 DDIM-5 draws at overlap 0,
   benchmarks/fast_path.py), from the window counts of MONAI's sliding window, with the fastest
   of the four. A projection, labelled so.
5. ``recon``: ``benchmarks/recon_time.py --device <device> --paper-count-scale 0.25`` (demo and
   paper-size simulation and reconstruction, a quarter of the clinical counts to keep the
   CPU-bound list writing short), as a subprocess with a time limit.
6. ``list-mode``: the list-mode projector of any PETSIRD scanner (amdiff.physics.lines) with TOF
   on a paper-size ring (220 x 220 x 110 voxels) on the device against the CPU on 20,000
   events, and its events/s forward and back with TOF on 1 M events on the device.

``--small`` shrinks every size (demo networks, 32^3 windows, a small grid) and skips the
reconstruction, so the script's code runs on a CPU in a test; its numbers then mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
PAPER_VOLUME = (440, 440, 620)         # the paper's whole-body volume (Sec. 4, inference time)
# label: (sampler, steps, overlap, samples); samples > 1 is the mean of that many draws
SETTINGS = {"paper": ("ddpm", 250, 0.75, 1), "fast": ("ddim", 10, 0.25, 1),
            "fast, mean of 4": ("ddim", 5, 0.0, 4)}


def windows_per_pass(volume, patch, overlap: float) -> int:
    """Windows of MONAI's sliding_window_inference over ``volume``: per axis
    ceil((V - P) / stride) + 1 with stride = max(1, int(P * (1 - overlap)))."""
    count = 1
    for v, p in zip(volume, patch):
        stride = max(1, int(p * (1.0 - overlap)))
        count *= 1 if v <= p else math.ceil((v - p) / stride) + 1
    return count


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> str:
    if device.type == "cuda":
        return f", peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    return ""


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _config(small: bool) -> dict:
    from amdiff.config import load_config

    return load_config(REPO / "config" / ("config.yaml" if small else "paper.yaml"))


def check_projector(device: torch.device, small: bool) -> str:
    from amdiff.config import load_config
    from amdiff.physics.projector import RayProjector
    from amdiff.physics.scanner import CylindricalScanner

    site = load_config(REPO / "config" / "config.yaml")["sites"]["mct"]
    scanner = CylindricalScanner.from_config(site["scanner"])
    shape, vox = site["image"]["shape"], site["image"]["voxel_size_mm"]
    if small:
        shape = [shape[0], shape[1], min(shape[2], 16)]
    image = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    def project(dev):
        projector = RayProjector(scanner, shape, vox, device=dev)
        lors = torch.arange(0, scanner.n_lors, max(1, scanner.n_lors // 20000), device=dev)
        line = projector.forward(image.to(dev), lors)
        return line, projector.back(torch.ones_like(line), lors)
    n, rel = _agreement(project, device)
    return f"{n:,} LORs, forward and back agree to {rel:.1e} (relative)"


def _agreement(project, device: torch.device) -> tuple[int, float]:
    """(lines, largest relative difference) of ``project(dev)`` -> (forward, back) on the
    device against the CPU; AssertionError beyond 1e-4."""
    results = {}
    for dev in (torch.device("cpu"), device):
        line, back = project(dev)
        _sync(dev)
        results[dev.type] = (line.cpu().double(), back.cpu().double())
    (f_cpu, b_cpu), (f_dev, b_dev) = results["cpu"], results[device.type]
    rel = max(float((f_dev - f_cpu).abs().max() / f_cpu.abs().max()),
              float((b_dev - b_cpu).abs().max() / b_cpu.abs().max()))
    if rel > 1e-4:
        raise AssertionError(f"{device.type} differs from cpu by {rel:.2e} (relative)")
    return len(f_cpu), rel


def check_listmode(device: torch.device, small: bool) -> str:
    from listmode_projector import PAPER_RING      # benchmarks/, this script's folder
    from amdiff.listmode.geometry import DetectorGeometry
    from amdiff.listmode.header import make_header
    from amdiff.physics.lines import LineProjector

    shape, vox = ([32, 32, 16], [13.2, 13.2, 8.0]) if small else ([220, 220, 110], [3.3, 3.3, 2.0])
    header = make_header(PAPER_RING, subject_id="check", weight_kg=75.0, height_m=1.75,
                         injected_mbq=250.0, calibration_factor=1.0)
    points = DetectorGeometry.from_header(header).types[0].points
    rng = np.random.default_rng(0)
    edges = np.arange(-390.0, 391.0, 60.0)

    def events(n):
        bins = rng.integers(0, len(points), (n, 2))
        return points[bins[:, 0]], points[bins[:, 1]], (edges, 70.0, rng.integers(0, len(edges) - 1, n))
    image = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    start, end, tof = events(2000 if small else 20000)
    def project(dev):
        projector = LineProjector(shape, vox, device=dev)
        line = projector.forward(image.to(dev), start, end, tof)
        return line, projector.back(torch.ones_like(line), start, end, tof)
    _, rel = _agreement(project, device)
    n = 20_000 if small else 1_000_000
    start, end, tof = events(n)
    projector = LineProjector(shape, vox, device=device)
    mu_per_mm = torch.full(tuple(shape), 0.0096, device=device)
    speed = []
    for op in ("forward", "back", "sensitivity"):
        _sync(device)
        t0 = time.perf_counter()
        if op == "forward":
            projector.forward(image.to(device), start, end, tof)
        elif op == "back":
            projector.back(torch.ones(n, device=device), start, end, tof)
        else:
            projector.back_attenuated(torch.ones(n, device=device), start, end, mu_per_mm, tof)
        _sync(device)
        speed.append(n / (time.perf_counter() - t0))
    n_lines = len(points) * (len(points) - 1) // 2
    return (f"TOF, device agrees with cpu to {rel:.1e}; {speed[0] / 1e6:.2f} M events/s forward, "
            f"{speed[1] / 1e6:.2f} M back, {speed[2] / 1e6:.2f} M sensitivity lines/s, so "
            f"{n_lines / speed[2] / 60:.1f} min for the ring's whole sensitivity image "
            f"({n:,} events, {'x'.join(map(str, shape))} voxels)")


def check_mamba(device: torch.device, small: bool) -> str:
    from amdiff.models import mamba_backend as mb

    d_model = 16 if small else 128
    tokens = torch.randn(2, 512 if small else 4096, d_model, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    reference = mb.MambapyMixer(d_model).eval()
    with torch.no_grad():
        for p in reference.parameters():                  # weights that can break agreement
            p.add_(0.05 * torch.randn_like(p))
        on_cpu = reference(tokens)
        on_dev = copy.deepcopy(reference).to(device)(tokens.to(device)).cpu()
    diff = float((on_dev - on_cpu).abs().max() / on_cpu.abs().max())
    if diff > 1e-3:
        raise AssertionError(f"mambapy on {device.type} differs from cpu by {diff:.2e}")
    out = f"mambapy {device.type} vs cpu {diff:.1e}; active backend {mb.backend_name()}"
    if device.type == "cuda" and mb.backend_name() == "mamba_ssm":
        fused = mb.make_mamba(d_model).to(device).eval()
        fused.load_state_dict(reference.state_dict(), strict=True)
        with torch.no_grad():
            kernel = fused(tokens.to(device)).cpu()
        gap = float((kernel - on_cpu).abs().max() / on_cpu.abs().max())
        out += f"; mamba_ssm vs mambapy {gap:.1e}"
        if gap > 1e-2:
            raise AssertionError(out)
    return out


def check_train_step(device: torch.device, small: bool) -> str:
    from amdiff.models.amdiff import build_model

    config = _config(small)
    patch = config["training"]["patch_size"]
    model = build_model("amdiff", config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(1, 1, *patch, device=device)
    lc = torch.rand(1, 1, *patch, device=device)
    t = torch.randint(0, config["diffusion"]["timesteps"], (1,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        noise = model.denoiser(x, lc, t)
        seg = model.segment(torch.relu(noise), lc)
        loss = noise.pow(2).mean() + sum(v.float().pow(2).mean() for v in seg.values())
        loss.backward()
        optimizer.step()

    step()                                   # warm-up (allocations, cuDNN autotune)
    _sync(device)
    _reset_peak(device)
    runs = 1 if small else 3
    start = time.perf_counter()
    for _ in range(runs):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / runs
    epochs, per_epoch = config["training"]["epochs"], config["training"]["patches_per_epoch"]
    hours = seconds * epochs * per_epoch / config["training"]["batch_size"] / 3600
    return (f"{seconds:.2f} s per step of {tuple(patch)}{_peak_mib(device)}; "
            f"{epochs} epochs x {per_epoch} patches -> {hours:.1f} h (projection)")


def check_inference(device: torch.device, small: bool) -> str:
    from amdiff.models.amdiff import build_model

    config = _config(small)
    patch = config["inference"]["patch_size"]
    batch = int(config["inference"]["sw_batch_size"])
    model = build_model("amdiff", config).to(device).eval()
    x = torch.randn(batch, 1, *patch, device=device)
    lc = torch.rand(batch, 1, *patch, device=device)
    t = torch.full((batch,), 10, device=device, dtype=torch.long)
    per_window = {}
    dtypes = [("fp32", None)] + ([("bf16", torch.bfloat16)] if device.type == "cuda" else [])
    layouts = (("", torch.contiguous_format), (" channels_last", torch.channels_last_3d))
    for (name, dtype), (layout_name, layout) in itertools.product(dtypes, layouts):
        model.to(memory_format=layout)         # as inference.memory_format does
        xs, lcs = x.contiguous(memory_format=layout), lc.contiguous(memory_format=layout)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model.denoiser(xs, lcs, t)         # warm-up
            _sync(device)
            _reset_peak(device)
            start = time.perf_counter()
            model.denoiser(xs, lcs, t)
            _sync(device)
        per_window[name + layout_name] = (time.perf_counter() - start) / batch
    best = min(per_window, key=per_window.get)
    parts = [f"{name} {s * 1e3:.0f} ms/window" for name, s in per_window.items()]
    for label, (sampler, steps, overlap, samples) in SETTINGS.items():
        n = windows_per_pass(PAPER_VOLUME, patch, overlap)
        minutes = n * steps * samples * per_window[best] / 60
        parts.append(f"{label} ({sampler} {steps}, overlap {overlap}, {samples} sample(s)): {n} windows "
                     f"x {steps} x {samples} -> {minutes:.1f} min per {PAPER_VOLUME} volume ({best}, "
                     f"projection)")
    return "; ".join(parts) + _peak_mib(device)


def check_recon(device: torch.device, small: bool, timeout_s: int) -> str:
    if small:
        return "skipped (--small)"
    command = [sys.executable, str(REPO / "benchmarks" / "recon_time.py"), "--device", str(device),
               "--paper-count-scale", "0.25"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    if run.returncode != 0:
        raise AssertionError(f"recon_time.py exited {run.returncode}: {run.stderr.strip()[-300:]}")
    lines = [line.strip() for line in run.stdout.splitlines() if line.strip()]
    return " | ".join(lines[-5:])


CHECKS = (("projector", check_projector), ("mamba", check_mamba), ("train step", check_train_step),
          ("inference", check_inference), ("recon", check_recon), ("list-mode", check_listmode))


def run_checks(device: torch.device, small: bool, recon_timeout_s: int) -> list[tuple[str, str, str, float]]:
    """(check, status, result, seconds) of every check; a failing check does not stop the rest."""
    rows = []
    for name, check in CHECKS:
        start = time.perf_counter()
        try:
            args = (device, small, recon_timeout_s) if check is check_recon else (device, small)
            result = check(*args)
            status = "skip" if result.startswith("skipped") else "ok"
        except Exception as exc:   # report and go on: one table of everything
            status, result = "FAIL", f"{type(exc).__name__}: {exc}"
        rows.append((name, status, result, time.perf_counter() - start))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes, no reconstruction (a smoke run)")
    parser.add_argument("--recon-timeout", type=int, default=300, help="seconds for recon_time.py")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; sizes: {'small' if args.small else 'paper'}")
    rows = run_checks(device, args.small, args.recon_timeout)
    print("| check | status | seconds | result |\n|---|---|---|---|")
    for check, status, result, seconds in rows:
        print(f"| {check} | {status} | {seconds:.1f} | {result} |")
    return 1 if any(status == "FAIL" for _, status, _, _ in rows) else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
