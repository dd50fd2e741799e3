"""Training budget (gradient steps per model) from hand-made logs and configs, the budget note of
Tables 2-5, and the smoke-test line of a demo run's tables, figures and report captions."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import jinja2
import matplotlib.text
import numpy as np
import pandas as pd
import pytest

from amdiff.cli import main
from amdiff.errors import InputError
from amdiff.evaluate import columns
from amdiff.evaluate import figures as F
from amdiff.evaluate.figures import training as figure_training
from amdiff.evaluate.budget import (BUDGET_COLUMNS, read_budget, run_banner, smoke_test_line,
                                    training_budget, write_budget)
from amdiff.evaluate.tables import TABLES, build_table, to_latex, to_markdown

SPEC2 = TABLES[0]
FAST = {"n_resamples": 99, "seed": 0}
SMOKE = "Untrained smoke test"


def _log(path: Path, epochs: int, best: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": range(epochs), "train_total": np.linspace(1, 0.5, epochs),
                  "val_score": np.linspace(2, 1, epochs), "best": best}).to_csv(path, index=False)
    return path


@pytest.fixture
def logs(tmp_path) -> dict:
    """AMDiff trained 3 epochs on mct (best at epoch 1) and on uexplorer; LeqMod-GAN 2 on mct."""
    return {"amdiff/mct": _log(tmp_path / "amdiff" / "mct" / "log.csv", 3, [1, 1, 0]),
            "amdiff/uexplorer": _log(tmp_path / "amdiff" / "uexplorer" / "log.csv", 3, [1, 0, 1]),
            ("leqmod_gan", "mct"): _log(tmp_path / "leqmod_gan" / "mct" / "log.csv", 2, [1, 1])}


TRAINING = {"epochs": 3, "patches_per_epoch": 9, "batch_size": 2}   # ceil(9 / 2) = 5 batches


def test_budget_counts_steps_from_the_logs_and_the_config(logs, tmp_path):
    budget = training_budget(logs, TRAINING)
    assert tuple(budget.columns) == BUDGET_COLUMNS
    rows = budget.set_index(["model", "train_site"])
    assert rows.loc[("amdiff", "mct"), ["epochs", "steps_per_epoch", "steps"]].tolist() == [3, 5, 15]
    assert rows.loc[("amdiff", "mct"), ["best_epoch", "steps_at_best"]].tolist() == [1, 10]
    assert rows.loc[("amdiff", "uexplorer"), "steps_at_best"] == 15
    # the epochs are the log's (a run stopped early), the batches the config's
    assert rows.loc[("leqmod_gan", "mct"), ["epochs", "epochs_planned", "steps"]].tolist() == [2, 3, 10]
    # another batch size, another budget
    larger = training_budget(logs, {**TRAINING, "batch_size": 4}).set_index(["model", "train_site"])
    assert larger.loc[("amdiff", "mct"), "steps"] == 3 * math.ceil(9 / 4)
    write_budget(budget, tmp_path / "budget.tsv")
    back = read_budget(tmp_path / "budget.tsv")
    assert back[["model", "train_site", "steps"]].values.tolist() == \
        budget[["model", "train_site", "steps"]].values.tolist()
    with pytest.raises(InputError, match="patches_per_epoch"):
        training_budget(logs, {"epochs": 3, "batch_size": 2})


def test_budget_command_reads_the_config_the_models_trained_with(tmp_path, repo):
    # the demo config: 4 epochs of 8 patches in batches of 2 are 16 steps, as the README says
    log = _log(tmp_path / "amdiff" / "mct" / "log.csv", 4, [1, 1, 1, 0])
    out = tmp_path / "budget.tsv"
    assert main(["training-budget", "--config", str(repo / "config" / "config.yaml"),
                 "--log", f"amdiff/mct={log}", "--out", str(out)]) == 0
    row = read_budget(out).iloc[0]
    assert (row["model"], row["train_site"], row["steps"], row["steps_at_best"]) == ("amdiff", "mct", 16, 12)
    assert smoke_test_line(read_budget(out)).startswith("Untrained smoke test (16 gradient steps per model)")


def _metrics() -> pd.DataFrame:
    rows = []
    for model, offset in (("amdiff", 0.0), ("leqmod_gan", 0.05), ("med_ddpm", 0.1)):
        for i in range(3):
            row = {c: np.nan for c in columns.COLUMNS}
            row.update(model=model, site="mct", subject=f"s{i}", level="p005", realization=0,
                       count_percent=5.0, clinical_percent=5.0, nrmse_whole=0.1 + 0.01 * i + offset)
            rows.append(row)
    return pd.DataFrame(rows)


def test_table_notes_state_the_budget_computed_from_logs_and_config(logs):
    table = build_table(_metrics(), SPEC2, **FAST)
    budget = training_budget(logs, TRAINING)
    md = to_markdown(table, SPEC2, budget=budget)
    assert ("AMDiff (trained on mCT, uExplorer): 15 steps (3 epochs × 5 batches: 9 patches per "
            "epoch, batch size 2)") in md
    assert "LeqMod-GAN (trained on mCT): 10 steps (2 epochs × 5 batches" in md
    assert "3D Med-DDPM" not in md.split("Training budget")[1].split("\n")[0]   # no log: not listed
    tex = to_latex(table, SPEC2, budget=budget)
    assert r"15 steps (3 epochs $\times$ 5 batches" in tex
    # the text follows the config: 16 patches in batches of 2 are 8 steps per epoch
    md16 = to_markdown(table, SPEC2, budget=training_budget(logs, {**TRAINING, "patches_per_epoch": 16}))
    assert "AMDiff (trained on mCT, uExplorer): 24 steps (3 epochs × 8 batches: 16 patches" in md16
    assert "Training budget" not in to_markdown(table, SPEC2)              # no budget given


def test_demo_banner_heads_tables_only_for_the_demo_kind(logs):
    table = build_table(_metrics(), SPEC2, **FAST)
    budget = training_budget(logs, TRAINING)
    banner = run_banner("demo", budget)
    assert banner == ("Untrained smoke test (10–15 gradient steps per model): checks the "
                      "machinery, not the method — see reports/study/ for trained results")
    md = to_markdown(table, SPEC2, banner=banner, budget=budget)
    assert md.splitlines()[:3] == [f"## {SPEC2.title}", "", f"**{banner}**"]
    tex = to_latex(table, SPEC2, banner=banner, budget=budget)
    assert r"\textbf{Untrained smoke test (10--15 gradient steps per model): checks the machinery, " \
           r"not the method --- see reports/study/ for trained results}" in tex
    for kind in ("study", "paper"):
        assert run_banner(kind, budget) is None
    assert SMOKE not in to_markdown(table, SPEC2, budget=budget) + to_latex(table, SPEC2, budget=budget)
    one = budget[budget["model"] == "amdiff"]
    assert smoke_test_line(one).startswith("Untrained smoke test (15 gradient steps per model)")
    with pytest.raises(InputError, match="--budget"):
        run_banner("demo", None)


def _write_metrics(path: Path) -> Path:
    # AMDiff alone: no peer to test, so the bootstrap does not slow the command
    _metrics().query("model == 'amdiff'").to_csv(path, sep="\t", index=False)
    return path


@pytest.mark.parametrize("kind", ["demo", "study"])
def test_tables_command_marks_every_markdown_and_latex_table_of_a_demo(kind, logs, tmp_path):
    budget = tmp_path / "budget.tsv"
    write_budget(training_budget(logs, TRAINING), budget)
    out = tmp_path / "tables"
    assert main(["tables", "--metrics", str(_write_metrics(tmp_path / "metrics.tsv")),
                 "--out-dir", str(out), "--budget", str(budget), "--run-kind", kind]) == 0
    files = [*(out / f"{spec.name}.{ext}" for spec in TABLES for ext in ("md", "tex")),
             out / "headline.md", out / "paper_vs_reproduction.md"]
    marked = [f.name for f in files if SMOKE in f.read_text()]
    assert marked == ([f.name for f in files] if kind == "demo" else [])
    if kind == "demo":   # the Markdown says it under its title
        assert (out / "headline.md").read_text().splitlines()[2].startswith(f"**{SMOKE} (10–15 ")
        assert "AMDiff (trained on mCT, uExplorer): 15 steps" in (out / "table4_ablation.md").read_text()


def _suptitle(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def test_demo_banner_tops_every_figure_only_for_the_demo_kind(logs, tmp_path):
    banner = run_banner("demo", training_budget(logs, TRAINING))
    true = np.array([1.0, 2.0, 4.0, 7.0])
    quant = pd.DataFrame({"model": "amdiff", "site": "mct", "subject": [f"s{i}" for i in range(4)],
                          "level": "p005", "realization": 0, "count_percent": 5.0,
                          "mtv_true_ml": true, "mtv_auto_ml": 2 * true})
    fig7 = F.regression_figure(quant, ["amdiff"], quantities=["mtv"], banner=banner)
    assert _suptitle(fig7).splitlines() == [banner,
                                            "Automatic versus ground-truth quantification (test cases)"]
    curves = F.training_curves(logs, banner=banner)
    assert _suptitle(curves) == banner
    slices = F.denoising_panels({"HC reference": np.ones((6, 5, 7))}, {},
                                title=F.with_banner("Denoising: mct", banner))
    assert _suptitle(slices).splitlines()[0] == banner
    for fig in (F.regression_figure(quant, ["amdiff"], quantities=["mtv"], banner=run_banner("study", None)),
                F.training_curves(logs)):
        assert not any(SMOKE in t.get_text() for t in fig.findobj(matplotlib.text.Text))


@pytest.mark.parametrize("kind", ["demo", "study"])
def test_figure_training_command_marks_a_demo(kind, logs, tmp_path, monkeypatch):
    budget = tmp_path / "budget.tsv"
    write_budget(training_budget(logs, TRAINING), budget)
    saved = []
    monkeypatch.setattr(figure_training, "save_figure", lambda fig, *args, **kwargs: saved.append(fig))
    assert main(["figure-training", "--log", f"amdiff/mct={logs['amdiff/mct']}",
                 "--png", str(tmp_path / "c.png"), "--pdf", str(tmp_path / "c.pdf"),
                 "--budget", str(budget), "--run-kind", kind]) == 0
    assert (SMOKE in _suptitle(saved[0])) == (kind == "demo")


# --- the HTML report -------------------------------------------------------------------

CAPTIONS = Path(__file__).resolve().parent.parent / "reports" / "captions"
# the report pages of model results (QC and cohort pages show data, not models)
MODEL_CAPTIONS = ("table2_denoising", "table3_segmentation", "table4_ablation",
                  "table5_quantification", "headline", "paper_vs_reproduction", "claims", "metrics",
                  "fig4_denoising", "fig5_lesions", "fig6_organs", "fig7_regression",
                  "training_curves", "training_log", "training_progress", "training_budget")


def _render(path: Path, config: dict) -> str:
    # Snakemake's report renders captions with these settings and a `snakemake` object
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    snakemake = SimpleNamespace(config=config, wildcards=SimpleNamespace(site="mct", model="amdiff",
                                                                         train_site="mct"))
    return env.from_string(path.read_text()).render(snakemake=snakemake, categories={}, files=[])


@pytest.mark.parametrize("name", [*MODEL_CAPTIONS, "workflow"])
def test_report_pages_say_a_demo_is_an_untrained_smoke_test(name, logs):
    path = CAPTIONS.parent / "workflow.rst" if name == "workflow" else CAPTIONS / f"{name}.rst"
    training = {**TRAINING, "epochs": 3}
    # the caption's count is the config's planned budget, as the tables count a complete run
    planned = training_budget({"amdiff/mct": logs["amdiff/mct"]}, training)
    demo = _render(path, {"run_kind": "demo", "training": training})
    assert f"**{smoke_test_line(planned)}**" in demo
    for config in ({"run_kind": "study", "training": training}, {"run_kind": "paper", "training": training},
                   {"training": training}):   # unset: a study
        assert SMOKE not in _render(path, config)


def test_budget_says_which_models_were_still_improving_at_the_end(tmp_path):
    """A curve still falling in its last quarter is flagged; a flat or rising one is not."""
    epochs = 8
    falling = np.linspace(1.0, 0.5, epochs)                      # last quarter 0.57, 0.5 vs 0.64
    flat = np.r_[np.linspace(1.0, 0.5, 6), [0.5, 0.502]]          # converged after 6 epochs
    rising = np.r_[np.linspace(1.0, 0.4, 6), [0.45, 0.6]]         # overfits at the end
    logs = {}
    for name, curve in (("falling", falling), ("flat", flat), ("rising", rising)):
        path = tmp_path / name / "mct" / "log.csv"
        path.parent.mkdir(parents=True)
        pd.DataFrame({"epoch": range(epochs), "val_score": curve}).to_csv(path, index=False)
        logs[f"{name}/mct"] = path
    rows = training_budget(logs, {"epochs": epochs, "patches_per_epoch": 4, "batch_size": 2}).set_index("model")
    before = float(falling[:6].min())
    assert rows.loc["falling", "late_gain_pct"] == pytest.approx(100 * (before - 0.5) / before, abs=0.01)
    assert rows["still_improving"].to_dict() == {"falling": True, "flat": False, "rising": False}
    assert rows.loc["rising", "late_gain_pct"] < 0
    # a log without validation scores says nothing about convergence
    bare = tmp_path / "bare" / "mct" / "log.csv"
    bare.parent.mkdir(parents=True)
    pd.DataFrame({"epoch": range(3), "train_total": [3.0, 2.0, 1.0]}).to_csv(bare, index=False)
    row = training_budget({"bare/mct": bare}, {"epochs": 3, "patches_per_epoch": 4, "batch_size": 2}).iloc[0]
    assert pd.isna(row["still_improving"]) and pd.isna(row["late_gain_pct"])
