"""Where a workflow run's time went: wall time from Snakemake's log, job times per stage from
the rules' benchmark files.

    make run                                     # or any snakemake run
    python benchmarks/demo_time.py [--results results] [--log .snakemake/log/<run>.snakemake.log]

The wall time, date, command and job count come from a Snakemake log (default: the newest in
.snakemake/log that finished every job). Per stage (the folder under ``<results>/benchmarks``:
phantom, simulate, recon, train, predict, evaluate...) the table gives the jobs, their summed and
largest seconds and their largest resident set, from the ``benchmark:`` files Snakemake wrote
(seconds are each job's own wall time; jobs run side by side, so the sums exceed the wall time).
A job that ran in an earlier invocation keeps its older file: the table describes the results
folder, the first line the one run.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def finished_log(folder: Path) -> Path | None:
    """The newest Snakemake log in ``folder`` whose run finished every job."""
    for log in sorted(folder.glob("*.snakemake.log"), reverse=True):
        if re.search(r"^\d+ of \d+ steps \(100%\) done", log.read_text(errors="replace"), re.M):
            return log
    return None


def run_summary(log: Path) -> dict:
    text = log.read_text(errors="replace")
    found = {key: re.search(pattern, text, re.M) for key, pattern in
             (("date", r"^\s*Date: (.+)$"), ("command", r"^\s*Command: (.+)$"),
              ("steps", r"^(\d+) of \d+ steps \(100%\) done"), ("elapsed", r"^Elapsed time: ([\d:]+)"))}
    return {key: match.group(1).strip() if match else "?" for key, match in found.items()}


def stage_table(results: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        stage = tsv.relative_to(results / "benchmarks").parts[0]
        rows.append({"stage": stage, "seconds": float(frame["s"].iloc[-1]),
                     "max_rss_mb": float(pd.to_numeric(frame["max_rss"], errors="coerce").iloc[-1])})
    if not rows:
        return pd.DataFrame(columns=["stage", "jobs", "seconds_sum", "seconds_max", "max_rss_mb"])
    jobs = pd.DataFrame(rows)
    return (jobs.groupby("stage")
            .agg(jobs=("seconds", "size"), seconds_sum=("seconds", "sum"), seconds_max=("seconds", "max"),
                 max_rss_mb=("max_rss_mb", "max"))
            .sort_values("seconds_sum", ascending=False).reset_index())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--log", default=None, help="a Snakemake log (default: the newest finished run's)")
    args = ap.parse_args(argv)
    results = Path(args.results)
    if not (results / "benchmarks").is_dir():
        print(f"demo_time: {results / 'benchmarks'}: no benchmark files (run the workflow first)", file=sys.stderr)
        return 2
    log = Path(args.log) if args.log else finished_log(REPO / ".snakemake" / "log")
    if log is not None:
        run = run_summary(log)
        print(f"run of {run['date']}: {run['steps']} jobs, wall time {run['elapsed']} ({log.name})\n"
              f"  {run['command']}")
    else:
        print("no finished Snakemake log found: wall time unknown")
    table = stage_table(results)
    print("\n| stage | jobs | seconds, sum | seconds, largest | largest RSS (MB) |\n|---|---|---|---|---|")
    for row in table.itertuples():
        print(f"| {row.stage} | {row.jobs} | {row.seconds_sum:.0f} | {row.seconds_max:.1f} | {row.max_rss_mb:.0f} |")
    print(f"| all | {table.jobs.sum()} | {table.seconds_sum.sum():.0f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
