"""Sanity checks every user of a trained study expects, read from the per-case metrics table.

Not the paper's claims (amdiff.evaluate.paper) but the floor a trained model must clear:

- every trained denoiser has a lower pooled whole-image NRMSE than the low-count input itself,
  at every test site and count level, and AMDiff a lower one than the Gaussian filter;
- AMDiff's mean lesion Dice is at least 0.5 and its liver and lung Dice at least 0.8; the
  comparison segmenters are reported against the same thresholds.

Pooled = the mean over the test images of the group. The thresholds are this project's
targets for its study (not the paper's numbers, which come from other data). A check whose
models or metric are missing is "n/a", never "pass".
"""

from __future__ import annotations

import math

import pandas as pd

from amdiff.evaluate.columns import ALL_SITES
from amdiff.io.atomic import write_text

LOW_COUNT, GAUSSIAN, REFERENCE = "lowcount_input", "gaussian_filter", "amdiff"
TRAINING_FREE = (LOW_COUNT, GAUSSIAN)
DICE_TARGETS = {"dice_lesion": 0.5, "dice_liver": 0.8, "dice_lung": 0.8}
COLUMNS = ("check", "model", "site", "count_percent", "n_images", "value", "target", "result")


def _mean(rows: pd.DataFrame, model: str, metric: str) -> tuple[float, int]:
    values = rows.loc[rows["model"] == model, metric].astype(float).dropna()
    return (float(values.mean()) if len(values) else math.nan), int(len(values))


def _result(value: float, target: float, lower_is_better: bool) -> str:
    if not (math.isfinite(value) and math.isfinite(target)):
        return "n/a"
    return "pass" if (value < target if lower_is_better else value >= target) else "fail"


def denoising_checks(df: pd.DataFrame) -> list[dict]:
    """Each trained denoiser against the low-count input, and AMDiff against the Gaussian
    filter, per test site and count level: pooled whole-image NRMSE, lower passes."""
    rows = []
    denoisers = [m for m in dict.fromkeys(df["model"]) if m not in TRAINING_FREE
                 and df.loc[df["model"] == m, "nrmse_whole"].notna().any()]
    for (site, level), group in df.groupby(["site", "count_percent"], sort=True):
        pairs = [(m, LOW_COUNT) for m in denoisers] + [(REFERENCE, GAUSSIAN)]
        for model, peer in pairs:
            value, n = _mean(group, model, "nrmse_whole")
            target, _ = _mean(group, peer, "nrmse_whole")
            rows.append({"check": f"nrmse_whole below {peer}", "model": model, "site": site,
                         "count_percent": level, "n_images": n, "value": value, "target": target,
                         "result": _result(value, target, lower_is_better=True)})
    return rows


def segmentation_checks(df: pd.DataFrame) -> list[dict]:
    """Mean Dice over every test image (all sites) of each segmenting model against the
    fixed targets of DICE_TARGETS."""
    rows = []
    segmenters = [m for m in dict.fromkeys(df["model"])
                  if df.loc[df["model"] == m, "dice_liver"].notna().any()]
    for model in segmenters:
        for metric, target in DICE_TARGETS.items():
            value, n = _mean(df, model, metric)
            rows.append({"check": f"{metric} at least", "model": model, "site": ALL_SITES,
                         "count_percent": math.nan, "n_images": n, "value": value,
                         "target": target, "result": _result(value, target, lower_is_better=False)})
    return rows


def study_checks(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(denoising_checks(df) + segmentation_checks(df), columns=list(COLUMNS))


def to_markdown(table: pd.DataFrame, banner: str | None = None) -> str:
    counts = table["result"].value_counts()
    lines = ["# Study checks: does every trained model clear the floor?", ""]
    if banner:
        lines += [f"**{banner}**", ""]
    lines += [f"{counts.get('pass', 0)} pass, {counts.get('fail', 0)} fail, {counts.get('n/a', 0)} n/a. "
              "Denoising: pooled (mean over test images) whole-image NRMSE of each trained denoiser "
              "must be below the low-count input's, and AMDiff's below the Gaussian filter's, at "
              "every site and count level. Segmentation: mean Dice over all test images against "
              "this project's targets (lesion 0.5, liver and lung 0.8); every lesion of the "
              "synthetic study cohort is at least 1 mL.", "",
              "| check | model | site | count % | n images | value | target | result |",
              "|---|---|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        level = "" if not math.isfinite(row["count_percent"]) else f"{row['count_percent']:g}"
        lines.append(f"| {row['check']} | {row['model']} | {row['site']} | {level} | {row['n_images']} "
                     f"| {row['value']:.4f} | {row['target']:.4f} | **{row['result']}** |")
    return "\n".join(lines + [""])


def write_study_checks(table: pd.DataFrame, tsv, md, banner: str | None = None) -> None:
    write_text(tsv, table.to_csv(sep="\t", index=False, na_rep="NaN", float_format="%.6g"))
    write_text(md, to_markdown(table, banner))
