"""The predict verb: denoise and segment low-count images with a trained model."""

from __future__ import annotations

from pathlib import Path

from amdiff.commands.args import per_image, set_torch_threads, without_torchvision
from amdiff.errors import InputError
from amdiff.io.atomic import refuse_overwriting_inputs

OUTPUT_NAMES = ("denoised", "lesion", "organs", "uncertainty")


def register(sub) -> None:
    p = sub.add_parser("predict", help="denoise and segment low-count images with a trained model")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--lc", required=True, nargs="+",
                   help="low-count PET in SUV; several images (of one subject) share one model load")
    p.add_argument("--denoised", nargs="+", default=None,
                   help="Med-DDPM output of each --lc image (comparison segmenters' second input)")
    p.add_argument("--subject", required=True, help="case id; with the level it seeds the sampler")
    p.add_argument("--level", required=True, nargs="+", help="name pXXX_rN of each --lc image")
    p.add_argument("--out-dir", required=True, nargs="+", help="output folder of each --lc image")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(handler=predict)


def predict(args) -> None:
    """Write denoised.nii.gz (SUV), lesion.nii.gz, organs.nii.gz (and uncertainty.nii.gz) of
    each low-count image into its --out-dir."""
    without_torchvision()
    from amdiff.config import load_config, require_sections
    from amdiff.infer.predict import check_window
    from amdiff.io.files import check_input_file
    from amdiff.train.base import device_of
    from amdiff.train.checkpoint import load_checkpoint, load_weights, model_of_checkpoint

    images = [(lc, denoised, level, Path(out)) for lc, denoised, level, out
              in per_image(args.lc, denoised=args.denoised, level=args.level, out_dir=args.out_dir)]
    refuse_overwriting_inputs([args.config, args.checkpoint, *args.lc, *(args.denoised or [])],
                              [out / f"{name}.nii.gz" for *_, out in images for name in OUTPUT_NAMES])
    for lc, denoised, _, _ in images:   # a missing image stops the job before the first is written
        check_input_file(lc, "low-count image")
        if denoised is not None:
            check_input_file(denoised, "Med-DDPM image")
    config = load_config(args.config)
    require_sections(config, args.config, ("inference",))
    device = device_of(args.device or config["inference"]["device"],
                       "--device" if args.device else "inference.device")
    set_torch_threads(args.threads)
    state = load_checkpoint(args.checkpoint)
    check_window(state, config, args.checkpoint)
    # the network is rebuilt exactly as it was trained, from what the checkpoint records
    model, variant = model_of_checkpoint(state, args.checkpoint)
    load_weights(model, state["model"], args.checkpoint,   # a mismatch: one line naming the file
                 network=f"the {variant} network rebuilt from the settings it records")
    from amdiff.models.baselines import SEGMENTERS

    # the second input is checked before any image is read, so a refusal is the only output
    reads_denoised = state.get("kind") == "baseline" and variant in SEGMENTERS
    if args.denoised and not reads_denoised:   # a silently unused input would mislead
        raise InputError(args.denoised[0], f"--denoised is read only by the comparison segmenters "
                                           f"({', '.join(SEGMENTERS)}); {variant} does not take it")
    if reads_denoised and not args.denoised:
        raise InputError(args.checkpoint, f"{variant} needs --denoised (the Med-DDPM output)")
    model = model.to(device)
    for index, (lc, denoised, level, out) in enumerate(images, 1):
        if len(images) > 1:
            print(f"image {index}/{len(images)}: {lc} -> {out}", flush=True)
        _predict_image(model, state, config, device, args.subject, lc, denoised, level, out)


def _predict_image(model, state: dict, config: dict, device, subject: str, lc_path: str,
                   denoised_path: str | None, level: str, out: Path) -> None:
    """One low-count image through ``model``, its outputs written into ``out``."""
    import numpy as np

    from amdiff.config import derived_seed
    from amdiff.infer.predict import predict_volume, warn_voxel_size
    from amdiff.io.nifti import check_same_grid, read_volume, write_volume

    lc = read_volume(lc_path, "suv")
    warn_voxel_size(state, lc.voxel_size_mm, lc_path)
    if state.get("kind") == "baseline":
        from amdiff.infer.predict import predict_baseline

        denoised = None
        if denoised_path is not None:
            den = read_volume(denoised_path, "suv")
            check_same_grid(lc, den)
            denoised = den.data
        pred = predict_baseline(model, lc.data, config["inference"], denoised, device=device)
    else:
        seed = derived_seed(config["seed"], "predict", subject, level)
        pred = predict_volume(model, lc.data, config["inference"], seed, device=device, progress=True)
    if not (state.get("kind") == "baseline" and pred.lesion is not None):
        write_volume(out / "denoised.nii.gz", pred.denoised, lc.affine)
    if pred.lesion is not None:   # denoiser-only models (med_ddpm) write no masks
        write_volume(out / "lesion.nii.gz", pred.lesion, lc.affine, dtype=np.uint8)
        write_volume(out / "organs.nii.gz", pred.organs, lc.affine, dtype=np.uint8)
    if pred.uncertainty is not None:
        write_volume(out / "uncertainty.nii.gz", pred.uncertainty, lc.affine)
