"""How P_HC is formed in training: the earlier choice against the current default, same budget.

    python benchmarks/p_hc_training.py --manifest results/manifest_mct.tsv --epochs 24 --out-dir /tmp/p_hc

Trains AMDiff twice on one site's train/val split of a prepared cohort (the demo's
``results/manifest_mct.tsv``), identical except for the two P_HC settings:

  old  aux_max_t_fraction 1.0 (every t),  p_hc_clamp hard            (the earlier trainer)
  new  aux_max_t_fraction 0.5 (t < T/2),  p_hc_clamp straight_through (the default)

and prints, per run, the logged training curves of L_lor, L_rev and L_seg (epoch means over the
items that formed P_HC) and the validation scores, which are comparable across the two (each
validation patch sampled from noise with DDIM, then revised and segmented, as at inference).
The training means are not: the new run computes them only at t < T/2, where P_HC is better.
Everything else comes from ``--config`` (the demo config by default) with ``--epochs`` and a
warm-up of a sixth of the epochs. Both runs use the same seed, patches and noise.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import pandas as pd
import torch

from amdiff.config import load_config
from amdiff.train.trainer import Trainer

SETTINGS = {"old": {"aux_max_t_fraction": 1.0, "p_hc_clamp": "hard"},
            "new": {"aux_max_t_fraction": 0.5, "p_hc_clamp": "straight_through"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--manifest", default="results/manifest_mct.tsv")
    parser.add_argument("--site", default="mct")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--only", choices=sorted(SETTINGS), help="run one setting (e.g. one per core)")
    parser.add_argument("--out-dir", default="/tmp/p_hc_training")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_config(args.config)
    base["training"].update(epochs=args.epochs, warmup_epochs=max(1, args.epochs // 6))
    for name in [args.only] if args.only else SETTINGS:
        config = copy.deepcopy(base)
        config["training"].update(SETTINGS[name])
        out = Path(args.out_dir) / name
        t0 = time.perf_counter()
        Trainer(config, "amdiff", args.site, args.manifest, out).fit(progress=False)
        log = pd.read_csv(out / "log.csv")
        cols = ["epoch", "lambda_warm", "train_diff", "train_lor", "train_rev", "train_seg",
                "val_nrmse", "val_dice_lesion", "val_dice_organs", "val_score"]
        print(f"\n== {name}: {SETTINGS[name]} ({time.perf_counter() - t0:.0f} s)")
        print(log[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
