"""Evaluation verbs: the training-free rows (fit-gaussian, gaussian-filter), per-subject metrics
and their pooling, the tables, figures, budget, study checks and seed variance. None imports torch
(the evaluation environment has none)."""

from __future__ import annotations

import math
from pathlib import Path

from amdiff.commands.args import add_run_kind, fwhm_grid, pairs, per_image
from amdiff.errors import InputError
from amdiff.io.atomic import refuse_overwriting_inputs, write_text

# The readings of amdiff.evaluate.metrics.NRMSE_WHOLE_READINGS (not imported: keeps --help fast).
NRMSE_WHOLE = ("body_mean", "body_range", "image_range")


def register(sub) -> None:
    p = sub.add_parser("fit-gaussian", help="choose the Gaussian filter's FWHM (Table 2's training-free "
                                            "row) on a site's validation images")
    p.add_argument("--manifest", required=True, help="training manifest of the site (its val subjects)")
    p.add_argument("--site", required=True)
    p.add_argument("--fwhm-grid", type=fwhm_grid, default=None, metavar="MM,MM,...",
                   help="candidate FWHMs in mm, 0 = no filter (default 0,2,4,6,8,10,12)")
    p.add_argument("--nrmse-whole", choices=NRMSE_WHOLE,
                   default="body_mean", help="whole-image NRMSE reading of the criterion, as evaluate's")
    p.add_argument("--out", required=True, help="fit JSON: chosen FWHM, NRMSE against FWHM")
    p.set_defaults(handler=fit_gaussian)

    p = sub.add_parser("gaussian-filter", help="smooth a low-count image by a Gaussian (Table 2's "
                                               "training-free rows; FWHM 0 = the input itself)")
    p.add_argument("--lc", required=True, nargs="+", help="low-count PET in SUV (one or more images)")
    fwhm = p.add_mutually_exclusive_group(required=True)
    fwhm.add_argument("--fwhm-mm", type=float, help="FWHM in mm (0: write the input unchanged)")
    fwhm.add_argument("--fit", help="fit JSON of fit-gaussian, whose chosen FWHM is used")
    p.add_argument("--out-dir", required=True, nargs="+",
                   help="prediction folder of each --lc image: its denoised.nii.gz is written there")
    p.set_defaults(handler=gaussian_filter)

    p = sub.add_parser("evaluate", help="per-case metrics of one model on one subject's test images")
    p.add_argument("--model", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--hc", required=True, help="high-count reference PET in SUV")
    p.add_argument("--lesion", required=True, help="true lesion mask")
    p.add_argument("--organs", required=True, help="true organ label map")
    p.add_argument("--ct", default=None, help="CT in HU on the PET grid: its body mask is the "
                   "whole-image NRMSE's region (needed unless --nrmse-whole image_range)")
    p.add_argument("--nrmse-whole", choices=NRMSE_WHOLE,
                   default="body_mean", help="whole-image NRMSE: RMSE over the body / mean of the "
                   "reference there (default), / its range there, or over every voxel / its range")
    p.add_argument("--outputs", required=True, help="what the model predicts, e.g. denoised,lesion,organs")
    p.add_argument("--prediction", nargs="+", required=True, metavar="pXXX_rN=DIR",
                   help="prediction folder of each low-count image")
    p.add_argument("--quant-image", nargs="*", default=[], metavar="pXXX_rN=PATH",
                   help="image a mask-only model quantifies on (the Med-DDPM output it was fed)")
    p.add_argument("--standard-count-percent", type=float, default=100.0, metavar="PERCENT",
                   help="the site's standard clinical count in percent of the full list (default 100); "
                        "gives each row's clinical_percent")
    p.add_argument("--lesion-match-metric", choices=("iou", "dice"), default="iou",
                   help="overlap score that matches a predicted to a true lesion (default iou)")
    p.add_argument("--lesion-match-threshold", type=float, default=0.1,
                   help="a pair matches when its score is above this, in [0, 1) (default 0.1)")
    p.add_argument("--out", required=True, help="metrics TSV")
    p.set_defaults(handler=evaluate)

    p = sub.add_parser("collect-metrics", help="pool per-subject metric tables into one")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=collect_metrics)

    p = sub.add_parser("tables", help="Tables 2-4 analogs, headline numbers and paper-vs-reproduction")
    p.add_argument("--metrics", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--gaussian-fit", nargs="*", default=[], metavar="SITE=JSON",
                   help="fit-gaussian JSON whose FWHM filtered each test site's images (row label)")
    add_run_kind(p)
    p.set_defaults(handler=tables)

    p = sub.add_parser("figure-regression", help="Fig. 7 analog: automatic vs true MTV, TLG, SUVmean")
    p.add_argument("--metrics", required=True)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--pdf", required=True)
    p.add_argument("--stats", required=True, help="TSV of slope, intercept, R2 per model and quantity")
    add_run_kind(p)
    p.set_defaults(handler=figure_regression)

    p = sub.add_parser("figure-slices", help="Figs. 4-6 analogs: one slice of every model's output")
    p.add_argument("--metrics", required=True)
    p.add_argument("--results", required=True, help="results folder (path contract in README)")
    p.add_argument("--site", required=True)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    add_run_kind(p)
    p.set_defaults(handler=figure_slices)

    p = sub.add_parser("figure-training", help="training curves of every model")
    p.add_argument("--log", nargs="+", required=True, metavar="MODEL/SITE=CSV")
    p.add_argument("--png", required=True)
    p.add_argument("--pdf", required=True)
    add_run_kind(p)
    p.set_defaults(handler=figure_training)

    p = sub.add_parser("training-budget", help="gradient steps and epochs of every trained model")
    p.add_argument("--config", required=True, help="the config the models trained with")
    p.add_argument("--log", nargs="+", required=True, metavar="MODEL/SITE=CSV", help="training logs")
    p.add_argument("--out", required=True, help="budget TSV")
    p.set_defaults(handler=training_budget)

    p = sub.add_parser("study-checks", help="the floor every trained model must clear: denoisers "
                                            "below the low-count input, Dice targets")
    p.add_argument("--metrics", required=True, help="metrics TSV of every model (collect-metrics)")
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-md", required=True)
    add_run_kind(p)
    p.set_defaults(handler=study_checks)

    p = sub.add_parser("seed-variance", help="two models' difference against their spread over "
                                             "training seeds (config seed_replicates)")
    p.add_argument("--config", required=True, help="the config naming the seed replicates")
    p.add_argument("--metrics", nargs="+", required=True, help="per-subject metrics TSVs of the "
                   "models and their replicates")
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(handler=seed_variance)


def fit_gaussian(args) -> None:
    """Choose the Gaussian filter's FWHM on the site's validation images; write the fit JSON."""
    from amdiff.evaluate.gaussian import DEFAULT_FWHM_GRID_MM, fit
    from amdiff.io.jsonfile import write_json

    refuse_overwriting_inputs([args.manifest], [args.out])
    record = fit(args.manifest, args.site, args.fwhm_grid or DEFAULT_FWHM_GRID_MM, args.nrmse_whole)
    for point in record["curve"]:
        print(f"FWHM {point['fwhm_mm']:g} mm: mean whole-image NRMSE {point['nrmse_whole']:.4f}")
    print(f"chosen FWHM {record['fwhm_mm']:g} mm ({record['n_images']} validation images, "
          f"{record['n_subjects']} subjects)")
    if record["at_grid_edge"]:
        print("warning: the largest FWHM of the grid won; extend evaluation.gaussian_filter.fwhm_mm_grid")
    write_json(args.out, record)


def gaussian_filter(args) -> None:
    """denoised.nii.gz of each low-count image: smoothed by the fitted (or given) FWHM."""
    from amdiff.evaluate.gaussian import gaussian_filter as smooth
    from amdiff.evaluate.gaussian import read_fit
    from amdiff.io.files import check_input_file
    from amdiff.io.nifti import read_volume, write_volume

    images = [(lc, Path(out) / "denoised.nii.gz") for lc, out in per_image(args.lc, out_dir=args.out_dir)]
    refuse_overwriting_inputs([*args.lc, args.fit], [out for _, out in images])
    for lc, _ in images:   # a missing image stops the call before the first is written
        check_input_file(lc, "low-count image")
    fwhm = read_fit(args.fit) if args.fit else args.fwhm_mm
    if not (math.isfinite(fwhm) and fwhm >= 0):   # NaN would pass `fwhm < 0` and write NaNs
        raise InputError("--fwhm-mm", f"must be a finite number, not negative, got {fwhm}")
    for lc_path, out in images:
        lc = read_volume(lc_path, "suv")
        write_volume(out, smooth(lc.data, fwhm, lc.voxel_size_mm), lc.affine)


def evaluate(args) -> None:
    """Metrics TSV of one model on one subject: a row per low-count test image."""
    from amdiff.evaluate.metrics import check_lesion_match
    from amdiff.evaluate.subject import OUTPUT_KINDS, evaluate_subject, read_references

    outputs = tuple(filter(None, args.outputs.split(",")))
    unknown = [name for name in outputs if name not in OUTPUT_KINDS]
    if not outputs or unknown or len(set(outputs)) < len(outputs):
        raise InputError("--outputs", f"expected some of {','.join(OUTPUT_KINDS)} (each once), "
                                      f"got {args.outputs!r}")
    try:
        check_lesion_match(args.lesion_match_metric, args.lesion_match_threshold)
    except ValueError as err:
        raise InputError("--lesion-match-threshold", str(err)) from None
    predictions, quant_images = pairs(args.prediction), pairs(args.quant_image)
    _check_image_names(predictions, quant_images)
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


def _check_image_names(predictions: dict, quant_images: dict) -> None:
    """Each --prediction names a low-count image (pXXX or pXXX_rN) once, and each --quant-image
    one of them: a second folder for the same image would give a duplicate row, an unmatched
    quantification image would be ignored without a word."""
    from amdiff.levels import parse_image_name

    seen = {}
    for name in predictions:
        try:
            key = parse_image_name(name)
        except ValueError as err:
            raise InputError("--prediction", str(err)) from None
        if key in seen:
            raise InputError("--prediction", f"{seen[key]!r} and {name!r} name the same image")
        seen[key] = name
    stray = sorted(set(quant_images) - set(predictions))
    if stray:
        raise InputError("--quant-image", f"{', '.join(stray)}: no --prediction of that image")


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
    from amdiff.config import load_config, require_sections
    from amdiff.evaluate.budget import training_budget as budget, write_budget

    logs = pairs(args.log)
    refuse_overwriting_inputs([args.config, *logs.values()], [args.out])
    config = load_config(args.config)
    require_sections(config, args.config, ("training",))
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

    from amdiff.config import load_config, seed_replicates
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
    absent = [m for m in args.models if m not in set(metrics["model"].astype(str))]
    if absent:   # a typo would otherwise draw empty panels
        raise InputError(args.metrics, f"no rows of model(s) {', '.join(absent)}")
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

    logs = pairs(args.log)
    refuse_overwriting_inputs([*logs.values(), args.budget], [args.png, args.pdf])
    training_curves(logs, png=args.png, pdf=args.pdf, banner=_budget_and_banner(args)[1])


def tables(args) -> None:
    """Tables 2-5, the headline numbers and the paper-versus-reproduction comparison."""
    from amdiff.evaluate.gaussian import read_fit, row_labels
    from amdiff.evaluate.paper import COHORT_NOTE, OUTPUT_FILES, write_paper_comparison
    from amdiff.evaluate.subject import read_metrics
    from amdiff.evaluate.tables import table_files, write_tables

    fits = pairs(args.gaussian_fit)
    refuse_overwriting_inputs([args.metrics, *fits.values(), args.budget],
                              [Path(args.out_dir) / name for name in (*table_files(), *OUTPUT_FILES)])
    metrics = read_metrics(args.metrics)
    # the Gaussian row's label names the FWHM that filtered each site's images
    fwhm = {site: read_fit(path) for site, path in fits.items()}
    budget, banner = _budget_and_banner(args)
    write_tables(metrics, args.out_dir, seed=args.seed, row_labels=row_labels(fwhm) if fwhm else None,
                 banner=banner, budget=budget)
    write_paper_comparison(metrics, args.out_dir, note=f"**{banner}**\n\n{COHORT_NOTE}" if banner else COHORT_NOTE)
