"""The labels verb: an organ label map from phantom truth, TotalSegmentator, or the user's own."""

from __future__ import annotations

from amdiff.errors import InputError
from amdiff.io.atomic import refuse_overwriting_inputs


def register(sub) -> None:
    p = sub.add_parser("labels", help="organ label map: phantom truth, TotalSegmentator, or provided")
    p.add_argument("--method", choices=["phantom", "totalsegmentator", "provided"], required=True)
    p.add_argument("--ct", required=True)
    p.add_argument("--source", help="truth or provided label map (methods phantom/provided)")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=labels)


def labels(args) -> None:
    import numpy as np

    from amdiff.io.nifti import check_same_grid, read_volume, write_volume

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
