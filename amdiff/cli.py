"""The ``amdiff`` command line: one verb per workflow stage.

Every Snakemake rule calls one of these verbs, and each verb also works on its own.
Bad input ends the command with a single line ``amdiff: error: <file>: <problem>``
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from amdiff.errors import InputError


def _percent(text: str) -> float:
    """A percent of the full list in (0, 100] (the rule of a count level's name)."""
    from amdiff.levels import percent_decimal

    try:
        value = float(text)
        percent_decimal(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a percent in (0, 100], got {text!r}") from None
    return value


def _levels(text: str) -> list[float]:
    try:
        levels = [_percent(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        levels = []
    if not levels:
        raise argparse.ArgumentTypeError("count levels must be comma-separated percents in "
                                         f"(0, 100], got {text!r}")
    from amdiff.levels import level_name

    names = [level_name(v) for v in levels]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:   # one list per level: a repeated level would silently become one output
        raise argparse.ArgumentTypeError(f"count level {twice[0]} is given twice in {text!r}")
    return levels


def _natural(text: str) -> int:
    """A non-negative integer (a seed)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _positive(text: str) -> int:
    """A positive integer (a number of realizations)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _one_line_errors(p: argparse.ArgumentParser) -> None:
    """Usage errors of ``p`` end with the CLI's one line (``amdiff: error: argument --x: ...``)
    and exit status 2, without argparse's usage block."""
    def error(message: str):
        p.exit(2, f"amdiff: error: {' '.join(message.split())}\n")
    p.error = error


def _fwhm_grid(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"FWHM grid must be comma-separated mm, none negative, got {text!r}")
    return values


def _run_args(p: argparse.ArgumentParser) -> None:
    """--budget and --run-kind: a demo run's outputs say they come from an untrained smoke test."""
    p.add_argument("--budget", default=None, help="training budget TSV (amdiff training-budget)")
    # the config's run_kind values (amdiff/schemas/config.schema.yaml; not imported: keeps --help fast)
    p.add_argument("--run-kind", choices=("demo", "study", "paper"), default="study",
                   help="demo: mark every output as an untrained smoke test (needs --budget)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amdiff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("check-config", help="validate a config file against the config schema")
    p.add_argument("config")

    p = sub.add_parser("phantom", help="generate one synthetic PET/CT subject with its truth labels")
    p.add_argument("--config", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--outdir", required=True)

    p = sub.add_parser("simulate", help="simulate a PETSIRD list-mode acquisition of an SUV image")
    p.add_argument("--config", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--suv", required=True, help="activity image in SUV (phantom truth or a real SUV image)")
    p.add_argument("--mumap", required=True, help="511 keV attenuation map in 1/cm on the same grid")
    p.add_argument("--weight-kg", type=float, required=True)
    p.add_argument("--height-m", type=float, default=1.75)
    p.add_argument("--out", required=True)
    p.add_argument("--summary", required=True, help="JSON with split, dose, events and duration")
    p.add_argument("--split", choices=("train", "val", "test"),
                   help="the subject's split, which picks sites.<site>.acquisition_by_split "
                        "(default: the synthetic cohort's split of --subject)")

    p = sub.add_parser("downsample", help="non-overlapping list-mode down-sampling (any PETSIRD file)")
    p.add_argument("--input", required=True)
    p.add_argument("--levels", type=_levels, required=True, help="percents, e.g. 5,10,20")
    p.add_argument("--realizations", type=_positive, default=1)
    p.add_argument("--seed", type=_natural, required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--counts", help="write the events per output as JSON here")

    p = sub.add_parser("recon", help="OSEM reconstruction of a list-mode file into an SUV NIfTI")
    p.add_argument("--config", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--listmode", required=True)
    p.add_argument("--mumap", required=True)
    p.add_argument("--count-percent", type=_percent, default=100.0,
                   help="percent of the full list this file holds (a down-sampled list scales the model)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default=None)

    p = sub.add_parser("mumap", help="511 keV attenuation map (1/cm) from a CT in HU")
    p.add_argument("--ct", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("labels", help="organ label map: phantom truth, TotalSegmentator, or provided")
    p.add_argument("--method", choices=["phantom", "totalsegmentator", "provided"], required=True)
    p.add_argument("--ct", required=True)
    p.add_argument("--source", help="truth or provided label map (methods phantom/provided)")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)

    p = sub.add_parser("qc", help="per-subject QC figure: coronal MIPs with lesion and organ overlays")
    p.add_argument("--hc", required=True)
    p.add_argument("--lc", nargs="*", default=[], help="LEVEL=PATH pairs")
    p.add_argument("--lesion", required=True)
    p.add_argument("--organs", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True)

    p = sub.add_parser("subject-stats", help="per-subject statistics for the cohort summary")
    p.add_argument("--site", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--hc", required=True)
    p.add_argument("--lesion", required=True)
    p.add_argument("--acquisition", help="simulate summary JSON")
    p.add_argument("--counts", help="downsample counts JSON")
    p.add_argument("--out", required=True)

    p = sub.add_parser("summary", help="cohort summary table (Table 1 analog) from subject stats")
    p.add_argument("stats", nargs="+")
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-md")

    p = sub.add_parser("manifest", help="write the manifest of the prepared cohort (input to training)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--validate", action="store_true", help="also read every image and check geometry")
    p.add_argument("--site", default=None, help="only this site's subjects (a training manifest)")
    p.add_argument("--splits", default=None, help="only these splits, e.g. train,val")

    p = sub.add_parser("train", help="train AMDiff, an ablation or a comparison model on one site "
                                     "(resumes from last.pt)")
    p.add_argument("--config", required=True)
    p.add_argument("--manifest", required=True, help="prepared-cohort manifest (results/manifest.tsv)")
    p.add_argument("--site", required=True)
    p.add_argument("--variant", default="amdiff")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs (resume later)")
    p.add_argument("--denoiser-checkpoint", default=None,
                   help="trained Med-DDPM whose outputs feed a comparison segmenter")

    p = sub.add_parser("predict", help="denoise and segment low-count images with a trained model")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--lc", required=True, help="low-count PET in SUV")
    p.add_argument("--denoised", default=None, help="Med-DDPM output (comparison segmenters' second input)")
    p.add_argument("--subject", required=True, help="case id; with the level it seeds the sampler")
    p.add_argument("--level", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)

    p = sub.add_parser("fit-gaussian", help="choose the Gaussian filter's FWHM (Table 2's training-free "
                                            "row) on a site's validation images")
    p.add_argument("--manifest", required=True, help="training manifest of the site (its val subjects)")
    p.add_argument("--site", required=True)
    p.add_argument("--fwhm-grid", type=_fwhm_grid, default=None, metavar="MM,MM,...",
                   help="candidate FWHMs in mm, 0 = no filter (default 0,2,4,6,8,10,12)")
    p.add_argument("--nrmse-whole", choices=("body_mean", "body_range", "image_range"),
                   default="body_mean", help="whole-image NRMSE reading of the criterion, as evaluate's")
    p.add_argument("--out", required=True, help="fit JSON: chosen FWHM, NRMSE against FWHM")

    p = sub.add_parser("gaussian-filter", help="smooth a low-count image by a Gaussian (Table 2's "
                                               "training-free rows; FWHM 0 = the input itself)")
    p.add_argument("--lc", required=True, help="low-count PET in SUV")
    fwhm = p.add_mutually_exclusive_group(required=True)
    fwhm.add_argument("--fwhm-mm", type=float, help="FWHM in mm (0: write the input unchanged)")
    fwhm.add_argument("--fit", help="fit JSON of fit-gaussian, whose chosen FWHM is used")
    p.add_argument("--out-dir", required=True, help="prediction folder: denoised.nii.gz is written there")

    p = sub.add_parser("evaluate", help="per-case metrics of one model on one subject's test images")
    p.add_argument("--model", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--hc", required=True, help="high-count reference PET in SUV")
    p.add_argument("--lesion", required=True, help="true lesion mask")
    p.add_argument("--organs", required=True, help="true organ label map")
    p.add_argument("--ct", default=None, help="CT in HU on the PET grid: its body mask is the "
                   "whole-image NRMSE's region (needed unless --nrmse-whole image_range)")
    # The readings of amdiff.evaluate.metrics.NRMSE_WHOLE_READINGS (not imported: keeps --help fast).
    p.add_argument("--nrmse-whole", choices=("body_mean", "body_range", "image_range"),
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

    p = sub.add_parser("collect-metrics", help="pool per-subject metric tables into one")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)

    p = sub.add_parser("tables", help="Tables 2-4 analogs, headline numbers and paper-vs-reproduction")
    p.add_argument("--metrics", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--gaussian-fit", nargs="*", default=[], metavar="SITE=JSON",
                   help="fit-gaussian JSON whose FWHM filtered each test site's images (row label)")
    _run_args(p)

    p = sub.add_parser("figure-regression", help="Fig. 7 analog: automatic vs true MTV, TLG, SUVmean")
    p.add_argument("--metrics", required=True)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--pdf", required=True)
    p.add_argument("--stats", required=True, help="TSV of slope, intercept, R2 per model and quantity")
    _run_args(p)

    p = sub.add_parser("figure-slices", help="Figs. 4-6 analogs: one slice of every model's output")
    p.add_argument("--metrics", required=True)
    p.add_argument("--results", required=True, help="results folder (path contract in README)")
    p.add_argument("--site", required=True)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    _run_args(p)

    p = sub.add_parser("figure-training", help="training curves of every model")
    p.add_argument("--log", nargs="+", required=True, metavar="MODEL/SITE=CSV")
    p.add_argument("--png", required=True)
    p.add_argument("--pdf", required=True)
    _run_args(p)

    p = sub.add_parser("training-budget", help="gradient steps and epochs of every trained model")
    p.add_argument("--config", required=True, help="the config the models trained with")
    p.add_argument("--log", nargs="+", required=True, metavar="MODEL/SITE=CSV", help="training logs")
    p.add_argument("--out", required=True, help="budget TSV")

    p = sub.add_parser("study-checks", help="the floor every trained model must clear: denoisers "
                                            "below the low-count input, Dice targets")
    p.add_argument("--metrics", required=True, help="metrics TSV of every model (collect-metrics)")
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-md", required=True)
    _run_args(p)

    p = sub.add_parser("seed-variance", help="two models' difference against their spread over "
                                             "training seeds (config seed_replicates)")
    p.add_argument("--config", required=True, help="the config naming the seed replicates")
    p.add_argument("--metrics", nargs="+", required=True, help="per-subject metrics TSVs of the "
                   "models and their replicates")
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-md", required=True)

    p = sub.add_parser("provenance", help="record the code, config, packages, machine and stage "
                                          "wall times of a run")
    p.add_argument("--config", required=True, help="the run's effective config")
    p.add_argument("--benchmarks", required=True, help="folder of Snakemake's benchmark TSVs")
    p.add_argument("--source-dir", required=True, help="the workflow's source folder (its git commit)")
    p.add_argument("--out", required=True, help="provenance JSON")

    p = sub.add_parser("params", help="parameter counts of every model at paper size")
    p.add_argument("--config", default=None, help="config with a models section (default: config/paper.yaml)")

    p = sub.add_parser("import-image", help="copy a user image into the results after checking it")
    p.add_argument("--kind", choices=["suv", "ct", "labels"], required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--reference", help="image whose grid (shape, affine) this one must share")
    p.add_argument("--out", required=True)

    p = sub.add_parser("import-autopet", help="turn an autoPET-style folder into a manifest")
    p.add_argument("root")
    p.add_argument("--out", required=True)
    p.add_argument("--site", default="autopet")
    p.add_argument("--seed", type=int, default=0)
    # every verb's usage errors too: one line, exit status 2 (the bad-input convention)
    for command in (parser, *sub.choices.values()):
        _one_line_errors(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; 0 on success, 2 on bad input or a failed read or write, 130 on Ctrl-C (SIGINT).

    SIGTERM, SIGINT and SIGHUP delete the temporaries of the outputs being written
    (``amdiff.io.atomic.remove_temporaries_on_signals``); SIGTERM and SIGHUP then end the
    process with status 128 + the signal number.
    """
    args = build_parser().parse_args(argv)
    from amdiff import stages
    from amdiff.io.atomic import remove_temporaries_on_signals
    from amdiff.joblog import configure_logging

    configure_logging()

    with remove_temporaries_on_signals("amdiff"):
        try:
            getattr(stages, args.verb.replace("-", "_"))(args)
        except InputError as exc:
            # one line, even if a wrapped library message (or a file name) holds a line break
            message = " ".join(part.strip() for part in str(exc).splitlines())
            print(f"amdiff: error: {message}", file=sys.stderr)
            return 2
        except OSError as exc:
            # a fault the readers and writers did not turn into InputError (they name the file
            # and the reason; so does this line): still one line, not a traceback
            where = exc.filename if exc.filename is not None else f"amdiff {args.verb}"
            reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
            print(f"amdiff: error: {where}: {reason}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # an interruption, not a fault: one line instead of a traceback
            print("amdiff: stopped by SIGINT", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
