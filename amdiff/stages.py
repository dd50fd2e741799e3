"""Stage functions behind the CLI verbs: they wire the packages to files.

Each function takes the parsed CLI arguments, first refuses an output that is one of
its inputs, reads its inputs with the checking readers, and writes its outputs atomically.
Science lives in the packages; this module only decides file names and passes config values.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np

from amdiff.config import (derived_seed, fill_defaults, load_config, phantom_subjects, replicate_base,
                           site_acquisition)
from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path, refuse_overwriting_inputs, write_text
from amdiff.io.files import check_input_file
from amdiff.io.nifti import check_same_grid, check_units, read_volume, write_volume


def _write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _read_json(path) -> dict:
    path = Path(path)
    check_input_file(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _site(config: dict, site: str, source: str) -> dict:
    if site not in config["sites"]:
        raise InputError(source, f"site {site!r} is not configured (sites: {', '.join(config['sites'])})")
    return config["sites"][site]


def check_config(args) -> None:
    config = load_config(args.config)
    print(f"{args.config}: valid ({len(config['sites'])} sites)")


PHANTOM_FILES = ("truth_suv.nii.gz", "ct.nii.gz", "mumap.nii.gz", "organs_truth.nii.gz",
                 "lesion.nii.gz", "phantom.json")


def phantom(args) -> None:
    from amdiff.phantom import generate_subject

    out = Path(args.outdir)
    refuse_overwriting_inputs([args.config], [out / name for name in PHANTOM_FILES])
    config = load_config(args.config)
    site = _site(config, args.site, args.config)
    seed = derived_seed(config["seed"], "phantom", args.site, args.subject)
    subj = generate_subject(site["image"]["shape"], site["image"]["voxel_size_mm"], seed,
                            config["phantom"])
    write_volume(out / "truth_suv.nii.gz", subj.suv, subj.affine)
    write_volume(out / "ct.nii.gz", subj.ct, subj.affine)
    write_volume(out / "mumap.nii.gz", subj.mu, subj.affine)
    write_volume(out / "organs_truth.nii.gz", subj.organs, subj.affine, dtype=np.uint8)
    write_volume(out / "lesion.nii.gz", subj.lesions, subj.affine, dtype=np.uint8)
    _write_json(out / "phantom.json", {
        "site": args.site, "subject": args.subject, "seed": seed,
        "weight_kg": subj.weight_kg, "height_cm": subj.height_cm, "sex": subj.sex,
        "lesions": subj.lesion_table,
    })


def simulate(args) -> None:
    from amdiff.listmode.simulate import simulate_listmode

    refuse_overwriting_inputs([args.config, args.suv, args.mumap], [args.out, args.summary])
    config = load_config(args.config)
    site = _site(config, args.site, args.config)
    suv = read_volume(args.suv, "suv")
    mu = read_volume(args.mumap, "mumap")
    check_same_grid(suv, mu)
    split = _subject_split(config, args)
    acq = site_acquisition(site, split)
    seed = derived_seed(config["seed"], "acquisition", args.site, args.subject)
    rng = np.random.default_rng(seed)
    mean, sd = acq.pop("dose_mbq")
    # Doses vary between subjects like Table 1 (mean +- sd), never below half the mean.
    acq["dose_mbq"] = float(max(rng.normal(mean, sd), 0.5 * mean))
    result = simulate_listmode(args.out, suv.data, mu.data, suv.affine, _scanner(site), acq,
                               subject_id=args.subject, weight_kg=args.weight_kg,
                               height_m=args.height_m, seed=seed)
    _write_json(args.summary, {"site": args.site, "subject": args.subject, "split": split,
                               "seed": seed, "dose_mbq": acq["dose_mbq"],
                               "weight_kg": args.weight_kg, **result})


def _subject_split(config: dict, args) -> str | None:
    """The split whose acquisition a simulated subject gets: --split, else the synthetic
    cohort's split of the subject. Unknown (own data without --split) is an error only
    where it matters, i.e. when the site's acquisition differs by split."""
    if args.split:
        return args.split
    synthetic = phantom_subjects(config) if config["cohort"]["source"] == "phantom" else []
    found = [s["split"] for s in synthetic if (s["site"], s["subject"]) == (args.site, args.subject)]
    if found:
        return found[0]
    if config["sites"][args.site].get("acquisition_by_split"):
        raise InputError(args.config, f"sites.{args.site}.acquisition_by_split: the split of subject "
                                      f"{args.subject!r} is unknown; pass --split")
    return None


def _scanner(site_cfg: dict):
    from amdiff.physics.scanner import CylindricalScanner

    return CylindricalScanner.from_config(site_cfg["scanner"])


def downsample(args) -> None:
    from amdiff.listmode.downsample import downsample as run
    from amdiff.levels import level_name

    outdir = Path(args.outdir)
    outputs = {p: [outdir / f"{level_name(p)}_r{r}.petsird" for r in range(args.realizations)]
               for p in args.levels}
    refuse_overwriting_inputs([args.input], [*(path for paths in outputs.values() for path in paths),
                                             args.counts])
    written = {str(path): n for path, n in run(args.input, outputs, seed=args.seed).items()}
    if args.counts:
        events = {level_name(p): [written[str(path)] for path in paths] for p, paths in outputs.items()}
        _write_json(args.counts, {"input": str(args.input), "seed": args.seed, "events": events})


def recon(args) -> None:
    from amdiff.recon.osem import reconstruct_listmode

    refuse_overwriting_inputs([args.config, args.listmode, args.mumap], [args.out])
    config = load_config(args.config)
    site = _site(config, args.site, args.config)
    mu = read_volume(args.mumap, "mumap")
    recon_cfg = dict(site["recon"])
    if recon_cfg.pop("engine", "internal") == "external":
        from amdiff.listmode.header import acquisition_from_header
        from amdiff.listmode.petsird_io import read_header
        from amdiff.recon.external import reconstruct_external

        check_input_file(args.listmode)
        acquisition = acquisition_from_header(read_header(args.listmode), source=args.listmode)
        reconstruct_external(recon_cfg["command"], args.listmode, args.mumap, args.out, recon_cfg,
                             count_fraction=args.count_percent / 100.0, acquisition=acquisition,
                             source=f"{args.config}: sites.{args.site}")
        return
    recon_cfg.pop("command", None)
    device = args.device or recon_cfg.pop("device", "cpu")
    recon_cfg.pop("device", None)
    # The flat randoms+scatter model is known from the acquisition settings (the PETSIRD
    # header has no field for it), exactly as the simulation used it.
    reconstruct_listmode(args.listmode, mu.data, mu.affine, recon_cfg, args.out,
                         count_fraction=args.count_percent / 100.0, device=device,
                         background_fraction=site["acquisition"]["background_fraction"],
                         scanner=_scanner(site),
                         scanner_source=f"sites.{args.site}.scanner of {args.config}")


def mumap(args) -> None:
    from amdiff.phantom import hu_to_mu_511

    refuse_overwriting_inputs([args.ct], [args.out])
    ct = read_volume(args.ct, "ct")
    check_units(ct, "ct")   # HU + 1024 without its rescale would give air the mu of water
    write_volume(args.out, hu_to_mu_511(ct.data), ct.affine)


def labels(args) -> None:
    refuse_overwriting_inputs([args.ct, args.source], [args.out])
    ct = read_volume(args.ct, "ct")
    if args.method == "totalsegmentator":
        from amdiff.labels.totalseg import label_ct

        label_ct(args.ct, args.out, fast=args.fast, device=args.device)
        return
    if not args.source:
        raise InputError("--source", f"labels --method {args.method} needs it (the "
                                     f"{'truth' if args.method == 'phantom' else 'provided'} label map)")
    if args.method == "provided":
        from amdiff.io.nifti import load_provided_labels

        organs = load_provided_labels(args.source, ct)
    else:
        vol = read_volume(args.source, "labels")
        check_same_grid(ct, vol)
        organs = vol.data
    write_volume(args.out, organs, ct.affine, dtype=np.uint8)


def qc(args) -> None:
    from amdiff.qc.figures import qc_figure

    lc = _pairs_or_fail(args.lc)
    refuse_overwriting_inputs([args.hc, *lc.values(), args.lesion, args.organs], [args.out])
    qc_figure(args.hc, lc, args.lesion, args.organs, args.out, args.title)


def _pairs_or_fail(items) -> dict:
    """NAME=PATH arguments; a malformed one is bad input (one line), not a traceback."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError("command line", f"expected NAME=PATH, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def subject_stats(args) -> None:
    from amdiff.qc.summary import lesion_stats_from_masks

    refuse_overwriting_inputs([args.hc, args.lesion, args.acquisition, args.counts], [args.out])
    stats = {"site": args.site, "subject": args.subject, "split": args.split,
             "lesions": lesion_stats_from_masks(args.hc, args.lesion)}
    if args.acquisition:
        acq = _read_json(args.acquisition)
        stats.update(events=acq.get("events"), dose_mbq=acq.get("dose_mbq"))
    if args.counts:
        stats["events_per_level"] = _read_json(args.counts)["events"]
    _write_json(args.out, stats)


def summary(args) -> None:
    from amdiff.qc.summary import cohort_summary, write_cohort_summary

    refuse_overwriting_inputs(args.stats, [args.out_tsv, args.out_md])
    rows = [_read_json(p) for p in args.stats]
    write_cohort_summary(cohort_summary(rows), args.out_tsv, args.out_md)


def manifest(args) -> None:
    """The manifest of the prepared cohort: the same format users write for their own data.

    Paths are relative to the manifest's folder, so the results folder can be moved.
    """
    import os

    import pandas as pd

    from amdiff.io.manifest import format_lc_pet, lc_pet_images, validate_subject_images, write_manifest
    from amdiff.levels import level_name

    refuse_overwriting_inputs([args.config], [args.out])
    config = load_config(args.config)
    own = config["cohort"]["source"] == "manifest"
    if own:   # the user's own manifest is an input too
        refuse_overwriting_inputs([config["cohort"]["manifest"]], [args.out])
    root = Path(config["results_dir"]).resolve()
    out_dir = Path(args.out).resolve().parent
    rel = lambda p: os.path.relpath(p, out_dir)
    subjects = _manifest_subjects(config) if own else phantom_subjects(config)
    splits = set(args.splits.split(",")) if args.splits else None
    subjects = [s for s in subjects if (args.site is None or s["site"] == args.site)
                and (splits is None or s["split"] in splits)]
    rows = []
    for s in subjects:
        d = root / s["site"] / s["subject"]
        if own and s.get("lc_pet"):
            names = sorted(n if "_r" in n else f"{n}_r0" for n in lc_pet_images(s["lc_pet"]))
        else:
            site = config["sites"][s["site"]]
            names = [f"{level_name(p)}_r{r}" for p in site["count_levels"].get(s["split"], [])
                     for r in range(site["realizations"])]
        rows.append({"subject": s["subject"], "site": s["site"], "split": s["split"],
                     "hc_pet": rel(d / "hc.nii.gz"), "ct": rel(d / "ct.nii.gz"),
                     "lesion": rel(d / "lesion.nii.gz"), "organs": rel(d / "organs.nii.gz"),
                     "lc_pet": format_lc_pet({n: rel(d / f"lc_{n}.nii.gz") for n in names})})
    df = pd.DataFrame(rows)
    if args.validate:
        for rec in rows:
            # normpath: "out/../results/x" must not depend on the output folder existing yet
            absolute = {k: os.path.normpath(out_dir / v) for k, v in rec.items()
                        if k in ("hc_pet", "ct", "lesion", "organs")}
            absolute["lc_pet"] = format_lc_pet({n: os.path.normpath(out_dir / p)
                                                for n, p in lc_pet_images(rec["lc_pet"]).items()})
            validate_subject_images(absolute)
    write_manifest(df, args.out)


def _manifest_subjects(config: dict) -> list[dict]:
    from amdiff.io.manifest import read_manifest

    # sites: a row of an unconfigured site would otherwise fail later with a KeyError
    df = read_manifest(config["cohort"]["manifest"], config["cohort"].get("data_roots"),
                       config["cohort"]["allow_outside_data_roots"], sites=config["sites"])
    return df.to_dict("records")


def import_autopet(args) -> None:
    from amdiff.io.autopet import autopet_to_manifest

    refuse_overwriting_inputs([args.root], [args.out])
    autopet_to_manifest(args.root, args.out, site=args.site, seed=args.seed)


def import_image(args) -> None:
    """Import a user image after checking it (the input is never modified)."""
    refuse_overwriting_inputs([args.input, args.reference], [args.out])
    vol = read_volume(args.input, args.kind)
    if args.reference:
        check_same_grid(read_volume(args.reference, "image"), vol)
    check_units(vol, args.kind)   # e.g. Bq/mL given as SUV, a CT that lost its rescale
    if args.kind == "labels" and vol.data.max() > 1:
        raise InputError(args.input, f"lesion mask must be binary, found values up to {vol.data.max()}")
    with atomic_path(args.out) as tmp:
        shutil.copyfile(args.input, tmp)


def _threads(n) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def train(args) -> None:
    from amdiff.contracts import VARIANTS
    from amdiff.train.base import BEST_KEPT
    from amdiff.train.baselines import BaselineTrainer
    from amdiff.train.trainer import Trainer

    # the trainer writes (and on a changed config deletes) these files of --out-dir
    refuse_overwriting_inputs([args.config, args.manifest, args.denoiser_checkpoint],
                              [Path(args.out_dir) / name
                               for name in ("last.pt", "best.pt", BEST_KEPT, "log.csv")])
    config = load_config(args.config)
    _require_sections(config, args.config, ("models", "training", "diffusion"))
    from amdiff.models.baselines import NAMES as BASELINES
    from amdiff.train.base import device_of

    known = [*VARIANTS, *(b for b in BASELINES if b not in VARIANTS)]
    if replicate_base(args.variant) not in known:
        raise InputError("--variant", f"unknown model {args.variant!r} (known: {', '.join(known)}, "
                                      "or <model>_seedN)")
    # before the manifest's images are read: a missing GPU is known at once
    device_of(args.device or config["training"]["device"],
              "--device" if args.device else "training.device")
    _threads(args.threads or config["training"].get("threads"))
    if replicate_base(args.variant) in VARIANTS:   # AMDiff, its ablations, Med-DDPM, their seed replicates
        trainer = Trainer(config, args.variant, args.site, args.manifest, args.out_dir, device=args.device)
    else:
        trainer = BaselineTrainer(config, args.variant, args.site, args.manifest, args.out_dir,
                                  device=args.device, denoiser_checkpoint=args.denoiser_checkpoint)
    trainer.fit(max_epochs_this_run=args.max_epochs)


def predict(args) -> None:
    """Write denoised.nii.gz (SUV), lesion.nii.gz, organs.nii.gz (and uncertainty.nii.gz)."""
    from amdiff.infer.predict import predict_volume
    from amdiff.train.base import device_of
    from amdiff.train.checkpoint import load_checkpoint, load_weights

    out = Path(args.out_dir)
    refuse_overwriting_inputs([args.config, args.checkpoint, args.lc, args.denoised],
                              [out / f"{name}.nii.gz"
                               for name in ("denoised", "lesion", "organs", "uncertainty")])
    config = load_config(args.config)
    _require_sections(config, args.config, ("inference",))
    device = device_of(args.device or config["inference"]["device"],
                       "--device" if args.device else "inference.device")
    _threads(args.threads)
    state = load_checkpoint(args.checkpoint)
    _check_window(state, config, args.checkpoint)
    lc = read_volume(args.lc, "suv")
    # the network is rebuilt exactly as it was trained, from what the checkpoint records
    model, variant = model_of_checkpoint(state, args.checkpoint)
    load_weights(model, state["model"], args.checkpoint,   # a mismatch: one line naming the file
                 network=f"the {variant} network rebuilt from the settings it records")
    if state.get("kind") == "baseline":
        from amdiff.infer.predict import predict_baseline
        from amdiff.models.baselines import SEGMENTERS

        denoised = None
        if variant in SEGMENTERS:
            if not args.denoised:
                raise InputError(args.checkpoint, f"{variant} needs --denoised (the Med-DDPM output)")
            den = read_volume(args.denoised, "suv")
            check_same_grid(lc, den)
            denoised = den.data
        pred = predict_baseline(model.to(device), lc.data, config["inference"], denoised, device=device)
    else:
        seed = derived_seed(config["seed"], "predict", args.subject, args.level)
        pred = predict_volume(model.to(device), lc.data, config["inference"], seed, device=device, progress=True)
    if not (state.get("kind") == "baseline" and pred.lesion is not None):
        write_volume(out / "denoised.nii.gz", pred.denoised, lc.affine)
    if pred.lesion is not None:   # denoiser-only models (med_ddpm) write no masks
        write_volume(out / "lesion.nii.gz", pred.lesion, lc.affine, dtype=np.uint8)
        write_volume(out / "organs.nii.gz", pred.organs, lc.affine, dtype=np.uint8)
    if pred.uncertainty is not None:
        write_volume(out / "uncertainty.nii.gz", pred.uncertainty, lc.affine)


def model_of_checkpoint(state: dict, path):
    """(network, variant name) that a checkpoint's weights belong to, built from what it records:
    its ``kind``, ``variant`` and the ``config`` (AMDiff variants, Med-DDPM) or ``baseline_kwargs``
    (comparison models) it was trained with. A record that is missing or names no known model
    raises one-line InputError naming the checkpoint."""
    from amdiff.contracts import VARIANTS
    from amdiff.models.amdiff import build_model
    from amdiff.models.baselines import NAMES, get
    from amdiff.train.checkpoint import few

    kind, variant = state.get("kind", "amdiff"), state.get("variant")
    if kind not in ("amdiff", "baseline"):
        raise InputError(path, f"records the unknown kind {kind!r} (amdiff or baseline); not a checkpoint "
                               "of amdiff train")
    if not isinstance(variant, str) or not variant:
        raise InputError(path, "does not record its model ('variant'); not a checkpoint of amdiff train")
    known = NAMES if kind == "baseline" else tuple(VARIANTS)
    if variant not in known:
        raise InputError(path, f"records the unknown model {variant!r} (known {kind} models: {few(known, 8)})")
    if kind == "baseline":
        kwargs = state.get("baseline_kwargs")
        if not isinstance(kwargs, dict):
            raise InputError(path, f"does not record the settings of its {variant} network "
                                   "('baseline_kwargs')")
        build = lambda: get(variant).build(**kwargs)   # noqa: E731
    else:
        cfg = state.get("config")
        lacking = [k for k in ("models", "diffusion") if not isinstance((cfg or {}).get(k), dict)]
        if not isinstance(cfg, dict) or lacking:
            raise InputError(path, f"does not record the config its {variant} network was trained with "
                                   f"(lacks {', '.join(lacking) if isinstance(cfg, dict) else 'config'})")
        # a checkpoint written before a key had its schema default may lack it: fill it in, as
        # validation fills the config of a run
        cfg = fill_defaults(copy.deepcopy(cfg))
        build = lambda: build_model(variant, cfg)   # noqa: E731
    try:
        return build(), variant
    except (KeyError, TypeError, ValueError) as exc:
        detail = few([" ".join(str(exc).split())], width=160)
        raise InputError(path, f"its recorded settings do not build a {variant} network "
                               f"({type(exc).__name__}: {detail})") from None


def _check_window(state: dict, config: dict, checkpoint) -> None:
    """Inference windows must be the patches the model trained on (same normalisation statistics)."""
    trained = ((state.get("config") or {}).get("training") or {}).get("patch_size")
    window = config["inference"]["patch_size"]
    if trained is not None and list(trained) != list(window):
        raise InputError(checkpoint, f"trained on {list(trained)} patches, but inference.patch_size is "
                                     f"{list(window)}; set it to the training patch size")


def _require_sections(config: dict, source, sections) -> None:
    missing = [s for s in sections if s not in config]
    if missing:
        raise InputError(source, f"config lacks the section(s) {', '.join(missing)} needed here")


def _workflow_paper_config() -> Path:
    """config/paper.yaml of the workflow checkout this package runs from; an installed package
    has none, so the user names the config."""
    path = Path(__file__).resolve().parent.parent / "config" / "paper.yaml"
    if not path.is_file():
        raise InputError("--config", "no config/paper.yaml next to this installation of amdiff: "
                                     "name the config to count (--config config/paper.yaml)")
    return path


def params(args) -> None:
    """Print parameter counts at paper size: AMDiff's networks and variants, then the baselines."""
    import importlib

    from amdiff.contracts import COMPARISON_MODELS
    from amdiff.contracts import VARIANTS
    from amdiff.models.amdiff import build_model
    from amdiff.models.params import count_parameters

    config = load_config(args.config or _workflow_paper_config())
    _require_sections(config, args.config or "config/paper.yaml", ("models", "diffusion"))
    rows = []
    for variant in VARIANTS:
        model = build_model(variant, config)
        parts = {"denoiser": model.denoiser, "revision": model.revision, "segmenter": model.segmenter}
        detail = ", ".join(f"{k} {count_parameters(v) / 1e6:.2f} M" for k, v in parts.items() if v is not None)
        rows.append((variant, count_parameters(model), detail))
    for name in (n for n in COMPARISON_MODELS if n != "med_ddpm"):   # med_ddpm: the AMDiff module above
        try:
            module = importlib.import_module(f"amdiff.models.baselines.{name}")
        except ImportError as exc:
            rows.append((name, None, f"not available ({exc})"))
            continue
        source = module.publication.split(";")[0]
        rows.append((name, count_parameters(module.build(**module.PAPER)),
                     source if len(source) <= 90 else source[:87] + "..."))
    width = max(len(r[0]) for r in rows)
    for name, n, detail in rows:
        count = f"{n / 1e6:8.2f} M" if n is not None else "       -  "
        print(f"{name:<{width}}  {count}  {detail}")


# ---- evaluation -------------------------------------------------------------------------

def fit_gaussian(args) -> None:
    """Choose the Gaussian filter's FWHM on the site's validation images; write the fit JSON."""
    from amdiff.evaluate.gaussian import DEFAULT_FWHM_GRID_MM, fit

    refuse_overwriting_inputs([args.manifest], [args.out])
    record = fit(args.manifest, args.site, args.fwhm_grid or DEFAULT_FWHM_GRID_MM, args.nrmse_whole)
    for point in record["curve"]:
        print(f"FWHM {point['fwhm_mm']:g} mm: mean whole-image NRMSE {point['nrmse_whole']:.4f}")
    print(f"chosen FWHM {record['fwhm_mm']:g} mm ({record['n_images']} validation images, "
          f"{record['n_subjects']} subjects)")
    if record["at_grid_edge"]:
        print("warning: the largest FWHM of the grid won; extend evaluation.gaussian_filter.fwhm_mm_grid")
    _write_json(args.out, record)


def gaussian_filter(args) -> None:
    """denoised.nii.gz: the low-count image smoothed by the fitted (or given) FWHM."""
    from amdiff.evaluate.gaussian import gaussian_filter as smooth
    from amdiff.evaluate.gaussian import read_fit

    out = Path(args.out_dir) / "denoised.nii.gz"
    refuse_overwriting_inputs([args.lc, args.fit], [out])
    fwhm = read_fit(args.fit) if args.fit else args.fwhm_mm
    if fwhm < 0:
        raise InputError("--fwhm-mm", f"must not be negative, got {fwhm}")
    lc = read_volume(args.lc, "suv")
    write_volume(out, smooth(lc.data, fwhm, lc.voxel_size_mm), lc.affine)


def evaluate(args) -> None:
    """Metrics TSV of one model on one subject: a row per low-count test image."""
    from amdiff.evaluate.subject import evaluate_subject, read_references

    outputs = tuple(filter(None, args.outputs.split(",")))
    predictions, quant_images = _pairs_or_fail(args.prediction), _pairs_or_fail(args.quant_image)
    # a prediction folder's images are inputs too
    read = [Path(d) / f"{name}.nii.gz" for d in predictions.values() for name in outputs]
    refuse_overwriting_inputs([args.hc, args.lesion, args.organs, args.ct, *predictions.values(), *read,
                               *quant_images.values()], [args.out])
    refs = read_references(args.hc, args.lesion, args.organs, args.ct)
    df = evaluate_subject(args.model, args.site, args.subject, refs, predictions,
                          outputs, quant_images, args.standard_count_percent,
                          {"metric": args.lesion_match_metric, "threshold": args.lesion_match_threshold},
                          args.nrmse_whole)
    write_text(args.out, df.to_csv(sep="\t", index=False, float_format="%.6g"))


def collect_metrics(args) -> None:
    """One table of every model, site, subject and count level, in a stable order."""
    import pandas as pd

    from amdiff.evaluate.subject import read_metrics, validate_metrics

    # e.g. a glob of metrics tables that also matches the pooled table of an earlier run
    refuse_overwriting_inputs(args.inputs, [args.out])
    df = pd.concat([read_metrics(path) for path in args.inputs], ignore_index=True)
    df = validate_metrics(df, args.out)
    df = df.sort_values(["model", "site", "subject", "count_percent", "realization"], kind="stable")
    write_text(args.out, df.to_csv(sep="\t", index=False, float_format="%.6g"))


def training_budget(args) -> None:
    """Gradient steps and epochs of every trained model, from its log and the config."""
    from amdiff.evaluate.budget import training_budget as budget, write_budget

    logs = _pairs_or_fail(args.log)
    refuse_overwriting_inputs([args.config, *logs.values()], [args.out])
    config = load_config(args.config)
    _require_sections(config, args.config, ("training",))
    write_budget(budget(logs, config["training"]), args.out)


def study_checks(args) -> None:
    """Denoisers against the low-count input and the Gaussian filter; Dice against targets."""
    from amdiff.evaluate.checks import study_checks as checks, write_study_checks
    from amdiff.evaluate.subject import read_metrics

    _, banner = _budget_and_banner(args)
    write_study_checks(checks(read_metrics(args.metrics)), args.out_tsv, args.out_md, banner)


def seed_variance(args) -> None:
    """The seed-variance table of the models config ``seed_replicates`` names."""
    import pandas as pd

    from amdiff.config import seed_replicates
    from amdiff.evaluate.seeds import seed_variance as table, write_seed_variance
    from amdiff.evaluate.subject import read_metrics

    refuse_overwriting_inputs([args.config, *args.metrics], [args.out_tsv, args.out_md])
    config = load_config(args.config)
    replicates = seed_replicates(config)
    if len(replicates) < 2 or not all(replicates.values()):
        raise InputError(args.config, "seed_replicates: needs two models and a count of at least 2")
    df = pd.concat([read_metrics(path) for path in args.metrics], ignore_index=True)
    write_seed_variance(table(df, replicates), args.out_tsv, args.out_md)


def _budget_and_banner(args):
    """The run's training budget (--budget, optional) and, for a demo run (--run-kind), the
    smoke-test line its tables and figures carry (None otherwise)."""
    from amdiff.evaluate.budget import read_budget, run_banner

    budget = read_budget(args.budget) if args.budget else None
    return budget, run_banner(args.run_kind, budget)


def figure_regression(args) -> None:
    """Fig. 7 analog and its regression statistics."""
    from amdiff.evaluate.figures import regression_figure, regression_stats
    from amdiff.evaluate.subject import read_metrics

    refuse_overwriting_inputs([args.metrics, args.budget], [args.png, args.pdf, args.stats])
    metrics = read_metrics(args.metrics)
    regression_figure(metrics, args.models, png=args.png, pdf=args.pdf, banner=_budget_and_banner(args)[1])
    stats = regression_stats(metrics, args.models)
    write_text(args.stats, stats.to_csv(sep="\t", index=False, float_format="%.6g"))


def figure_slices(args) -> None:
    """Figs. 4-6 analogs for one site."""
    from amdiff.evaluate.figures import slice_figure_paths, write_slice_figures
    from amdiff.evaluate.subject import read_metrics

    figures = [path for pair in slice_figure_paths(args.out_dir, args.site).values() for path in pair]
    refuse_overwriting_inputs([args.metrics, args.budget, args.results], figures)
    write_slice_figures(args.results, read_metrics(args.metrics), args.site, args.models, args.out_dir,
                        banner=_budget_and_banner(args)[1])


def figure_training(args) -> None:
    from amdiff.evaluate.figures import training_curves

    logs = _pairs_or_fail(args.log)
    refuse_overwriting_inputs([*logs.values(), args.budget], [args.png, args.pdf])
    training_curves(logs, png=args.png, pdf=args.pdf, banner=_budget_and_banner(args)[1])


def provenance(args) -> None:
    """provenance.json: git commit, config hash, package versions, machine, wall time per stage."""
    from amdiff.config import read_config
    from amdiff.provenance import provenance as record
    from amdiff.provenance import write_provenance

    refuse_overwriting_inputs([args.config, args.benchmarks, args.source_dir], [args.out])
    # filled, so the hash is that of the settings, defaults written out or not (the workflow's
    # effective config is already valid and filled: the same hash)
    config = fill_defaults(read_config(args.config))
    write_provenance(record(config, args.benchmarks, args.source_dir), args.out)


def tables(args) -> None:
    """Tables 2-5, the headline numbers and the paper-versus-reproduction comparison."""
    from amdiff.evaluate.gaussian import read_fit, row_labels
    from amdiff.evaluate.paper import COHORT_NOTE, OUTPUT_FILES, write_paper_comparison
    from amdiff.evaluate.subject import read_metrics
    from amdiff.evaluate.tables import table_files, write_tables

    fits = _pairs_or_fail(args.gaussian_fit)
    refuse_overwriting_inputs([args.metrics, *fits.values(), args.budget],
                              [Path(args.out_dir) / name for name in (*table_files(), *OUTPUT_FILES)])
    metrics = read_metrics(args.metrics)
    # the Gaussian row's label names the FWHM that filtered each site's images
    fwhm = {site: read_fit(path) for site, path in fits.items()}
    budget, banner = _budget_and_banner(args)
    write_tables(metrics, args.out_dir, seed=args.seed, row_labels=row_labels(fwhm) if fwhm else None,
                 banner=banner, budget=budget)
    write_paper_comparison(metrics, args.out_dir, note=f"**{banner}**\n\n{COHORT_NOTE}" if banner else COHORT_NOTE)
