"""The train verb: AMDiff, an ablation, Med-DDPM or a comparison model on one site (resumes)."""

from __future__ import annotations

from pathlib import Path

from amdiff.commands.args import set_torch_threads, without_torchvision
from amdiff.errors import InputError
from amdiff.io.atomic import refuse_overwriting_inputs


def register(sub) -> None:
    p = sub.add_parser("train", help="train AMDiff, an ablation or a comparison model on one site "
                                     "(resumes from last.pt)")
    p.add_argument("--config", required=True)
    p.add_argument("--manifest", required=True, help="prepared-cohort manifest (results/manifest.tsv)")
    p.add_argument("--site", required=True)
    p.add_argument("--variant", default="amdiff")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the job, split over its data-parallel processes "
                        "(default: training.threads each)")
    p.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs (resume later)")
    p.add_argument("--denoiser-checkpoint", default=None,
                   help="trained Med-DDPM whose outputs feed a comparison segmenter")
    p.set_defaults(handler=train)


def relaunch_data_parallel(training: dict, argv: list[str]) -> None:
    """With training.gpus > 1, replace this process by torchrun running that many copies of this
    command (amdiff.train.parallel); exec, so a SIGTERM reaches torchrun, which stops them."""
    import os
    import sys

    from amdiff.train.parallel import check_sizes, launched_by_torchrun

    processes = int(training["gpus"])
    if processes > 1 and not launched_by_torchrun():
        check_sizes(training, processes)     # one line here rather than one per process
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc-per-node={processes}", "-m", "amdiff", *argv])


def train(args) -> None:
    without_torchvision()
    from amdiff.config import load_config, replicate_base, require_sections
    from amdiff.contracts import VARIANTS
    from amdiff.train.base import BEST_KEPT

    # the trainer writes (and on a changed config deletes) these files of --out-dir
    refuse_overwriting_inputs([args.config, args.manifest, args.denoiser_checkpoint],
                              [Path(args.out_dir) / name
                               for name in ("last.pt", "best.pt", BEST_KEPT, "log.csv")])
    config = load_config(args.config)
    require_sections(config, args.config, ("models", "training", "diffusion"))
    from amdiff.models.baselines import NAMES as BASELINES
    from amdiff.train.base import device_of
    from amdiff.train.baselines import BaselineTrainer
    from amdiff.train.trainer import Trainer

    known = [*VARIANTS, *(b for b in BASELINES if b not in VARIANTS)]
    if replicate_base(args.variant) not in known:
        raise InputError("--variant", f"unknown model {args.variant!r} (known: {', '.join(known)}, "
                                      "or <model>_seedN)")
    # before the manifest's images are read: a missing GPU is known at once
    device_of(args.device or config["training"]["device"],
              "--device" if args.device else "training.device")
    relaunch_data_parallel(config["training"], args.argv)
    from amdiff.train.parallel import DataParallel

    processes = DataParallel().world
    set_torch_threads(max(1, args.threads // processes) if args.threads else config["training"]["threads"])
    if replicate_base(args.variant) in VARIANTS:   # AMDiff, its ablations, Med-DDPM, their seed replicates
        trainer = Trainer(config, args.variant, args.site, args.manifest, args.out_dir, device=args.device)
    else:
        trainer = BaselineTrainer(config, args.variant, args.site, args.manifest, args.out_dir,
                                  device=args.device, denoiser_checkpoint=args.denoiser_checkpoint)
    trainer.fit(max_epochs_this_run=args.max_epochs)
