"""Verbs that bring a cohort into the workflow: manifest, import-image, import-autopet."""

from __future__ import annotations

from pathlib import Path

from amdiff.contracts import SPLITS
from amdiff.errors import InputError
from amdiff.io.atomic import refuse_overwriting_inputs


def register(sub) -> None:
    p = sub.add_parser("manifest", help="write the manifest of the prepared cohort (input to training)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--validate", action="store_true", help="also read every image and check geometry")
    p.add_argument("--site", default=None, help="only this site's subjects (a training manifest)")
    p.add_argument("--splits", default=None, help="only these splits, e.g. train,val")
    p.set_defaults(handler=manifest)

    p = sub.add_parser("import-image", help="copy a user image into the results after checking it")
    p.add_argument("--kind", choices=["suv", "ct", "labels"], required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--reference", help="image whose grid (shape, affine) this one must share")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=import_image)

    p = sub.add_parser("import-autopet", help="turn an autoPET-style folder into a manifest")
    p.add_argument("root")
    p.add_argument("--out", required=True)
    p.add_argument("--site", default="autopet")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=import_autopet)


def manifest(args) -> None:
    """The manifest of the prepared cohort: the same format users write for their own data.

    Paths are relative to the manifest's folder, so the results folder can be moved.
    """
    import os

    import pandas as pd

    from amdiff.config import load_config, phantom_subjects
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
    # a typo in --site or --splits would otherwise write a manifest without subjects
    if args.site is not None and args.site not in config["sites"]:
        raise InputError("--site", f"{args.site!r} is not a site of {args.config} "
                                   f"({', '.join(config['sites'])})")
    splits = set(args.splits.split(",")) if args.splits is not None else None
    if splits is not None and (not splits or not splits <= set(SPLITS)):
        raise InputError("--splits", f"expected some of {','.join(SPLITS)}, got {args.splits!r}")
    subjects = _manifest_subjects(config) if own else phantom_subjects(config)
    subjects = [s for s in subjects if (args.site is None or s["site"] == args.site)
                and (splits is None or s["split"] in splits)]
    if not subjects:
        raise InputError(args.config, f"no subject of site {args.site or 'any'} in split(s) "
                                      f"{args.splits or ','.join(SPLITS)}")
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
    import shutil

    from amdiff.io.atomic import atomic_path
    from amdiff.io.nifti import check_same_grid, check_units, read_volume

    refuse_overwriting_inputs([args.input, args.reference], [args.out])
    vol = read_volume(args.input, args.kind)
    if args.reference:
        check_same_grid(read_volume(args.reference, "image"), vol)
    check_units(vol, args.kind)   # e.g. Bq/mL given as SUV, a CT that lost its rescale
    if args.kind == "labels" and vol.data.max() > 1:
        raise InputError(args.input, f"lesion mask must be binary, found values up to {vol.data.max()}")
    with atomic_path(args.out) as tmp:
        shutil.copyfile(args.input, tmp)
