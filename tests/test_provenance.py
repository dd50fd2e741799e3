"""provenance.json from a tiny fake results tree: wall time per stage summed from hand-written
benchmark files, the config hash, the git state, and the check of a snapshot against its config."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest
import yaml

from amdiff.cli import main
from amdiff.config import fill_defaults
from amdiff.errors import InputError
from amdiff.provenance import (PACKAGES, config_sha256, git_state, provenance, provenance_problems,
                               read_provenance, wall_times)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _benchmark(path, *seconds) -> None:
    """A Snakemake benchmark TSV, one row per repeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(f"{s}\t0:00:{int(s):02d}\t100\t200\t50\t60\t0\t0\t90\t{s}\n"
                                     for s in seconds))


@pytest.fixture
def results(tmp_path):
    """A results tree: benchmarks of two trainings on two sites, two reconstructions (one
    benchmarked twice by a repeat), one phantom, and a top-level file."""
    bench = tmp_path / "results" / "benchmarks"
    _benchmark(bench / "train" / "amdiff" / "mct.tsv", 10.5)
    _benchmark(bench / "train" / "amdiff" / "uexplorer.tsv", 2.25)
    _benchmark(bench / "train" / "leqmod_gan" / "mct.tsv", 1.0)
    _benchmark(bench / "recon" / "mct" / "mct001" / "hc.tsv", 3.0)
    _benchmark(bench / "recon" / "mct" / "mct001" / "lc_p005_r0.tsv", 1.0, 2.0)
    _benchmark(bench / "phantom" / "vision" / "vision001.tsv", 0.4)
    _benchmark(bench / "extra.tsv", 0.1)
    (bench / "train" / "notes.txt").write_text("not a benchmark")
    return tmp_path


def test_wall_time_is_summed_per_stage_and_within_it_per_model_or_site(results):
    times = wall_times(results / "results" / "benchmarks")
    stages = times["stages"]
    assert list(stages) == ["extra", "phantom", "recon", "train"]
    assert stages["train"] == {"jobs": 3, "s": 13.75, "by": {"amdiff": 12.75, "leqmod_gan": 1.0}}
    assert stages["recon"] == {"jobs": 2, "s": 6.0, "by": {"mct": 6.0}}   # both repeats count
    assert stages["phantom"] == {"jobs": 1, "s": 0.4, "by": {"vision": 0.4}}
    assert stages["extra"]["s"] == 0.1
    assert times["total"] == pytest.approx(13.75 + 6.0 + 0.4 + 0.1)
    assert wall_times(results / "nothing_yet") == {"total": 0, "stages": {}}


def test_a_broken_benchmark_file_is_one_clear_error(results):
    bad = results / "results" / "benchmarks" / "train" / "amdiff" / "mct.tsv"
    bad.write_text("seconds\n1\n")
    with pytest.raises(InputError, match="mct.tsv: not a Snakemake benchmark file"):
        wall_times(results / "results" / "benchmarks")
    bad.write_text(HEADER + "NA\t0\n")
    with pytest.raises(InputError, match="non-numeric 's'"):
        wall_times(results / "results" / "benchmarks")


CONFIG = {"seed": 7, "run_kind": "demo", "results_dir": "results",
          "training": {"epochs": 4, "patches_per_epoch": 8, "batch_size": 2}}


def _provenance_command(results, config: dict) -> dict:
    """Run `amdiff provenance` on the fake tree with ``config`` as the effective config."""
    path = results / "results" / "config" / "all.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=True))   # as rule job_config writes it
    out = results / "reports" / "provenance.json"
    assert main(["provenance", "--config", str(path), "--benchmarks", str(results / "results" / "benchmarks"),
                 "--source-dir", str(results), "--out", str(out)]) == 0
    assert not list(out.parent.glob(".*tmp*"))                # written atomically
    return read_provenance(out)


def test_provenance_records_the_config_hash_packages_machine_and_stage_times(results):
    record = _provenance_command(results, CONFIG)
    filled = fill_defaults(copy.deepcopy(CONFIG))
    assert record["config"] == {"sha256": config_sha256(filled), "run_kind": "demo"}
    assert filled["reports_dir"] == "reports" and config_sha256(filled) != config_sha256(CONFIG)
    # a default written out is the same setting as one left out: the same hash
    explicit = {**CONFIG, "reports_dir": "reports", "evaluation": {"nrmse_whole": "body_mean"}}
    assert _provenance_command(results, explicit)["config"] == record["config"]
    assert record["wall_time_s"]["stages"]["train"]["s"] == 13.75
    assert set(record["packages"]) == set(PACKAGES)
    assert record["packages"]["numpy"] and record["packages"]["amdiff"]
    assert set(record["machine"]) == {"hostname", "cpu_count", "gpu", "os"}
    assert record["machine"]["cpu_count"] >= 1
    # outside a git checkout there is no commit to name
    assert record["git"] == {"commit": None, "dirty": None, "dirty_paths": []}
    # another setting, another hash
    longer = {**CONFIG, "training": {**CONFIG["training"], "epochs": 5}}
    changed = _provenance_command(results, longer)
    assert changed["config"]["sha256"] != record["config"]["sha256"]
    assert changed["config"]["sha256"] == config_sha256(fill_defaults(copy.deepcopy(longer)))


def test_config_hash_ignores_key_order_only():
    reordered = dict(reversed(list(CONFIG.items())))
    assert config_sha256(reordered) == config_sha256(CONFIG)
    assert config_sha256({**CONFIG, "seed": 8}) != config_sha256(CONFIG)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_names_the_commit_and_a_dirty_tree(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "a.txt"], ["commit", "-q", "-m", "one"]):
        subprocess.run(git + args, check=True, capture_output=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    assert git_state(repo) == {"commit": head, "dirty": False, "dirty_paths": []}
    (repo / "a.txt").write_text("2\n")
    (repo / "new.txt").write_text("untracked\n")
    assert git_state(repo) == {"commit": head, "dirty": True, "dirty_paths": ["a.txt", "new.txt"]}


def test_snapshot_check_compares_the_config_not_the_numbers(results, tmp_path):
    record = provenance(CONFIG, results / "results" / "benchmarks", tmp_path)
    record["git"]["commit"] = "0" * 40            # as a committed snapshot records it
    assert provenance_problems(record, CONFIG) == []
    # the numbers are not the check's business: other wall times still match
    other_times = json.loads(json.dumps(record))
    other_times["wall_time_s"]["stages"]["train"]["s"] = 999.0
    assert provenance_problems(other_times, CONFIG) == []
    problems = provenance_problems(record, {**CONFIG, "seed": 8})
    assert len(problems) == 1 and problems[0].startswith("config sha256")
    assert provenance_problems(record, {**CONFIG, "run_kind": "study"})[-1] == \
        "run_kind 'demo' is not the config's 'study'"
    no_commit = {**record, "git": {"commit": None, "dirty": None, "dirty_paths": []}}
    assert provenance_problems(no_commit, CONFIG) == ["no git commit recorded"]
    assert provenance_problems({k: v for k, v in record.items() if k != "machine"}, CONFIG) == \
        ["no 'machine' field"]
