"""List-mode verbs: simulate (a PETSIRD acquisition of an SUV image) and downsample (any PETSIRD file)."""

from __future__ import annotations

from pathlib import Path

from amdiff.commands.args import count_levels, natural, positive
from amdiff.errors import InputError
from amdiff.io.atomic import refuse_overwriting_inputs


def register(sub) -> None:
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
    p.set_defaults(handler=simulate)

    p = sub.add_parser("downsample", help="non-overlapping list-mode down-sampling (any PETSIRD file)")
    p.add_argument("--input", required=True)
    p.add_argument("--levels", type=count_levels, required=True, help="percents, e.g. 5,10,20")
    p.add_argument("--realizations", type=positive, default=1)
    p.add_argument("--seed", type=natural, required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--counts", help="write the events per output as JSON here")
    p.set_defaults(handler=downsample)


def simulate(args) -> None:
    import numpy as np

    from amdiff.config import derived_seed, load_config, site_acquisition, site_config
    from amdiff.io.jsonfile import write_json
    from amdiff.io.nifti import check_same_grid, read_volume
    from amdiff.listmode.simulate import simulate_listmode
    from amdiff.physics.scanner import CylindricalScanner

    refuse_overwriting_inputs([args.config, args.suv, args.mumap], [args.out, args.summary])
    config = load_config(args.config)
    site = site_config(config, args.site, args.config)
    suv = read_volume(args.suv, "suv")
    mu = read_volume(args.mumap, "mumap")
    check_same_grid(suv, mu)
    split = subject_split(config, args)
    acq = site_acquisition(site, split)
    seed = derived_seed(config["seed"], "acquisition", args.site, args.subject)
    rng = np.random.default_rng(seed)
    mean, sd = acq.pop("dose_mbq")
    # Doses vary between subjects like Table 1 (mean +- sd), never below half the mean.
    acq["dose_mbq"] = float(max(rng.normal(mean, sd), 0.5 * mean))
    result = simulate_listmode(args.out, suv.data, mu.data, suv.affine,
                               CylindricalScanner.from_config(site["scanner"]), acq,
                               subject_id=args.subject, weight_kg=args.weight_kg,
                               height_m=args.height_m, seed=seed)
    write_json(args.summary, {"site": args.site, "subject": args.subject, "split": split,
                              "seed": seed, "dose_mbq": acq["dose_mbq"],
                              "weight_kg": args.weight_kg, **result})


def subject_split(config: dict, args) -> str | None:
    """The split whose acquisition a simulated subject gets: --split, else the synthetic
    cohort's split of the subject. Unknown (own data without --split) is an error only
    where it matters, i.e. when the site's acquisition differs by split."""
    from amdiff.config import phantom_subjects

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


def downsample(args) -> None:
    from amdiff.io.jsonfile import write_json
    from amdiff.levels import level_name
    from amdiff.listmode.downsample import downsample as run

    outdir = Path(args.outdir)
    outputs = {p: [outdir / f"{level_name(p)}_r{r}.petsird" for r in range(args.realizations)]
               for p in args.levels}
    refuse_overwriting_inputs([args.input], [*(path for paths in outputs.values() for path in paths),
                                             args.counts])
    written = {str(path): n for path, n in run(args.input, outputs, seed=args.seed).items()}
    if args.counts:
        events = {level_name(p): [written[str(path)] for path in paths] for p, paths in outputs.items()}
        write_json(args.counts, {"input": str(args.input), "seed": args.seed, "events": events})
