"""Seed variance: does the difference between two models exceed the spread between training seeds?

A seed replicate ("amdiff_seed1", config ``seed_replicates``) is the same model trained again
from another seed; its predictions of the same test images are evaluated like the model's own.
For each test site, count level and metric this table holds every seed's mean over the test
images, the seed-to-seed spread of each model (max - min of its seed means), and the
difference of the two models' means over seeds. The difference "exceeds the seed spread" when
its magnitude is larger than the larger of the two spreads (our choice: with two seeds per
model there is no variance estimate to test against, so the rule is the plain comparison the
issue of a trained study asks for, stated in the table).
"""

from __future__ import annotations

import pandas as pd

from amdiff.evaluate.columns import KEYS
from amdiff.io.atomic import write_text

SEED_METRICS = ("nrmse_whole", "nrmse_lesion", "nrmse_liver")
GROUP_KEYS = ("site", "count_percent", "clinical_percent")
COLUMNS = (*GROUP_KEYS, "metric", "model", "reference", "n_images", "model_seed_means",
           "reference_seed_means", "model_spread", "reference_spread", "difference", "verdict")


def _seed_means(df: pd.DataFrame, names: list[str], metric: str) -> list[float]:
    """Mean of ``metric`` over the images of each seed replicate, in ``names`` order."""
    return [float(df.loc[df["model"] == name, metric].astype(float).mean()) for name in names]


def seed_variance(df: pd.DataFrame, replicates: dict[str, list[str]],
                  metrics=SEED_METRICS) -> pd.DataFrame:
    """One row per (site, count level, metric) and compared model: the first model of
    ``replicates`` (the reference, e.g. amdiff) against each other one (e.g. med_ddpm).

    ``replicates`` maps a model to its replicates' names; the model itself is seed 0. Only
    images every seed of both models predicted are used, so the means are over the same cases.
    """
    models = list(replicates)
    if len(models) < 2:
        raise ValueError("seed variance needs two models with seed replicates")
    seeds = {m: [m, *replicates[m]] for m in models}
    reference, rows = models[0], []
    for model in models[1:]:
        names = seeds[reference] + seeds[model]
        sub = df[df["model"].isin(names)]
        for metric in metrics:
            values = sub[[*KEYS, metric]].dropna(subset=[metric])
            # cases every seed of both models has: the same images behind every mean
            complete = values.groupby(["site", "subject", "level", "realization"])["model"].transform("nunique")
            values = values[complete == len(names)]
            for group, rows_g in values.groupby(list(GROUP_KEYS), sort=True):
                ref_means, model_means = (_seed_means(rows_g, seeds[reference], metric),
                                          _seed_means(rows_g, seeds[model], metric))
                ref_spread, model_spread = max(ref_means) - min(ref_means), max(model_means) - min(model_means)
                difference = sum(ref_means) / len(ref_means) - sum(model_means) / len(model_means)
                exceeds = abs(difference) > max(ref_spread, model_spread)
                rows.append({**dict(zip(GROUP_KEYS, group)), "metric": metric, "model": model,
                             "reference": reference,
                             "n_images": int(rows_g[rows_g["model"] == reference].shape[0]),
                             "model_seed_means": model_means, "reference_seed_means": ref_means,
                             "model_spread": model_spread, "reference_spread": ref_spread,
                             "difference": difference,
                             "verdict": "exceeds seed spread" if exceeds else "within seed spread"})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def to_markdown(table: pd.DataFrame, banner: str | None = None) -> str:
    lines = ["# Seed variance: model difference against the spread between training seeds", ""]
    if banner:
        lines += [f"**{banner}**", ""]
    if table.empty:
        return "\n".join(lines + ["No test image has predictions from every seed of both models.", ""])
    ref = table["reference"].iloc[0]
    lines += [f"Difference = mean over seeds of {ref} − mean over seeds of the other model "
              "(means over the same test images); spread = max − min of a model's seed means. "
              "The difference exceeds the seed spread when its magnitude is larger than both "
              "spreads.", "",
              "| site | count % | metric | model | n images | seeds of reference | seeds of model "
              "| spread ref / model | difference | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        lines.append(f"| {row['site']} | {row['count_percent']:g} | {row['metric']} | {row['model']} "
                     f"| {row['n_images']} | {_numbers(row['reference_seed_means'])} "
                     f"| {_numbers(row['model_seed_means'])} "
                     f"| {row['reference_spread']:.4f} / {row['model_spread']:.4f} "
                     f"| {row['difference']:+.4f} | {row['verdict']} |")
    return "\n".join(lines + [""])


def write_seed_variance(table: pd.DataFrame, tsv, md, banner: str | None = None) -> None:
    out = table.copy()
    for column in ("model_seed_means", "reference_seed_means"):
        out[column] = out[column].map(_numbers)
    write_text(tsv, out.to_csv(sep="\t", index=False, na_rep="NaN"))
    write_text(md, to_markdown(table, banner))
