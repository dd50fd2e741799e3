"""benchmarks/demo_time.py: per-stage sums of the rules' benchmark files, and the wall time of the
newest Snakemake log whose run finished."""

from __future__ import annotations

import runpy

import pytest

from tests.conftest import REPO

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(str(REPO / "benchmarks" / "demo_time.py"))


def _benchmark(path, seconds, rss):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t1\n")


def test_stage_table_sums_each_stages_jobs(script, tmp_path):
    _benchmark(tmp_path / "benchmarks" / "train" / "amdiff" / "mct.tsv", 30.5, 900)
    _benchmark(tmp_path / "benchmarks" / "train" / "nnmamba" / "mct.tsv", 10.0, 1200)
    _benchmark(tmp_path / "benchmarks" / "recon" / "mct" / "s1.tsv", 2.0, "NA")
    table = script["stage_table"](tmp_path).set_index("stage")
    assert list(table.index) == ["train", "recon"]           # largest sum first
    assert table.loc["train", "jobs"] == 2
    assert table.loc["train", "seconds_sum"] == pytest.approx(40.5)
    assert table.loc["train", "seconds_max"] == pytest.approx(30.5)
    assert table.loc["train", "max_rss_mb"] == 1200


def test_the_newest_finished_log_gives_the_wall_time(script, tmp_path):
    done = "  Date: 2026-12-01 10:00:00\n  Command: snakemake --cores 2\n12 of 12 steps (100%) done\nElapsed time: 0:14:59.5\n"
    (tmp_path / "2026-12-01T100000.1.snakemake.log").write_text(done)
    (tmp_path / "2026-12-02T100000.1.snakemake.log").write_text("  Date: 2026-12-02\n3 of 12 steps (25%) done\n")
    (tmp_path / "2026-11-30T100000.1.snakemake.log").write_text(done.replace("0:14:59", "0:30:00"))
    log = script["finished_log"](tmp_path)
    assert log.name.startswith("2026-12-01")
    run = script["run_summary"](log)
    assert (run["steps"], run["elapsed"], run["command"]) == ("12", "0:14:59", "snakemake --cores 2")
