"""Result tables in the layout of the paper's Tables 2-4, plus a quantification table.

Each table is built from the per-case metrics table (`amdiff.evaluate.columns`) in long
form first (one row per group x model x metric, with every statistic: the TSV), then
rendered in the paper's wide layout (rows group x model, one column per metric, cells
"mean ± std") as Markdown and as a booktabs LaTeX tabular.

Conventions
- mean ± std over a model's finite cases (NaN = not applicable/undefined, left out); std is
  the sample std (ddof=1). Group "all" (printed "All") pools the cases of every site; it is
  not a mean of site means.
- NRMSE and Dice print with 3 decimals and no leading zero, as in the paper (".146 ± .116"),
  as do the lesion-wise precision, recall and F1; the other metrics with 2 decimals.
- n_excluded: a model's images in the group whose value is NaN (undefined, e.g. Dice on a
  lesion-free image), left out of its mean; every table with such cells says how many.
- Bold: the best mean of a column within a group (lowest for lower-is-better metrics,
  highest for higher-is-better, smallest |mean| for the TLG bias), judged on the printed
  (rounded) means, so every model tied at the best printed value is bold.
- Asterisk: on a peer's cell when the two-sided Wilcoxon signed-rank test of AMDiff against
  that peer gives p < 0.05 (unadjusted, the paper's criterion), at subject level: one
  subject-averaged paired difference per subject (`amdiff.evaluate.statistics`); for the
  TLG bias on |bias|, which is what its bold claims. The paper prints the asterisk on
  AMDiff's own cell; with one mark per comparison the reader sees which peer AMDiff differs
  from. Holm-adjusted p-values (one family per scanner group; "All" its own family) are in
  the TSV and the Markdown's comparison section.
- n: each table states its subjects and images per group; a dagger marks a cell whose test
  used fewer images than its mean or AMDiff's (the images both have), counts in the TSV.
- Models absent from the metrics table are skipped; a table with none of its models is
  still written, with a note saying so.
- Given the run's training budget (`amdiff.evaluate.budget`), each table states the gradient
  steps of its trained models; a demo run's tables carry its smoke-test line under the title.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from amdiff.contracts import ABLATIONS, COMPARISON_DENOISERS, COMPARISON_SEGMENTERS
from amdiff.evaluate import columns
from amdiff.evaluate.statistics import (ALL_GROUP, ALPHA, N_RESAMPLES, PAIR_KEYS, REFERENCE, SEED,
                                        SUBJECT_KEYS, require_columns, compare, describe, groups)
from amdiff.io.atomic import write_text

DASH = "–"   # an undefined number


@dataclass(frozen=True)
class TableSpec:
    name: str                     # file stem, e.g. "table2_denoising"
    title: str                    # heading, e.g. "Table 2: Denoising comparisons"
    caption: str
    models: tuple[str, ...]       # row order within a group
    metrics: tuple[str, ...]      # column order
    per_site: bool                # rows per site as well as "All"
    reference: str = REFERENCE
    # model -> group -> printed label where it is not the model's own (the Gaussian's FWHM)
    row_labels: dict = field(default_factory=dict)


SEGMENTERS = COMPARISON_SEGMENTERS
DENOISERS = COMPARISON_DENOISERS
# Table 2's first rows, which need no training: the low-count input and its Gaussian-filtered
# version (amdiff.evaluate.gaussian); AMDiff is tested against them as against every denoiser.
TRAINING_FREE = ("lowcount_input", "gaussian_filter")
QUANT_METRICS = ("tlg_bias_pct", "mtv_true_ml", "mtv_auto_ml", "lesions_tp", "lesions_fp",
                 "lesions_fn", "lesion_precision", "lesion_recall", "lesion_f1",
                 "autopet_fp_volume_ml", "autopet_fn_volume_ml", "lesion_free_fp_volume_ml")

TABLES = (
    TableSpec("table2_denoising", "Table 2: Denoising comparisons with SOTA methods",
              "NRMSE on the whole image and each semantic class, averaged across all noise "
              "levels and presented as mean ± std. Lower is better. Med-DDPM here is AMDiff's "
              "diffusion module alone, whose target is cut off at diffusion.suv_cutoff (SUV 20) "
              "unless baselines.med_ddpm.suv_cutoff lifts it, so SUV above the cutoff (lesion "
              "peaks) is unreachable for it by construction: a limit of this reproduction, "
              "not necessarily of the published Med-DDPM the paper compares against. The "
              "first two rows need no training (not in the paper): the low-count input itself "
              "and the low-count input smoothed by a 3D Gaussian whose FWHM (in its label) gave "
              "the lowest mean whole-image NRMSE on the training site's validation images; "
              "every trained denoiser is judged against them, and AMDiff is tested against "
              "them as against every other method.",
              (*TRAINING_FREE, *DENOISERS, REFERENCE), columns.NRMSE, per_site=True),
    TableSpec("table3_segmentation", "Table 3: Segmentation comparisons with SOTA methods",
              "Dice on each semantic class, averaged across all noise levels and presented "
              "as mean ± std. Higher is better.",
              (*SEGMENTERS, REFERENCE), columns.DICE, per_site=True),
    TableSpec("table4_ablation", "Table 4: Ablation studies on AMDiff",
              "NRMSE and Dice averaged across all test cases, presented as mean ± std. "
              "Lower NRMSE and higher Dice are better. The row w/o lesion-organ regularizer "
              "(both its lesion and organ terms removed) is not in the paper's Table 4; the "
              "paper reports it in the abstract and Fig. 7.",
              (REFERENCE, *ABLATIONS), (*columns.NRMSE, *columns.DICE), per_site=False),
    TableSpec("table5_quantification", "Table 5: Lesion quantification and detection",
              "Not in the paper. TLG bias in percent of the true TLG; true and predicted "
              "lesion volume (mL). Lesion-wise detection (our definition): lesions are "
              "26-connected components, a predicted and a true lesion match one to one when "
              "their overlap (evaluation.lesion_match, default IoU > 0.1) is high enough; "
              "TP, FP, FN per case and precision, recall, F1 (undefined on lesion-free "
              "images, as Dice). False-positive and false-negative volumes (mL) as the "
              "autoPET challenge defines them (18-connected components that share no voxel "
              "with the other mask), and the predicted volume on lesion-free images "
              "(hallucinations). Averaged across all test cases, presented as mean ± std; "
              "the volumes are described, not tested.",
              (REFERENCE, *ABLATIONS, *SEGMENTERS), QUANT_METRICS, per_site=False),
)

SITE_LABELS = {"mct": "mCT", "vision": "Vision", "uexplorer": "uExplorer", ALL_GROUP: "All"}
CLASS_LABELS = {"whole": "Whole image", **{c: c.capitalize() for c in columns.CLASSES}}
# (family, label) of the metrics outside the NRMSE/Dice families.
OTHER_METRIC_LABELS = {
    "tlg_bias_pct": ("TLG", "Bias (%)"),
    "mtv_true_ml": ("Lesion volume (mL)", "True"),
    "mtv_auto_ml": ("Lesion volume (mL)", "Predicted"),
    "lesions_tp": ("Lesions per case", "TP"),
    "lesions_fp": ("Lesions per case", "FP"),
    "lesions_fn": ("Lesions per case", "FN"),
    "lesion_precision": ("Lesion-wise", "Precision"),
    "lesion_recall": ("Lesion-wise", "Recall"),
    "lesion_f1": ("Lesion-wise", "F1"),
    "autopet_fp_volume_ml": ("autoPET volume (mL)", "FP"),
    "autopet_fn_volume_ml": ("autoPET volume (mL)", "FN"),
    "lesion_free_fp_volume_ml": ("Lesion-free images", "FP volume (mL)"),
}
# 3 decimals, no leading zero: the paper's NRMSE and Dice, and the other fractions in [0, 1].
PAPER_STYLE = {*columns.NRMSE, *columns.DICE, "lesion_precision", "lesion_recall", "lesion_f1"}
DIRECTED = columns.LOWER_IS_BETTER | columns.HIGHER_IS_BETTER | columns.CLOSEST_TO_ZERO_IS_BETTER

COMPARISON_COLUMNS = ("n_pairs", "n_pair_subjects", "tested", "mean_difference", "ci_low",
                      "ci_high", "p_wilcoxon", "p_holm", "holm_family_size", "significant")
# group_subjects / group_images: the group's test set (any model of the table, any metric);
# same_cases: whether the test used exactly the images of both means (False -> dagger).
LONG_COLUMNS = ("group", "group_subjects", "group_images", "model", "metric", "n", "n_excluded",
                "n_subjects",
                "mean", "std", "best", *COMPARISON_COLUMNS, "same_cases", "star")
DAGGER = "†"


# --- labels and numbers -----------------------------------------------------------------

def model_label(model: str) -> str:
    return columns.model_label(model)


def row_label(spec: TableSpec, model: str, group: str) -> str:
    """A row's printed method: the spec's label for this model and group, else the paper's name."""
    return spec.row_labels.get(model, {}).get(group) or model_label(model)


def group_label(group: str) -> str:
    return SITE_LABELS.get(group, group)


def metric_label(metric: str) -> tuple[str, str]:
    """(family, column label): ("NRMSE", "Lesion") for nrmse_lesion."""
    for prefix, family in (("nrmse_", "NRMSE"), ("dice_", "Dice")):
        if metric.startswith(prefix):
            cls = metric[len(prefix):]
            return family, CLASS_LABELS.get(cls, cls)
    return OTHER_METRIC_LABELS.get(metric, ("", metric))


def metric_decimals(metric: str) -> int:
    """Printed decimals: 3 for `PAPER_STYLE` (NRMSE, Dice, lesion-wise fractions), else 2."""
    return 3 if metric in PAPER_STYLE else 2


def format_number(value: float, metric: str, signed: bool = False) -> str:
    """Paper style for NRMSE/Dice (".146", "-.020"), 2 decimals otherwise; NaN -> "–"."""
    if value is None or not math.isfinite(value):
        return DASH
    decimals = metric_decimals(metric)
    value = round(value, decimals) + 0.0        # no "-.000" / "+.000" for a rounded zero
    sign = "+" if signed and value != 0 else ""
    text = f"{value:{sign}.{decimals}f}"
    if metric in PAPER_STYLE and abs(value) < 1:
        text = text.replace("0.", ".", 1)
    return text


def format_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# --- long form --------------------------------------------------------------------------

def _count_subjects(rows: pd.DataFrame) -> int:
    """Distinct subjects (site, subject) among ``rows``."""
    return int(len(rows.drop_duplicates(list(SUBJECT_KEYS))))


def _descriptive(rows: pd.DataFrame, spec: TableSpec, models: list[str]) -> pd.DataFrame:
    records = []
    for group, group_rows in groups(rows, spec.per_site):
        test_set = {"group_subjects": _count_subjects(group_rows),
                    "group_images": int(len(group_rows.drop_duplicates(list(PAIR_KEYS))))}
        for model in models:
            model_rows = group_rows[group_rows["model"] == model]
            for metric in spec.metrics:
                n, mean, std = describe(model_rows[metric])
                finite = model_rows[np.isfinite(model_rows[metric].to_numpy(float))]
                records.append({"group": group, **test_set, "model": model, "metric": metric,
                                "n": n, "n_excluded": len(model_rows) - n,
                                "n_subjects": _count_subjects(finite),
                                "mean": mean, "std": std})
    return pd.DataFrame.from_records(records, columns=["group", "group_subjects",
                                                      "group_images", "model", "metric",
                                                      "n", "n_excluded", "n_subjects", "mean",
                                                      "std"])


def _is_best(means: pd.Series, metric: str) -> pd.Series:
    """Best mean(s) among the finite ones of one group and metric, judged on the printed
    (rounded) values: every mean that prints as the best one wins."""
    # Python's round is correctly rounded, as the f-string that prints the cell.
    decimals = metric_decimals(metric)
    printed = means.map(lambda v: round(v, decimals) + 0.0 if math.isfinite(v) else np.nan)
    if metric in columns.CLOSEST_TO_ZERO_IS_BETTER:
        score = printed.abs()
    elif metric in columns.LOWER_IS_BETTER:
        score = printed
    elif metric in columns.HIGHER_IS_BETTER:
        score = -printed
    else:
        return pd.Series(False, index=means.index)   # no direction: nothing to bold
    if not np.isfinite(score).any():
        return pd.Series(False, index=means.index)
    return pd.Series(score.to_numpy(float) == score.min(), index=means.index)


def _with_best(table: pd.DataFrame) -> pd.DataFrame:
    best = [_is_best(part["mean"], metric)
            for (_, metric), part in table.groupby(["group", "metric"], sort=False)]
    table["best"] = pd.concat(best).reindex(table.index).astype(bool)
    return table


def _comparisons(rows: pd.DataFrame, spec: TableSpec, models: list[str],
                 n_resamples: int, seed: int) -> pd.DataFrame:
    peers = [m for m in models if m != spec.reference]
    if spec.reference not in models or not peers:
        return pd.DataFrame(columns=["group", "metric", "model", *COMPARISON_COLUMNS])
    # A column without a better direction (true or predicted lesion volume) is described,
    # not tested: there is no claim for a test to back, and it would enlarge the Holm family.
    tested = [m for m in spec.metrics if m in DIRECTED]
    table = compare(rows, peers, tested, reference=spec.reference,
                    per_site=spec.per_site, n_resamples=n_resamples, seed=seed)
    return table.drop(columns=["mean", "std"]).rename(
        columns={"n": "n_pairs", "n_subjects": "n_pair_subjects"})


def _same_cases(table: pd.DataFrame, reference: str) -> pd.Series:
    """Whether a comparison used every image of both means (NA where there is no test):
    the pairs are a subset of each side's finite images, so equal counts mean equal sets."""
    ref = table.loc[table["model"] == reference, ["group", "metric", "n"]]
    ref_n = table[["group", "metric"]].merge(ref.rename(columns={"n": "ref_n"}), how="left",
                                             on=["group", "metric"])["ref_n"].to_numpy(float)
    tested = table["n_pairs"].fillna(0).to_numpy() > 0
    same = (table["n_pairs"] == table["n"]) & (table["n_pairs"] == ref_n)
    return same.astype("boolean").where(tested, pd.NA)


def build_table(metrics_df: pd.DataFrame, spec: TableSpec, *,
                n_resamples: int = N_RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """Long form of one table: group with its subjects and images, model, metric, n (images)
    and n_subjects, mean, std, best, comparison columns against the reference (NaN/NA on the
    reference's own rows), same_cases and star."""
    require_columns(metrics_df, ("model", *PAIR_KEYS, *spec.metrics))
    present = set(metrics_df["model"])
    models = [m for m in spec.models if m in present]
    if not models:
        return pd.DataFrame(columns=list(LONG_COLUMNS))
    rows = metrics_df[metrics_df["model"].isin(models)]
    table = _with_best(_descriptive(rows, spec, models))
    comparisons = _comparisons(rows, spec, models, n_resamples, seed)
    table = table.merge(comparisons, on=["group", "metric", "model"], how="left")
    for column in ("n_pairs", "n_pair_subjects", "holm_family_size"):
        table[column] = table[column].astype("Int64")
    table["significant"] = table["significant"].astype("boolean")
    table["same_cases"] = _same_cases(table, spec.reference)
    table["star"] = table["significant"].fillna(False).astype(bool)
    return table[list(LONG_COLUMNS)]


# --- wide rendering ---------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    mean: str
    std: str
    bold: bool
    star: bool
    dagger: bool = False     # the test used fewer images than the mean (or AMDiff's)

    @property
    def empty(self) -> bool:
        return self.mean == DASH


def _cell(row: pd.Series) -> Cell:
    mean = format_number(row["mean"], row["metric"])
    std = format_number(row["std"], row["metric"])
    dagger = bool(pd.notna(row["same_cases"]) and not row["same_cases"])
    return Cell(mean, std, bool(row["best"]), bool(row["star"]), dagger)


def wide_rows(table: pd.DataFrame, spec: TableSpec) -> list[tuple[str, str, list[Cell]]]:
    """(group, model, cells in spec.metrics order) in table order (groups, then models)."""
    out = []
    for (group, model), part in table.groupby(["group", "model"], sort=False):
        by_metric = {row["metric"]: _cell(row) for _, row in part.iterrows()}
        out.append((group, model, [by_metric[metric] for metric in spec.metrics]))
    return out


def _header_labels(spec: TableSpec) -> list[str]:
    labels = [metric_label(m) for m in spec.metrics]
    if len({family for family, _ in labels}) > 1:
        return [f"{family} {label}".strip() for family, label in labels]
    return [label for _, label in labels]


def _families(spec: TableSpec) -> list[tuple[str, int]]:
    """Runs of consecutive metrics of one family: [(family, width), ...]."""
    runs: list[tuple[str, int]] = []
    for family, _ in (metric_label(m) for m in spec.metrics):
        if runs and runs[-1][0] == family:
            runs[-1] = (family, runs[-1][1] + 1)
        else:
            runs.append((family, 1))
    return runs


def _star_footnote(spec: TableSpec) -> str:
    ref = model_label(spec.reference)
    absolute = [metric_label(m)[1] for m in spec.metrics if m in columns.CLOSEST_TO_ZERO_IS_BETTER]
    on_abs = f" ({', '.join(absolute)}: of |value|, the closeness to zero the bold rewards)" \
        if absolute else ""
    return (f"p < {ALPHA:g}, two-sided Wilcoxon signed-rank test of {ref} against the "
            f"marked method with subjects as the units: per subject, the mean of {ref} − "
            f"method over its images both have (same site, subject, count level and "
            f"realization){on_abs}; unadjusted, as in the paper. n subjects cannot give "
            f"p below 2/2^n (0.0625 for 5), so a group of 5 or fewer subjects has no asterisk.")


def _group_counts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per group: group, group_subjects, group_images (table order)."""
    return table.drop_duplicates("group")[["group", "group_subjects", "group_images"]]


def _n_note(table: pd.DataFrame) -> str:
    counts = ", ".join(f"{group_label(r.group)} {int(r.group_subjects)} / {int(r.group_images)}"
                       for r in _group_counts(table).itertuples())
    return (f"n (subjects / images): {counts}; an image is one subject at one count level and "
            f"realization. Means are over images, tests and confidence intervals over "
            f"subjects; each cell's counts are in the TSV.")


def _excluded_note(table: pd.DataFrame, spec: TableSpec) -> str:
    """Which cells' means leave images out (NaN: undefined), and how many; "" if none do.
    Cells without any value print "–" and need no note."""
    parts = []
    for (group, metric), part in table.groupby(["group", "metric"], sort=False):
        part = part[part["n"] > 0]
        if not (part["n_excluded"] > 0).any():
            continue
        counts = [f"{int(r.n_excluded)} of {int(r.n + r.n_excluded)}" for r in part.itertuples()]
        if len(set(counts)) == 1:
            text = f"{counts[0]} images for every method"
        else:
            text = ", ".join(f"{row_label(spec, m, group)} {c}" for m, c in zip(part["model"], counts))
        family, label = metric_label(metric)
        where = f"{group_label(group)} " if spec.per_site else ""
        parts.append(f"{where}{family} {label}".strip() + f": {text}")
    if not parts:
        return ""
    return ("Left out of the means as undefined (NaN; e.g. Dice, precision, recall and F1 on "
            "lesion-free images): " + "; ".join(parts) + ".")


def _holm_note(table: pd.DataFrame, spec: TableSpec) -> str:
    """The Holm families of this table with their sizes, read from the comparisons."""
    tested = table[table["holm_family_size"].notna() & (table["model"] != spec.reference)]
    sizes = tested.drop_duplicates("group")
    if not spec.per_site:
        size = int(sizes["holm_family_size"].iloc[0]) if len(sizes) else 0
        return f"Holm-Bonferroni family: the {size} tests of this table."
    parts = ", ".join(f"{group_label(r.group)} {int(r.holm_family_size)}"
                      for r in sizes.itertuples())
    return (f"Holm-Bonferroni families: one per scanner group, the pooled All (which reuses "
            f"the sites' subjects) a family of its own; tests per family: {parts}.")


def _budget_note(table: pd.DataFrame, budget: pd.DataFrame | None) -> str:
    """The training budget of the table's trained models (`amdiff.evaluate.budget`), one
    clause per budget shared by models and training sites; "" without a budget or such model."""
    if budget is None:
        return ""
    clauses: dict[tuple, list[str]] = {}
    for model in dict.fromkeys(table["model"]):
        sites_by_budget: dict[tuple, list[str]] = {}
        for r in budget[budget["model"] == model].itertuples():
            key = (int(r.steps), int(r.epochs), int(r.steps_per_epoch), int(r.patches_per_epoch),
                   int(r.batch_size))
            sites_by_budget.setdefault(key, []).append(group_label(r.train_site))
        for key, sites in sites_by_budget.items():
            clauses.setdefault((key, tuple(sites)), []).append(model_label(model))
    if not clauses:
        return ""
    parts = [f"{', '.join(models)} (trained on {', '.join(sites)}): {steps} steps ({epochs} "
             f"epochs × {per_epoch} batches: {patches} patches per epoch, batch size {batch})"
             for ((steps, epochs, per_epoch, patches, batch), sites), models in clauses.items()]
    return ("Training budget in gradient steps (one per batch of training patches): "
            + "; ".join(parts) + ". The evaluated checkpoint (best.pt) is the best-validation "
            "epoch's; per model in training_budget.tsv.")


def _has_dagger(table: pd.DataFrame) -> bool:
    return bool((table["same_cases"] == False).any())   # noqa: E712 (NA is not False)


def _dagger_note(spec: TableSpec) -> str:
    ref = model_label(spec.reference)
    return (f"{DAGGER} The test and the difference use only the images both this method and "
            f"{ref} have, fewer than one of the two means (n and n_pairs in the TSV).")


def _best_note(spec: TableSpec) -> str:
    scope = " within each scanner group" if spec.per_site else ""
    return (f"Best mean of each column{scope} in bold: lowest where lower is better, highest "
            f"where higher is better, closest to zero for a bias; judged on the printed values, "
            f"so every method tied at the best printed value is bold.")


def _has_comparisons(table: pd.DataFrame, spec: TableSpec) -> bool:
    return bool(table.loc[table["model"] != spec.reference, "n_pairs"].notna().any())


def _missing_note(spec: TableSpec) -> str:
    names = ", ".join(model_label(m) for m in spec.models)
    return f"None of this table's models ({names}) is in the metrics table; nothing to show."


# Markdown

def _md_escape(text: str) -> str:
    return str(text).replace("|", r"\|")


def _md_cell(cell: Cell) -> str:
    if cell.empty:
        return DASH
    text = f"{cell.mean} ± {cell.std}"
    if cell.bold:
        text = f"**{text}**"
    return text + (r"\*" if cell.star else "") + (DAGGER if cell.dagger else "")


def _md_main_table(table: pd.DataFrame, spec: TableSpec) -> list[str]:
    lead = ["Scanner", "Method"] if spec.per_site else ["Method"]
    header = lead + _header_labels(spec)
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "---|" * len(lead) + ":---:|" * len(spec.metrics)]
    previous_group = None
    for group, model, cells in wide_rows(table, spec):
        lead_cells = [row_label(spec, model, group)]
        if spec.per_site:
            lead_cells.insert(0, group_label(group) if group != previous_group else "")
        previous_group = group
        lines.append("| " + " | ".join([*(_md_escape(c) for c in lead_cells),
                                         *(_md_cell(c) for c in cells)]) + " |")
    return lines


def _md_difference(row: pd.Series) -> str:
    metric = row["metric"]
    diff = format_number(row["mean_difference"], metric, signed=True)
    low = format_number(row["ci_low"], metric, signed=True)
    high = format_number(row["ci_high"], metric, signed=True)
    return diff if low == DASH else f"{diff} [{low}, {high}]"


def _md_comparisons(table: pd.DataFrame, spec: TableSpec) -> list[str]:
    # Comparisons without a single pair (metric not applicable to one side) stay in the TSV.
    peers = table[(table["model"] != spec.reference) & (table["n_pairs"].fillna(0) > 0)]
    ref = model_label(spec.reference)
    if peers.empty:
        return [f"No comparisons: {ref} or every other method of this table is missing."]
    lead = ["Scanner", "Method"] if spec.per_site else ["Method"]
    lines = [f"Mean paired difference {ref} − method over the images both have (finite "
             f"values), with its 95% CI from a bootstrap that resamples subjects (BCa, "
             f"percentile where BCa is undefined); two-sided Wilcoxon signed-rank p on one "
             f"subject-averaged difference per subject; Holm-Bonferroni p. "
             f"{_holm_note(table, spec)} A metric marked (absolute) is compared on |value|.",
             "",
             "| " + " | ".join([*lead, "Metric", "Images", "Subjects", "Difference [95% CI]",
                                 "Wilcoxon p", "Holm p"]) + " |",
             "|" + "---|" * (len(lead) + 1) + "---:|" * 5]
    for _, row in peers.iterrows():
        family_name, label = metric_label(row["metric"])
        label += " (absolute)" if row["tested"] == "|value|" else ""
        lead_cells = [row_label(spec, row["model"], row["group"])]
        if spec.per_site:
            lead_cells.insert(0, group_label(row["group"]))
        cells = [*lead_cells, f"{family_name} {label}".strip(), str(int(row["n_pairs"])),
                 str(int(row["n_pair_subjects"])), _md_difference(row),
                 format_p(row["p_wilcoxon"]), format_p(row["p_holm"])]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return lines


def to_markdown(table: pd.DataFrame, spec: TableSpec, *, banner: str | None = None,
                budget: pd.DataFrame | None = None) -> str:
    """The paper's layout; ``banner`` (a demo run's line) heads it in bold, ``budget``
    (`amdiff.evaluate.budget`) adds the training budget of the table's models."""
    lines = [f"## {spec.title}", "", *([f"**{banner}**", ""] if banner else []), spec.caption, ""]
    if table.empty:
        return "\n".join([*lines, f"_{_missing_note(spec)}_", ""])
    lines += [*_md_main_table(table, spec), "", _best_note(spec), "", _n_note(table), ""]
    if _budget_note(table, budget):
        lines += [_budget_note(table, budget), ""]
    if _excluded_note(table, spec):
        lines += [_excluded_note(table, spec), ""]
    if _has_comparisons(table, spec):
        lines += [r"\* " + _star_footnote(spec), ""]
    if _has_dagger(table):
        lines += [_dagger_note(spec), ""]
    lines += [f"### Comparisons with {model_label(spec.reference)}", "",
              *_md_comparisons(table, spec)]
    return "\n".join(lines) + "\n"


# LaTeX

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}
LATEX_UNICODE = {"±": r"$\pm$", "–": "--", "−": "$-$", "|": r"\textbar{}",
                 "<": r"\textless{}", ">": r"\textgreater{}",   # OT1 prints < as ¡
                 DAGGER: r"\textdagger{}", "×": r"$\times$", "—": "---"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and spell the few non-ASCII ones we print)."""
    table = {**LATEX_SPECIALS, **LATEX_UNICODE}
    return "".join(table.get(ch, ch) for ch in str(text))


def _tex_cell(cell: Cell) -> str:
    if cell.empty:
        return "--"
    text = f"{latex_escape(cell.mean)} $\\pm$ {latex_escape(cell.std)}"
    if cell.bold:
        text = rf"\textbf{{{text}}}"
    return text + ("$^{*}$" if cell.star else "") + (r"$^{\dagger}$" if cell.dagger else "")


def _tex_header(spec: TableSpec, n_lead: int) -> list[str]:
    lines, rules, column = [], [], n_lead + 1
    family_cells = [""] * n_lead
    for family, width in _families(spec):
        family_cells.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(family)}}}")
        if family:
            rules.append(rf"\cmidrule(lr){{{column}-{column + width - 1}}}")
        column += width
    if any(family for family, _ in _families(spec)):
        lines += [" & ".join(family_cells) + r" \\", " ".join(rules)]
    lead = ["Scanner", "Method"][-n_lead:]
    labels = [label for _, label in (metric_label(m) for m in spec.metrics)]
    lines.append(" & ".join(latex_escape(c) for c in [*lead, *labels]) + r" \\")
    return lines


def _tex_body(table: pd.DataFrame, spec: TableSpec) -> list[str]:
    lines, previous_group = [], None
    for group, model, cells in wide_rows(table, spec):
        lead = [latex_escape(row_label(spec, model, group))]
        if spec.per_site:
            if previous_group is not None and group != previous_group:
                lines.append(r"\midrule")
            lead.insert(0, latex_escape(group_label(group)) if group != previous_group else "")
        previous_group = group
        lines.append(" & ".join([*lead, *(_tex_cell(c) for c in cells)]) + r" \\")
    return lines


def _tex_notes(table: pd.DataFrame, spec: TableSpec, budget: pd.DataFrame | None = None) -> str:
    notes = latex_escape(_best_note(spec)) + rf"\\ {latex_escape(_n_note(table))}"
    if _budget_note(table, budget):
        notes += rf"\\ {latex_escape(_budget_note(table, budget))}"
    if _excluded_note(table, spec):
        notes += rf"\\ {latex_escape(_excluded_note(table, spec))}"
    if _has_comparisons(table, spec):
        notes += rf"\\ $^{{*}}$ {latex_escape(_star_footnote(spec))}"
        notes += rf"\\ {latex_escape(_holm_note(table, spec))}"
    if _has_dagger(table):
        notes += rf"\\ {latex_escape(_dagger_note(spec))}"
    return rf"{{\footnotesize {notes}\par}}"


def to_latex(table: pd.DataFrame, spec: TableSpec, *, banner: str | None = None,
             budget: pd.DataFrame | None = None) -> str:
    """A booktabs table environment; needs \\usepackage{booktabs}. ``banner`` and ``budget``
    as in `to_markdown` (the banner in bold above the caption)."""
    head = [f"% {spec.name}: generated by amdiff evaluate; needs \\usepackage{{booktabs}}",
            r"\begin{table}[htbp]", r"\centering",
            *([rf"\textbf{{{latex_escape(banner)}}}\par\smallskip"] if banner else []),
            rf"\caption{{{latex_escape(spec.title)}. {latex_escape(spec.caption)}}}",
            rf"\label{{tab:{spec.name}}}"]
    if table.empty:
        return "\n".join([*head, rf"\emph{{{latex_escape(_missing_note(spec))}}}",
                          r"\end{table}", ""])
    n_lead = 2 if spec.per_site else 1
    lines = [*head, rf"\begin{{tabular}}{{{'l' * n_lead}{'c' * len(spec.metrics)}}}",
             r"\toprule", *_tex_header(spec, n_lead), r"\midrule", *_tex_body(table, spec),
             r"\bottomrule", r"\end{tabular}", "", r"\smallskip", _tex_notes(table, spec, budget),
             r"\end{table}"]
    return "\n".join(lines) + "\n"


# --- files ------------------------------------------------------------------------------

def _tsv(table: pd.DataFrame) -> str:
    return table.to_csv(sep="\t", index=False, float_format="%.6g", na_rep="")


FILE_SUFFIXES = (".tsv", ".md", ".tex")


def table_files(specs: tuple[TableSpec, ...] = TABLES) -> list[str]:
    """Names of the files `write_tables` writes for ``specs``."""
    return [f"{spec.name}{suffix}" for spec in specs for suffix in FILE_SUFFIXES]


def write_tables(metrics_df: pd.DataFrame, out_dir: str | os.PathLike,
                 specs: tuple[TableSpec, ...] = TABLES, *,
                 n_resamples: int = N_RESAMPLES, seed: int = SEED,
                 row_labels: dict | None = None, banner: str | None = None,
                 budget: pd.DataFrame | None = None) -> list[Path]:
    """Write {name}.tsv (long form), {name}.md and {name}.tex for each spec, atomically.
    ``row_labels``: model -> group -> printed label (e.g. `gaussian.row_labels`); ``banner``
    and ``budget`` as in `to_markdown`."""
    out_dir = Path(out_dir)
    written = []
    for spec in specs:
        spec = replace(spec, row_labels=row_labels) if row_labels else spec
        table = build_table(metrics_df, spec, n_resamples=n_resamples, seed=seed)
        texts = {".tsv": _tsv(table), ".md": to_markdown(table, spec, banner=banner, budget=budget),
                 ".tex": to_latex(table, spec, banner=banner, budget=budget)}
        for suffix in FILE_SUFFIXES:
            path, text = out_dir / f"{spec.name}{suffix}", texts[suffix]
            write_text(path, text)
            written.append(path)
    return written
