"""Learning curve on the validation images: what a model reaches after how many gradient steps.

    python benchmarks/learning_curve.py --config results_study/.effective_config.yaml \\
        --manifest results_study/manifest_mct.tsv --site mct \\
        --checkpoints runs/med_ddpm/epoch_*.pt runs/amdiff/epoch_*.pt --out-dir reports/study/learning_curve

Each checkpoint (written by `amdiff train` with ``training.checkpoint_every_epochs``, or any
best.pt / last.pt) predicts every low-count image of the site's validation subjects as
inference does (``inference`` section of --config: sampler, steps, windows; the sampler's seed
is fixed per image), and is scored like Tables 2 and 3: the whole-image NRMSE under the config's
``evaluation.nrmse_whole`` reading, and, for models that segment, the lesion Dice and the liver
and lung Dice. The two reference rows that need no training are scored on the same images: the
low-count input itself and the Gaussian filter whose FWHM (from ``evaluation.gaussian_filter``'s
grid) is best on these images, i.e. the optimistic Gaussian.

Prints one row per checkpoint and image level, and writes learning_curve.tsv,
learning_curve.png (NRMSE and Dice against gradient steps, the references as lines) and
provenance.json (command, commit, machine, packages, and per checkpoint its model, epoch, steps
and the hash and training section of the config it was trained with) to --out-dir.
Gradient steps = epochs done x patches_per_epoch / batch_size, from the config each checkpoint
records. Validation images are the ones model selection uses, not the test set.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from amdiff.config import derived_seed, load_config
from amdiff.evaluate.gaussian import DEFAULT_FWHM_GRID_MM, gaussian_filter, validation_images
from amdiff.evaluate.metrics import NRMSE_WHOLE_DEFAULT, dice, whole_image_nrmse
from amdiff.infer.predict import predict_volume
from amdiff.io.atomic import atomic_path, write_text
from amdiff.labels.totalseg import ORGAN_CLASSES
from amdiff.provenance import config_sha256, git_state, machine, package_versions
from amdiff.train.checkpoint import model_of_checkpoint
from amdiff.train.checkpoint import load_checkpoint, load_weights

ORGANS_SCORED = ("liver", "lung")


def level_of(image_name: str) -> str:
    """'p005_r0' -> 'p005'."""
    return re.sub(r"_r\d+$", "", image_name)


def steps_of(state: dict) -> int:
    training = state["config"]["training"]
    return int(state["epoch"] + 1) * int(training["patches_per_epoch"]) // int(training["batch_size"])


def score(prediction, lc, hc, body, reading, lesion_true, organs_true) -> dict:
    row = {"nrmse_whole": whole_image_nrmse(prediction.denoised, hc.data, body, reading)}
    if prediction.lesion is not None:
        row["dice_lesion"] = dice(prediction.lesion > 0, lesion_true > 0)
        for organ in ORGANS_SCORED:
            k = next(label for label, name in ORGAN_CLASSES.items() if name == organ)
            row[f"dice_{organ}"] = dice(prediction.organs == k, organs_true == k)
    return row


def references(images, reading, grid) -> pd.DataFrame:
    """NRMSE of the low-count input and of the best Gaussian (on these images) per level."""
    rows = []
    for subject, name, lc, hc, body, _, _ in images:
        rows.append({"subject": subject, "level": level_of(name), "model": "lowcount_input",
                     "nrmse_whole": whole_image_nrmse(lc.data, hc.data, body, reading)})
        vox = lc.voxel_size_mm
        for fwhm in grid:
            rows.append({"subject": subject, "level": level_of(name), "model": f"gaussian_{fwhm:g}mm",
                         "nrmse_whole": whole_image_nrmse(gaussian_filter(lc.data, fwhm, vox), hc.data, body,
                                                          reading)})
    df = pd.DataFrame(rows)
    gauss = df[df.model.str.startswith("gaussian_")]
    best = gauss.groupby("model").nrmse_whole.mean().idxmin()
    out = df[(df.model == "lowcount_input") | (df.model == best)].copy()
    out["model"] = out.model.replace(best, f"gaussian_filter ({best.split('_')[1]}, best on these images)")
    return out


def load_images(manifest, site, reading):
    """Validation images with their lesion and organ labels (the manifest's)."""
    from amdiff.io.manifest import read_manifest
    from amdiff.io.nifti import read_volume

    rows = read_manifest(manifest, data_roots=[str(Path(manifest).absolute().parent)])
    labels = {r["subject"]: (r["lesion"], r["organs"]) for r in rows.to_dict("records")}
    images = []
    for subject, name, lc, hc, body in validation_images(manifest, site, reading):
        lesion = read_volume(labels[subject][0], "labels").data
        organs = read_volume(labels[subject][1], "labels").data
        images.append((subject, name, lc, hc, body, lesion, organs))
    return images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="config with the inference and evaluation sections")
    parser.add_argument("--manifest", required=True, help="training manifest (its val subjects are scored)")
    parser.add_argument("--site", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True, type=Path)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    evaluation = config.get("evaluation") or {}
    reading = evaluation.get("nrmse_whole", NRMSE_WHOLE_DEFAULT)
    grid = (evaluation.get("gaussian_filter") or {}).get("fwhm_mm_grid") or DEFAULT_FWHM_GRID_MM
    images = load_images(args.manifest, args.site, reading)
    rows, trained = [], []
    refs = references(images, reading, grid)
    for checkpoint in args.checkpoints:
        state = load_checkpoint(checkpoint)
        trained.append({"checkpoint": str(checkpoint), "model": state.get("model_name", state.get("variant")),
                        "epoch": int(state["epoch"]) + 1, "gradient_steps": steps_of(state),
                        "config_sha256": config_sha256(state["config"]), "training": state["config"]["training"]})
        model, variant = model_of_checkpoint(state, checkpoint)
        load_weights(model, state["model"], checkpoint, network=variant)
        for subject, name, lc, hc, body, lesion, organs in images:
            seed = derived_seed(config["seed"], "predict", subject, level_of(name))
            prediction = predict_volume(model, lc.data, config["inference"], seed)
            row = {"checkpoint": str(checkpoint), "model": state.get("model_name", variant),
                   "epoch": int(state["epoch"]) + 1, "gradient_steps": steps_of(state), "subject": subject,
                   "level": level_of(name), **score(prediction, lc, hc, body, reading, lesion, organs)}
            rows.append(row)
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if k != "checkpoint"), flush=True)
    curve = pd.DataFrame(rows)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.concat([curve, refs.assign(gradient_steps=0, epoch=0, checkpoint="")], ignore_index=True)
    write_text(args.out_dir / "learning_curve.tsv", table.to_csv(sep="\t", index=False, float_format="%.5f"))
    plot(curve, refs, args.out_dir / "learning_curve.png", reading)
    record = {"command": ["python", "benchmarks/learning_curve.py", *(argv or sys.argv[1:])],
              "git": git_state(Path(__file__).resolve().parents[1]), "evaluation_config": str(args.config),
              "evaluation_config_sha256": config_sha256(config), "machine": machine(),
              "packages": package_versions(), "checkpoints": trained}
    write_text(args.out_dir / "provenance.json", json.dumps(record, indent=2, default=str) + "\n")
    print(refs.groupby(["model", "level"]).nrmse_whole.mean().round(4).to_string())
    return 0


def plot(curve: pd.DataFrame, refs: pd.DataFrame, path: Path, reading: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(curve.level.unique())
    dice_cols = [c for c in curve.columns if c.startswith("dice_")]
    fig, axes = plt.subplots(1, len(levels) + bool(dice_cols), figsize=(4.5 * (len(levels) + 1), 3.6))
    axes = np.atleast_1d(axes)
    for ax, level in zip(axes, levels):
        mean = curve[curve.level == level].groupby(["model", "gradient_steps"]).nrmse_whole.mean()
        for model in mean.index.get_level_values(0).unique():
            ax.plot(mean[model].index, mean[model].values, marker="o", label=model)
        for (model, lv), value in refs.groupby(["model", "level"]).nrmse_whole.mean().items():
            if lv == level:
                ax.axhline(value, ls="--" if model == "lowcount_input" else ":", color="grey")
                ax.annotate(model.split(" ")[0], (ax.get_xlim()[0], value), fontsize=7, va="bottom")
        ax.set(title=f"{level}: whole-image NRMSE ({reading})", xlabel="gradient steps", ylabel="NRMSE")
        ax.legend(fontsize=7)
    if dice_cols:
        ax = axes[-1]
        seg = curve.dropna(subset=dice_cols).groupby(["model", "gradient_steps"])[dice_cols].mean()
        for model in seg.index.get_level_values(0).unique():
            for col in dice_cols:
                ax.plot(seg.loc[model].index, seg.loc[model][col], marker="o", label=f"{model} {col[5:]}")
        ax.set(title="validation Dice", xlabel="gradient steps", ylabel="Dice", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:   # no half-written figure after a kill
        fig.savefig(tmp, dpi=120, format="png")


if __name__ == "__main__":
    sys.exit(main())
