"""Seed variance: two models' difference against the spread between their training seeds."""

import copy

import pandas as pd
import pytest

from amdiff.config import read_config, replicate_base, seed_replicates, validate_config
from amdiff.errors import InputError
from amdiff.evaluate import seeds

REPLICATES = {"amdiff": ["amdiff_seed1"], "med_ddpm": ["med_ddpm_seed1"]}


def _rows(model: str, values: list[float], metric: str = "nrmse_whole", site: str = "mct",
          count_percent: float = 5.0) -> list[dict]:
    return [{"model": model, "site": site, "subject": f"s{k}", "level": "p005", "realization": 0,
             "count_percent": count_percent, "clinical_percent": count_percent, metric: v}
            for k, v in enumerate(values)]


def _table(values: dict[str, list[float]]) -> pd.DataFrame:
    df = pd.DataFrame([r for model, v in values.items() for r in _rows(model, v)])
    return seeds.seed_variance(df, REPLICATES, metrics=("nrmse_whole",))


def test_difference_larger_than_both_spreads_exceeds():
    table = _table({"amdiff": [0.10, 0.12], "amdiff_seed1": [0.11, 0.13],
                    "med_ddpm": [0.20, 0.22], "med_ddpm_seed1": [0.24, 0.26]})
    row = table.iloc[0]
    assert row["reference_seed_means"] == pytest.approx([0.11, 0.12])
    assert row["model_seed_means"] == pytest.approx([0.21, 0.25])
    assert row["reference_spread"] == pytest.approx(0.01) and row["model_spread"] == pytest.approx(0.04)
    assert row["difference"] == pytest.approx(0.115 - 0.23)
    assert row["verdict"] == "exceeds seed spread" and row["n_images"] == 2


def test_difference_within_a_seed_spread_is_not_claimed():
    # Med-DDPM's two seeds differ by more than the models do
    table = _table({"amdiff": [0.20, 0.20], "amdiff_seed1": [0.21, 0.21],
                    "med_ddpm": [0.15, 0.15], "med_ddpm_seed1": [0.30, 0.30]})
    assert table.iloc[0]["verdict"] == "within seed spread"


def test_only_images_every_seed_predicted_count():
    values = {"amdiff": [0.1, 0.1, 9.0], "amdiff_seed1": [0.1, 0.1], "med_ddpm": [0.2, 0.2, 9.0],
              "med_ddpm_seed1": [0.2, 0.2, 9.0]}
    row = _table(values).iloc[0]
    assert row["n_images"] == 2 and row["reference_seed_means"] == pytest.approx([0.1, 0.1])


def test_markdown_and_tsv_name_every_seed(tmp_path):
    table = _table({"amdiff": [0.10], "amdiff_seed1": [0.11], "med_ddpm": [0.20], "med_ddpm_seed1": [0.22]})
    seeds.write_seed_variance(table, tmp_path / "s.tsv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert "0.1000, 0.1100" in md and "0.2000, 0.2200" in md and "exceeds seed spread" in md
    back = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    assert back.loc[0, "model_seed_means"] == "0.2000, 0.2200"


def test_replicate_names_and_config_check(repo):
    demo_config = read_config(repo / "config" / "config.yaml")
    assert replicate_base("amdiff_seed12") == "amdiff" and replicate_base("med_ddpm") == "med_ddpm"
    assert replicate_base("amdiff_seed0") == "amdiff_seed0"   # seed 0 is the model itself
    config = {**copy.deepcopy(demo_config), "seed_replicates": {"models": ["amdiff", "med_ddpm"], "count": 3}}
    assert seed_replicates(validate_config(config)) == {
        "amdiff": ["amdiff_seed1", "amdiff_seed2"], "med_ddpm": ["med_ddpm_seed1", "med_ddpm_seed2"]}
    untrained = {**demo_config, "models": {**demo_config["models"], "variants": ["amdiff"]},
                 "seed_replicates": {"models": ["amdiff", "amdiff_no_lor"], "count": 2}}
    with pytest.raises(InputError, match="amdiff_no_lor.*not trained"):
        validate_config(untrained)
