"""Provenance of a run: which code, config, packages and machine made its results, and how long
each stage took.

`provenance` builds the record that ``amdiff provenance`` writes to
``{reports_dir}/provenance.json`` at the end of every workflow run:

- ``git``: the commit of the workflow's source folder and whether its tree was dirty (changed
  or untracked files; their paths, at most `MAX_DIRTY_PATHS`); null outside a git checkout.
- ``config``: sha256 of the effective config (`config_sha256`: canonical JSON, the hash the
  training fingerprints use) and its ``run_kind``.
- ``packages``: versions of `PACKAGES` (null where not installed), and Python's.
- ``machine``: host name, CPU count, GPU name (null without CUDA), operating system. It is the
  machine that wrote the file; on a cluster the jobs ran on other nodes.
- ``wall_time_s``: seconds summed from Snakemake's benchmark files (`wall_times`), per stage
  (the folder under ``results/benchmarks``: train, predict, recon, ...) and, within a stage, per
  its next folder (the model, or the site).

`provenance_problems` checks a kept snapshot's record against the config it claims: the config
hash and the record's fields, never its numbers.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Mapping


from amdiff.config import run_kind
from amdiff.errors import InputError
from amdiff.io.files import check_input_file
from amdiff.io.atomic import write_text
from amdiff.train.checkpoint import canonical_sha256

# distributions whose versions shape the numbers (mamba-ssm: the CUDA Mamba kernels, if present)
PACKAGES = ("amdiff", "torch", "monai", "numpy", "scipy", "pandas", "snakemake", "petsird",
            "mambapy", "mamba-ssm")
MAX_DIRTY_PATHS = 50
FIELDS = ("written_utc", "git", "config", "packages", "python", "machine", "wall_time_s")



def config_sha256(config: Mapping) -> str:
    """sha256 of the config as canonical JSON (sorted keys): equal settings, equal hash."""
    return canonical_sha256(dict(config))


# --- code, packages, machine ------------------------------------------------------------

def _git(source_dir, *args: str) -> str | None:
    """Output of a read-only git command in ``source_dir`` (None where git or the repo is missing)."""
    # GIT_OPTIONAL_LOCKS=0: `git status` must not rewrite the index of a checkout it only reads
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        done = subprocess.run(["git", "-C", str(source_dir), *args], capture_output=True, text=True,
                              env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(source_dir) -> dict:
    """{"commit", "dirty", "dirty_paths"} of the checkout holding ``source_dir``."""
    commit = _git(source_dir, "rev-parse", "HEAD")
    status = _git(source_dir, "status", "--porcelain")
    if commit is None or status is None:
        return {"commit": None, "dirty": None, "dirty_paths": []}
    paths = sorted(line[3:] for line in status.splitlines() if line.strip())
    return {"commit": commit.strip(), "dirty": bool(paths), "dirty_paths": paths[:MAX_DIRTY_PATHS]}


def package_versions(names=PACKAGES) -> dict:
    """Installed version of each distribution, None where it is not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_name() -> str | None:
    """The first CUDA device's name, None without one."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:   # a broken driver must not stop the record: it says "no GPU seen"
        return None


def machine() -> dict:
    """Host name, CPU count, GPU name and operating system of this machine."""
    return {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "gpu": gpu_name(),
            "os": platform.platform()}


# --- wall time --------------------------------------------------------------------------

def _benchmark_seconds(path: Path) -> float:
    """Sum of the ``s`` column of one Snakemake benchmark TSV (one row per repeat)."""
    lines = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    if not lines or "s" not in lines[0]:
        raise InputError(path, "not a Snakemake benchmark file (no 's' column)")
    column = lines[0].index("s")
    try:
        return sum(float(row[column]) for row in lines[1:])
    except (ValueError, IndexError):
        raise InputError(path, "benchmark file has a missing or non-numeric 's' value") from None


def wall_times(benchmark_dir) -> dict:
    """{"total", "stages": {stage: {"jobs", "s", "by": {part: s}}}} from every ``*.tsv`` under
    ``benchmark_dir``; stage is its first folder, part the next (a file's stem when there is
    none). Seconds rounded to 0.01. A missing folder (nothing benchmarked yet) gives no stages."""
    root = Path(benchmark_dir)
    stages: dict[str, dict] = {}
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        parts = path.relative_to(root).with_suffix("").parts
        stage, part = (parts[0], parts[1]) if len(parts) > 1 else (parts[0], parts[0])
        seconds = _benchmark_seconds(path)
        entry = stages.setdefault(stage, {"jobs": 0, "s": 0.0, "by": {}})
        entry["jobs"] += 1
        entry["s"] += seconds
        entry["by"][part] = entry["by"].get(part, 0.0) + seconds
    for entry in stages.values():
        entry["s"] = round(entry["s"], 2)
        entry["by"] = {k: round(v, 2) for k, v in sorted(entry["by"].items())}
    return {"total": round(sum(e["s"] for e in stages.values()), 2),
            "stages": dict(sorted(stages.items()))}


# --- the record -------------------------------------------------------------------------

def provenance(config: Mapping, benchmark_dir, source_dir) -> dict:
    """The provenance record of a run with ``config`` (see the module docstring)."""
    return {"written_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git": git_state(source_dir),
            "config": {"sha256": config_sha256(config), "run_kind": run_kind(config)},
            "packages": package_versions(), "python": platform.python_version(),
            "machine": machine(), "wall_time_s": wall_times(benchmark_dir)}


def write_provenance(record: Mapping, path) -> None:
    """Write the record as indented JSON, atomically."""
    write_text(path, json.dumps(record, indent=2) + "\n")


def read_provenance(path) -> dict:
    """A provenance.json as a dict; a missing or broken file is one clear error."""
    path = Path(path)
    check_input_file(path, "provenance file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None


def provenance_problems(record: Mapping, config: Mapping) -> list[str]:
    """Why a snapshot's provenance does not belong to ``config`` (empty: it does): a missing
    field, another config hash or run kind, no git commit, no wall time. Numbers are not checked."""
    problems = [f"no {name!r} field" for name in FIELDS if name not in record]
    if problems:
        return problems
    recorded, expected = record["config"].get("sha256"), config_sha256(config)
    if recorded != expected:
        problems.append(f"config sha256 {str(recorded)[:12]} is not the config's {expected[:12]}")
    kind = run_kind(config)
    if record["config"].get("run_kind") != kind:
        problems.append(f"run_kind {record['config'].get('run_kind')!r} is not the config's {kind!r}")
    if not record["git"].get("commit"):
        problems.append("no git commit recorded")
    if not record["wall_time_s"].get("stages"):
        problems.append("no wall time recorded (no benchmark files)")
    return problems
