"""Quality-control verbs: qc (a subject's figure), subject-stats and summary (the cohort table)."""

from __future__ import annotations

from amdiff.commands.args import pairs
from amdiff.contracts import SPLITS
from amdiff.errors import InputError
from amdiff.io.atomic import refuse_overwriting_inputs


def register(sub) -> None:
    p = sub.add_parser("qc", help="per-subject QC figure: coronal MIPs with lesion and organ overlays")
    p.add_argument("--hc", required=True)
    p.add_argument("--lc", nargs="*", default=[], help="LEVEL=PATH pairs")
    p.add_argument("--lesion", required=True)
    p.add_argument("--organs", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=qc)

    p = sub.add_parser("subject-stats", help="per-subject statistics for the cohort summary")
    p.add_argument("--site", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--hc", required=True)
    p.add_argument("--lesion", required=True)
    p.add_argument("--acquisition", help="simulate summary JSON")
    p.add_argument("--counts", help="downsample counts JSON")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=subject_stats)

    p = sub.add_parser("summary", help="cohort summary table (Table 1 analog) from subject stats")
    p.add_argument("stats", nargs="+")
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-md")
    p.set_defaults(handler=summary)


def qc(args) -> None:
    from amdiff.qc.figures import qc_figure

    lc = pairs(args.lc)
    refuse_overwriting_inputs([args.hc, *lc.values(), args.lesion, args.organs], [args.out])
    qc_figure(args.hc, lc, args.lesion, args.organs, args.out, args.title)


def subject_stats(args) -> None:
    from amdiff.io.jsonfile import read_json, write_json
    from amdiff.qc.summary import lesion_stats_from_masks

    refuse_overwriting_inputs([args.hc, args.lesion, args.acquisition, args.counts], [args.out])
    stats = {"site": args.site, "subject": args.subject, "split": args.split,
             "lesions": lesion_stats_from_masks(args.hc, args.lesion)}
    if args.acquisition:
        acq = read_json(args.acquisition, ("events",))
        stats.update(events=acq["events"], dose_mbq=acq.get("dose_mbq"))
    if args.counts:
        counts = read_json(args.counts, ("events",))["events"]
        if not isinstance(counts, dict):
            raise InputError(args.counts, "events must map each list's name to its event count")
        stats["events_per_level"] = counts
    write_json(args.out, stats)


def summary(args) -> None:
    from amdiff.io.jsonfile import read_json
    from amdiff.qc.summary import cohort_summary, write_cohort_summary

    refuse_overwriting_inputs(args.stats, [args.out_tsv, args.out_md])
    rows = [read_json(p) for p in args.stats]
    write_cohort_summary(cohort_summary(rows), args.out_tsv, args.out_md)
