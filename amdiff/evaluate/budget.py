"""Training budget of every trained model, and the line that marks an untrained smoke test.

A model's budget is counted in gradient steps: one optimisation step per batch of training
patches (LeqMod-GAN's generator and discriminator each take one per batch), so

    steps = epochs trained x ceil(training.patches_per_epoch / training.batch_size).

The epochs come from the model's training log (``log.csv``, one row per epoch trained), the
patches and batch size from the config it was trained with (every model of a run shares the
``training`` section, and a change of it re-trains them). ``steps_at_best`` is the budget of
the checkpoint that is evaluated (best.pt, the best-validation epoch's).

Whether the budget limits a model is read from the same log's ``val_score`` (lower is better):
``late_gain_pct`` is how much the best score of the last quarter of the epochs improved on the
best score before it, in percent, and ``still_improving`` is true when that gain is at least
`LATE_GAIN_PCT` (our choice: a model whose validation score still fell by 1 % or more in the
last quarter of its budget has not converged, and more steps would change its results).

A run of kind ``demo`` (config ``run_kind``) trains far too little for any network to converge;
every table, figure and report page of such a run carries `smoke_test_line`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import pandas as pd

from amdiff.errors import InputError
from amdiff.io.files import check_input_file
# the training curves' log reading: the same epochs and the same best epoch as that figure
from amdiff.evaluate.figures.training import log_key, read_log, best_epoch
from amdiff.io.atomic import write_text

BUDGET_COLUMNS = ("model", "train_site", "epochs", "epochs_planned", "patches_per_epoch",
                  "batch_size", "steps_per_epoch", "steps", "best_epoch", "steps_at_best",
                  "late_gain_pct", "still_improving")
LATE_GAIN_PCT = 1.0   # still_improving: the last quarter's best validation score >= 1 % lower
# The run kind whose outputs are marked as untrained (config run_kind; amdiff/schemas/config.schema.yaml).
SMOKE_TEST_KIND = "demo"
STUDY_SNAPSHOT = "reports/study/"


def steps_per_epoch(patches_per_epoch: int, batch_size: int) -> int:
    """Batches (gradient steps) in one epoch: the last batch may be short."""
    return math.ceil(int(patches_per_epoch) / int(batch_size))


def late_gain_pct(log: pd.DataFrame) -> float | None:
    """Percent by which the best ``val_score`` of the last quarter of the epochs (at least one)
    lies below the best before it; None without a score or with fewer than 2 epochs."""
    if "val_score" not in log.columns:
        return None
    scores = log.sort_values("epoch")["val_score"].dropna().to_numpy(dtype=float)
    if len(scores) < 2:
        return None
    split = len(scores) - max(1, len(scores) // 4)
    before, late = scores[:split].min(), scores[split:].min()
    return float(100.0 * (before - late) / max(abs(before), 1e-12))


def training_budget(logs: Mapping, training: Mapping) -> pd.DataFrame:
    """One row per (model, training site) in `BUDGET_COLUMNS`, from each model's log.csv
    (``logs``: keys "model/site" or (model, site), values paths) and the config's ``training``
    section."""
    missing = [k for k in ("epochs", "patches_per_epoch", "batch_size") if k not in training]
    if missing:
        raise InputError("training", f"config lacks {', '.join(missing)}, needed for the training budget")
    per_epoch = steps_per_epoch(training["patches_per_epoch"], training["batch_size"])
    rows = []
    for key, path in logs.items():
        model, site = log_key(key)
        log = read_log(path)
        best = best_epoch(log)
        epochs = int(log["epoch"].nunique())
        gain = late_gain_pct(log)
        rows.append({"model": model, "train_site": site, "epochs": epochs,
                     "epochs_planned": int(training["epochs"]),
                     "patches_per_epoch": int(training["patches_per_epoch"]),
                     "batch_size": int(training["batch_size"]), "steps_per_epoch": per_epoch,
                     "steps": epochs * per_epoch, "best_epoch": best,
                     "steps_at_best": None if best is None else (best + 1) * per_epoch,
                     "late_gain_pct": gain,
                     "still_improving": None if gain is None else bool(gain >= LATE_GAIN_PCT)})
    table = pd.DataFrame.from_records(rows, columns=list(BUDGET_COLUMNS))
    for column in ("best_epoch", "steps_at_best"):
        table[column] = table[column].astype("Int64")
    table["still_improving"] = table["still_improving"].astype("boolean")
    table["late_gain_pct"] = table["late_gain_pct"].astype(float).round(2)
    return table.sort_values(["model", "train_site"], kind="stable", ignore_index=True)


def write_budget(table: pd.DataFrame, path) -> None:
    """Write the budget as TSV, atomically."""
    write_text(path, table.to_csv(sep="\t", index=False, na_rep=""))


def read_budget(path) -> pd.DataFrame:
    """A budget TSV written by `write_budget`, checked for its columns."""
    path = Path(path)
    check_input_file(path, "training budget")
    try:
        table = pd.read_csv(path, sep="\t", dtype={"model": str, "train_site": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise InputError(path, f"not a readable training budget TSV ({exc})") from None
    missing = [c for c in BUDGET_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"training budget lacks column(s) {', '.join(missing)}")
    return table


def smoke_test_line(budget: pd.DataFrame) -> str:
    """"Untrained smoke test (N gradient steps per model): ..."; N a range where models differ."""
    steps = sorted({int(s) for s in budget["steps"]})
    if not steps:
        count = "no trained model"
    else:
        count = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"
        count += " gradient steps per model"
    return (f"Untrained smoke test ({count}): checks the machinery, not the method — "
            f"see {STUDY_SNAPSHOT} for trained results")


def run_banner(run_kind: str, budget: pd.DataFrame | None) -> str | None:
    """The line every output of a ``demo`` run carries (None for a study or paper run)."""
    if run_kind != SMOKE_TEST_KIND:
        return None
    if budget is None:
        raise InputError("run_kind", f"a {SMOKE_TEST_KIND} run's outputs state its training budget: "
                                     "pass the training budget TSV (--budget)")
    return smoke_test_line(budget)
