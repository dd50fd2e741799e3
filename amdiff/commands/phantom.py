"""Verbs of the synthetic cohort: phantom (one subject with its truth) and mumap (CT to 1/cm)."""

from __future__ import annotations

from pathlib import Path

from amdiff.io.atomic import refuse_overwriting_inputs

PHANTOM_FILES = ("truth_suv.nii.gz", "ct.nii.gz", "mumap.nii.gz", "organs_truth.nii.gz",
                 "lesion.nii.gz", "phantom.json")


def register(sub) -> None:
    p = sub.add_parser("phantom", help="generate one synthetic PET/CT subject with its truth labels")
    p.add_argument("--config", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--outdir", required=True)
    p.set_defaults(handler=phantom)

    p = sub.add_parser("mumap", help="511 keV attenuation map (1/cm) from a CT in HU")
    p.add_argument("--ct", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=mumap)


def phantom(args) -> None:
    import numpy as np

    from amdiff.config import derived_seed, load_config, site_config
    from amdiff.io.jsonfile import write_json
    from amdiff.io.nifti import write_volume
    from amdiff.phantom import generate_subject

    out = Path(args.outdir)
    refuse_overwriting_inputs([args.config], [out / name for name in PHANTOM_FILES])
    config = load_config(args.config)
    site = site_config(config, args.site, args.config)
    seed = derived_seed(config["seed"], "phantom", args.site, args.subject)
    subj = generate_subject(site["image"]["shape"], site["image"]["voxel_size_mm"], seed,
                            config["phantom"])
    write_volume(out / "truth_suv.nii.gz", subj.suv, subj.affine)
    write_volume(out / "ct.nii.gz", subj.ct, subj.affine)
    write_volume(out / "mumap.nii.gz", subj.mu, subj.affine)
    write_volume(out / "organs_truth.nii.gz", subj.organs, subj.affine, dtype=np.uint8)
    write_volume(out / "lesion.nii.gz", subj.lesions, subj.affine, dtype=np.uint8)
    write_json(out / "phantom.json", {
        "site": args.site, "subject": args.subject, "seed": seed,
        "weight_kg": subj.weight_kg, "height_cm": subj.height_cm, "sex": subj.sex,
        "lesions": subj.lesion_table,
    })


def mumap(args) -> None:
    from amdiff.io.nifti import check_units, read_volume, write_volume
    from amdiff.phantom import hu_to_mu_511

    refuse_overwriting_inputs([args.ct], [args.out])
    ct = read_volume(args.ct, "ct")
    check_units(ct, "ct")   # HU + 1024 without its rescale would give air the mu of water
    write_volume(args.out, hu_to_mu_511(ct.data), ct.affine)
