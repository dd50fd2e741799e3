"""The committed study snapshot (reports/study/) belongs to config/study.yaml: its provenance
records that config's hash (the config as the schema of the recorded commit fills in its
defaults, so a key added to the schema since does not orphan the snapshot), a trained (not
demo) run, a git commit and wall times, and it holds every table and figure that config's
evaluation writes. Its numbers are not checked."""

from __future__ import annotations

from pathlib import Path

import pytest

import subprocess

import yaml

from amdiff.config import fill_defaults, load_config, read_config
from amdiff.provenance import provenance_problems, read_provenance

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO / "reports" / "study"
CONFIG = REPO / "config" / "study.yaml"
TABLES = ["table2_denoising", "table3_segmentation", "table4_ablation", "table5_quantification"]


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(CONFIG)


def _config_at(commit: str) -> dict:
    """config/study.yaml as the schema of ``commit`` fills it: the run's effective config. A key
    added to the schema later (with its default) is not part of that run's hash."""
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:amdiff/schemas/config.schema.yaml"],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"the snapshot's commit {commit[:12]} is not in this clone's history")
    return fill_defaults(read_config(CONFIG), yaml.safe_load(shown.stdout))


def test_snapshot_provenance_matches_the_study_config(config):
    record = read_provenance(SNAPSHOT / "provenance.json")
    assert provenance_problems(record, _config_at(record["git"]["commit"])) == []
    assert record["config"]["run_kind"] == "study"
    stages = record["wall_time_s"]["stages"]
    assert {"train", "predict", "evaluate", "recon"} <= set(stages)


def test_snapshot_holds_every_table_and_figure_of_the_study(config):
    assert config["reports_dir"] == "reports/study"
    expected = [f"tables/{name}.{ext}" for name in TABLES for ext in ("tsv", "md", "tex")]
    expected += [f"tables/{name}" for name in ("headline.md", "paper_vs_reproduction.md", "claims.tsv")]
    if config.get("seed_replicates"):
        expected += ["tables/seed_variance.tsv", "tables/seed_variance.md"]
    test_sites = sorted({t for tests in config["training"]["train_sites"].values() for t in tests})
    expected += [f"figures/fig{n}_{kind}_{site}.png" for n, kind in ((4, "denoising"), (5, "lesions"),
                                                                      (6, "organs")) for site in test_sites]
    expected += ["figures/fig7_regression.png", "figures/training_curves.png"]
    missing = [name for name in expected if not (SNAPSHOT / name).is_file()]
    assert missing == []


def test_snapshot_tables_carry_no_smoke_test_line():
    # a study run is trained: its tables must not say they come from an untrained smoke test
    for path in sorted((SNAPSHOT / "tables").glob("*.md")):
        assert "Untrained smoke test" not in path.read_text(), path.name
