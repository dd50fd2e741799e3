"""The recon verb: a list-mode file to an SUV image, by this package's OSEM or an external engine."""

from __future__ import annotations

from amdiff.commands.args import percent
from amdiff.io.atomic import refuse_overwriting_inputs


def register(sub) -> None:
    p = sub.add_parser("recon", help="OSEM reconstruction of a list-mode file into an SUV NIfTI")
    p.add_argument("--config", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--listmode", required=True)
    p.add_argument("--mumap", required=True)
    p.add_argument("--count-percent", type=percent, default=None,
                   help="percent of the full list this file holds, which scales the model "
                        "(default: what the list's header records: amdiff downsample writes it; "
                        "100 for any other list); a value the header contradicts is refused")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default=None)
    p.set_defaults(handler=recon)


def count_fraction(listmode: str, count_percent: float | None) -> float:
    """The share of the original acquisition a list holds: its header's down-sampling record
    (1 without one), or ``--count-percent``, which must then agree with the record."""
    import math

    from amdiff.errors import InputError
    from amdiff.io.files import check_input_file
    from amdiff.listmode.header import downsampling_record
    from amdiff.listmode.petsird_io import read_header

    check_input_file(listmode)
    record = downsampling_record(read_header(listmode), listmode)
    if count_percent is None:
        return 1.0 if record is None else float(record["kept_fraction"])
    if record is not None and not math.isclose(count_percent / 100, record["kept_fraction"], rel_tol=1e-9):
        raise InputError(listmode, f"--count-percent {count_percent:g} contradicts the list's header, "
                                   f"which records {100 * record['kept_fraction']:g} % of the acquisition")
    return count_percent / 100


def recon(args) -> None:
    from amdiff.config import load_config, site_config
    from amdiff.io.nifti import read_volume

    refuse_overwriting_inputs([args.config, args.listmode, args.mumap], [args.out])
    fraction = count_fraction(args.listmode, args.count_percent)
    config = load_config(args.config)
    site = site_config(config, args.site, args.config)
    mu = read_volume(args.mumap, "mumap")
    recon_cfg = dict(site["recon"])
    if recon_cfg.pop("engine", "internal") == "external":
        from amdiff.listmode.header import acquisition_from_header
        from amdiff.listmode.petsird_io import read_header
        from amdiff.recon.external import reconstruct_external

        acquisition = acquisition_from_header(read_header(args.listmode), source=args.listmode)
        reconstruct_external(recon_cfg["command"], args.listmode, args.mumap, args.out, recon_cfg,
                             count_fraction=fraction, acquisition=acquisition,
                             source=f"{args.config}: sites.{args.site}")
        return
    recon_cfg.pop("command", None)
    device = args.device or recon_cfg.pop("device", "cpu")
    recon_cfg.pop("device", None)
    if site["recon"].get("engine") == "listmode":
        from amdiff.recon.listmode_osem import reconstruct_any_scanner

        reconstruct_any_scanner(args.listmode, mu.data, mu.affine, recon_cfg, args.out, device,
                                count_fraction=fraction, use_tof=recon_cfg.pop("tof", True),
                                background_fraction=site["acquisition"]["background_fraction"])
        return
    from amdiff.physics.scanner import CylindricalScanner
    from amdiff.recon.osem import reconstruct_listmode

    recon_cfg.pop("tof", None)
    # The flat randoms+scatter model is known from the acquisition settings (the PETSIRD
    # header has no field for it), exactly as the simulation used it.
    reconstruct_listmode(args.listmode, mu.data, mu.affine, recon_cfg, args.out,
                         count_fraction=fraction, device=device,
                         background_fraction=site["acquisition"]["background_fraction"],
                         scanner=CylindricalScanner.from_config(site["scanner"]),
                         scanner_source=f"sites.{args.site}.scanner of {args.config}")
