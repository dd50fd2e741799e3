"""Verbs about a run as a whole: check-config (validate a config) and provenance (record a run)."""

from __future__ import annotations

from pathlib import Path

from amdiff.errors import InputError
from amdiff.io.atomic import refuse_overwriting_inputs


def register(sub) -> None:
    p = sub.add_parser("check-config", help="validate a config file against the config schema")
    p.add_argument("config")
    p.set_defaults(handler=check_config)

    p = sub.add_parser("provenance", help="record the code, config, packages, machine and stage "
                                          "wall times of a run")
    p.add_argument("--config", required=True, help="the run's effective config")
    p.add_argument("--benchmarks", required=True, help="folder of Snakemake's benchmark TSVs")
    p.add_argument("--source-dir", required=True, help="the workflow's source folder (its git commit)")
    p.add_argument("--out", required=True, help="provenance JSON")
    p.set_defaults(handler=provenance)


def check_config(args) -> None:
    from amdiff.config import load_config

    config = load_config(args.config)
    print(f"{args.config}: valid ({len(config['sites'])} sites)")


def provenance(args) -> None:
    """provenance.json: git commit, config hash, package versions, machine, wall time per stage."""
    from amdiff.config import fill_defaults, read_config
    from amdiff.provenance import provenance as record
    from amdiff.provenance import write_provenance

    refuse_overwriting_inputs([args.config, args.benchmarks, args.source_dir], [args.out])
    # a missing folder would record "commit: null", the same as an install without git
    if not Path(args.source_dir).is_dir():
        raise InputError(args.source_dir, "is not a folder (--source-dir: the workflow's source, "
                                          "whose git commit the record holds)")
    # filled, so the hash is that of the settings, defaults written out or not (the workflow's
    # effective config is already valid and filled: the same hash)
    config = fill_defaults(read_config(args.config))
    write_provenance(record(config, args.benchmarks, args.source_dir), args.out)
