"""Cohort summary per site in the spirit of the paper's Table 1, and per-lesion measurements.

Spread is the sample standard deviation (ddof=1), as in the paper's "mean ± std"; it is NaN
(printed as "–") for a single value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from amdiff.errors import InputError
from amdiff.io.atomic import atomic_path, write_text
from amdiff.io.nifti import check_same_grid, read_volume
from amdiff.contracts import SPLITS
from amdiff.qc.figures import level_percent

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def lesion_stats_from_masks(suv_path: str | os.PathLike,
                            lesion_path: str | os.PathLike) -> list[dict]:
    """Measure every 26-connected lesion component of a binary mask in an SUV image.

    Returns one dict per component, in scipy's raster-scan label order, with ``lesion`` (1-based
    component id), ``n_voxels``, ``volume_ml`` (from the affine), ``suv_mean``, ``suv_max``
    (g/mL) and ``centroid_mm`` (world RAS+ coordinates). An empty mask gives an empty list.
    """
    suv = read_volume(suv_path, "suv")
    lesion = read_volume(lesion_path, "labels")
    check_same_grid(suv, lesion)
    values = np.unique(lesion.data)
    if not np.all(np.isin(values, (0, 1))):
        raise InputError(lesion.path,
                         f"lesion mask must be binary 0/1, found values {values[:8].tolist()}")
    labels, n = ndimage.label(lesion.data > 0, structure=CONNECTIVITY_26)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    means = ndimage.mean(suv.data.astype(np.float64), labels, index)
    maxima = ndimage.maximum(suv.data, labels, index)
    centroids = ndimage.center_of_mass(np.ones(labels.shape), labels, index)
    out = []
    for i in range(n):
        world = suv.affine @ np.array([*centroids[i], 1.0])
        out.append({
            "lesion": int(index[i]),
            "n_voxels": int(counts[i]),
            "volume_ml": float(counts[i]) * suv.voxel_volume_ml,
            "suv_mean": float(means[i]),
            "suv_max": float(maxima[i]),
            "centroid_mm": tuple(float(c) for c in world[:3]),
        })
    return out


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    sd = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return float(arr.mean()), sd


def _number(source: str, key: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(source, f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(out) or out < 0:
        raise InputError(source, f"{key} must be a finite non-negative number, got {value!r}")
    return out


def _suv_max(source: str, lesion: Mapping) -> float:
    # Measured values (lesion_stats_from_masks) win over the phantom's truth values.
    for key in ("suv_max", "suv_max_true"):
        if key in lesion:
            return _number(source, key, lesion[key])
    raise InputError(source, "lesion entry has neither suv_max nor suv_max_true")


def _level_events(source: str, level: str, value) -> float:
    # Several realizations of one level: report their mean (they have equal expected counts).
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            raise InputError(source, f"events_per_level[{level}] is an empty list")
        return float(np.mean([_number(source, f"events_per_level[{level}]", v) for v in value]))
    return _number(source, f"events_per_level[{level}]", value)


def cohort_summary(rows: list[dict]) -> pd.DataFrame:
    """Summarise subjects per site, one row per site in order of first appearance.

    Each input row: ``site``, ``subject``, ``split`` (train/val/test), ``events`` (full list),
    optional ``events_per_level`` {level name: events or [events per realization]},
    ``lesions`` [{volume_ml, suv_max or suv_max_true, ...}], optional ``dose_mbq``.
    Columns: counts per split, events (millions) mean/sd overall and per level
    (``events_M_<level>_mean/_sd``), lesion count total and per subject, lesion volume
    mean/sd/min/max (mL), lesion SUVmax mean/sd (g/mL), dose mean/sd (MBq, NaN if not given).
    """
    if not rows:
        raise InputError("cohort summary", "no subjects given")
    seen: set[tuple[str, str]] = set()
    by_site: dict[str, list[dict]] = {}
    for row in rows:
        for key in ("site", "subject", "split", "events"):
            if key not in row:
                raise InputError(f"cohort row {row.get('site', '?')}/{row.get('subject', '?')}",
                                 f"missing key '{key}'")
        source = f"cohort row {row['site']}/{row['subject']}"
        if row["split"] not in SPLITS:
            raise InputError(source, f"split must be one of {SPLITS}, got {row['split']!r}")
        if (row["site"], row["subject"]) in seen:
            raise InputError(source, "subject listed twice")
        seen.add((row["site"], row["subject"]))
        by_site.setdefault(str(row["site"]), []).append(row)

    all_levels = sorted({str(lvl) for r in rows for lvl in (r.get("events_per_level") or {})},
                        key=level_percent)
    records = []
    for site, subjects in by_site.items():
        rec: dict = {"site": site, "n_subjects": len(subjects)}
        for split in SPLITS:
            rec[f"n_{split}"] = sum(1 for s in subjects if s["split"] == split)
        events = [_number(f"cohort row {site}/{s['subject']}", "events", s["events"]) / 1e6
                  for s in subjects]
        rec["events_M_mean"], rec["events_M_sd"] = _mean_sd(events)
        for level in all_levels:
            per = [_level_events(f"cohort row {site}/{s['subject']}", level,
                                 s["events_per_level"][level]) / 1e6
                   for s in subjects if level in (s.get("events_per_level") or {})]
            rec[f"events_M_{level}_mean"], rec[f"events_M_{level}_sd"] = _mean_sd(per)
        lesions = [(f"cohort row {site}/{s['subject']}", les)
                   for s in subjects for les in (s.get("lesions") or [])]
        per_subject = [len(s.get("lesions") or []) for s in subjects]
        rec["lesions_total"] = int(sum(per_subject))
        rec["lesions_per_subject_mean"], rec["lesions_per_subject_sd"] = _mean_sd(per_subject)
        volumes = []
        for src, les in lesions:
            if "volume_ml" not in les:
                raise InputError(src, "lesion entry has no volume_ml")
            volumes.append(_number(src, "volume_ml", les["volume_ml"]))
        rec["lesion_volume_ml_mean"], rec["lesion_volume_ml_sd"] = _mean_sd(volumes)
        rec["lesion_volume_ml_min"] = min(volumes) if volumes else math.nan
        rec["lesion_volume_ml_max"] = max(volumes) if volumes else math.nan
        rec["lesion_suvmax_mean"], rec["lesion_suvmax_sd"] = _mean_sd(
            [_suv_max(src, les) for src, les in lesions])
        doses = [_number(f"cohort row {site}/{s['subject']}", "dose_mbq", s["dose_mbq"])
                 for s in subjects if s.get("dose_mbq") is not None]
        rec["dose_mbq_mean"], rec["dose_mbq_sd"] = _mean_sd(doses)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _fmt(value: float, digits: int = 3) -> str:
    """About ``digits`` significant figures in plain notation (2542.68 -> 2543, 0.025 -> 0.0250)."""
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def _pm(mean: float, sd: float, digits: int = 3, decimals: int | None = None) -> str:
    """"mean ± sd"; fixed ``decimals`` when given (doses as in Table 1: 256.3 ± 16.2)."""
    if not math.isfinite(mean):
        return "–"
    if decimals is not None:
        sd_text = f"{sd:.{decimals}f}" if math.isfinite(sd) else "–"
        return f"{mean:.{decimals}f} ± {sd_text}"
    return f"{_fmt(mean, digits)} ± {_fmt(sd, digits)}"


def _site_markdown_column(rec: pd.Series, levels: list[str]) -> list[str]:
    per_level = []
    for lvl in levels:
        mean, sd = rec[f"events_M_{lvl}_mean"], rec[f"events_M_{lvl}_sd"]
        if math.isfinite(mean):
            per_level.append(f"{level_percent(lvl):g} %: {_pm(mean, sd)}")
    volume = _pm(rec["lesion_volume_ml_mean"], rec["lesion_volume_ml_sd"])
    if math.isfinite(rec["lesion_volume_ml_min"]):
        volume += (f" (min: {_fmt(rec['lesion_volume_ml_min'])},"
                   f" max: {_fmt(rec['lesion_volume_ml_max'])})")
    return [
        f"{rec['n_train']}/{rec['n_val']}/{rec['n_test']}",
        _pm(rec["dose_mbq_mean"], rec["dose_mbq_sd"], decimals=1),
        _pm(rec["events_M_mean"], rec["events_M_sd"]),
        "<br>".join(per_level) if per_level else "–",
        f"{rec['lesions_total']} "
        f"({_pm(rec['lesions_per_subject_mean'], rec['lesions_per_subject_sd'])})",
        volume,
        _pm(rec["lesion_suvmax_mean"], rec["lesion_suvmax_sd"]),
    ]


MARKDOWN_ROWS = (
    "Train/val/test subjects",
    "Dose (MBq, mean ± sd)",
    "Events, full list (M, mean ± sd)",
    "Events per count level (M, mean ± sd)",
    "Lesions, total (per subject mean ± sd)",
    "Lesion volume (mL, mean ± sd)",
    "Lesion SUVmax (g/mL, mean ± sd)",
)


def cohort_markdown(df: pd.DataFrame) -> str:
    """Table-1-like Markdown: one column per site, one row per quantity."""
    levels = [c[len("events_M_"):-len("_mean")] for c in df.columns
              if c.startswith("events_M_p") and c.endswith("_mean")]
    columns = [_site_markdown_column(rec, levels) for _, rec in df.iterrows()]
    lines = ["| | " + " | ".join(str(s) for s in df["site"]) + " |",
             "|---|" + "---|" * len(df)]
    for i, name in enumerate(MARKDOWN_ROWS):
        lines.append(f"| {name} | " + " | ".join(col[i] for col in columns) + " |")
    return "\n".join(lines) + "\n"


def write_cohort_summary(df: pd.DataFrame, out_tsv: str | os.PathLike,
                         out_md: str | os.PathLike | None = None) -> None:
    """Write the numeric table as TSV (NaN as empty) and, optionally, the Markdown view."""
    with atomic_path(out_tsv) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6g", na_rep="")
    if out_md is not None:
        write_text(out_md, cohort_markdown(df))
