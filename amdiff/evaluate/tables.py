"""Result tables in the layout of the paper's Tables 2-4, plus a quantification table.

Each table is built from the per-case metrics table (`amdiff.evaluate.columns`) in long
form first (one row per group x model x metric, with every statistic: the TSV), then
rendered in the paper's wide layout (rows group x model, one column per metric, cells
"mean ± std") as Markdown and as a booktabs LaTeX tabular.

Conventions
- mean ± std over a model's finite cases (NaN = not applicable/undefined, left out); std is
  the sample std (ddof=1). Group "all" (printed "All") pools the cases of every site; it is
  not a mean of site means.
- NRMSE and Dice print with 3 decimals and no leading zero, as in the paper (".146 ± .116");
  the other metrics with 2 decimals.
- Bold: the best mean of a column within a group (lowest for lower-is-better metrics,
  highest for higher-is-better, smallest |mean| for the TLG bias); ties are all bold.
- Asterisk: on a peer's cell when the two-sided Wilcoxon signed-rank test of AMDiff against
  that peer on paired cases gives p < 0.05 (unadjusted, the paper's criterion). The paper
  prints the asterisk on AMDiff's own cell; with one mark per comparison the reader sees
  which peer AMDiff differs from. Holm-adjusted p-values are in the TSV and the Markdown's
  comparison section.
- Models absent from the metrics table are skipped; a table with none of its models is
  still written, with a note saying so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from amdiff.evaluate import columns
from amdiff.evaluate.statistics import (ALL_GROUP, ALPHA, N_RESAMPLES, PAIR_KEYS, REFERENCE, SEED,
                                        require_columns, compare, describe, groups)
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


# Table 4's rows, plus amdiff_no_lor (all of L_lor removed: the abstract's and Fig. 7's
# ablation, which the paper's Table 4 has no row for).
ABLATIONS = ("amdiff_no_revision", "amdiff_no_organ_reg", "amdiff_no_lesion_reg",
             "amdiff_no_lor", "amdiff_no_resmamba")
SEGMENTERS = ("swin_unetr", "nnmamba", "medsam3d")
DENOISERS = ("leqmod_gan", "spach_transformer", "med_ddpm")
QUANT_METRICS = ("tlg_bias_pct", "lesions_tp", "lesions_fp", "lesions_fn",
                 "fp_volume_ml", "fn_volume_ml")

TABLES = (
    TableSpec("table2_denoising", "Table 2: Denoising comparisons with SOTA methods",
              "NRMSE on the whole image and each semantic class, averaged across all noise "
              "levels and presented as mean ± std. Lower is better. Med-DDPM here is AMDiff's "
              "diffusion module alone, whose target is cut off at diffusion.suv_cutoff (SUV 20) "
              "unless baselines.med_ddpm.suv_cutoff lifts it, so SUV above the cutoff (lesion "
              "peaks) is unreachable for it by construction: a limit of this reproduction, "
              "not necessarily of the published Med-DDPM the paper compares against.",
              (*DENOISERS, REFERENCE), columns.NRMSE, per_site=True),
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
              "Not in the paper. TLG bias in percent of the true TLG; lesion-wise detection "
              "counts per case (connected components, 26-connectivity); false-positive and "
              "false-negative volumes in mL (autoPET style). Averaged across all test "
              "cases, presented as mean ± std.",
              (REFERENCE, *ABLATIONS, *SEGMENTERS), QUANT_METRICS, per_site=False),
)

SITE_LABELS = {"mct": "mCT", "vision": "Vision", "uexplorer": "uExplorer", ALL_GROUP: "All"}
CLASS_LABELS = {"whole": "Whole image", **{c: c.capitalize() for c in columns.CLASSES}}
# (family, label) of the metrics outside the NRMSE/Dice families.
OTHER_METRIC_LABELS = {
    "tlg_bias_pct": ("TLG", "Bias (%)"),
    "lesions_tp": ("Lesions per case", "TP"),
    "lesions_fp": ("Lesions per case", "FP"),
    "lesions_fn": ("Lesions per case", "FN"),
    "fp_volume_ml": ("Volume (mL)", "FP"),
    "fn_volume_ml": ("Volume (mL)", "FN"),
}
PAPER_STYLE = {*columns.NRMSE, *columns.DICE}   # 3 decimals, no leading zero

COMPARISON_COLUMNS = ("n_pairs", "mean_difference", "ci_low", "ci_high", "p_wilcoxon",
                      "p_holm", "significant")
LONG_COLUMNS = ("group", "model", "metric", "n", "mean", "std", "best", *COMPARISON_COLUMNS,
                "star")


# --- labels and numbers -----------------------------------------------------------------

def model_label(model: str) -> str:
    return columns.model_label(model)


def group_label(group: str) -> str:
    return SITE_LABELS.get(group, group)


def metric_label(metric: str) -> tuple[str, str]:
    """(family, column label): ("NRMSE", "Lesion") for nrmse_lesion."""
    for prefix, family in (("nrmse_", "NRMSE"), ("dice_", "Dice")):
        if metric.startswith(prefix):
            cls = metric[len(prefix):]
            return family, CLASS_LABELS.get(cls, cls)
    return OTHER_METRIC_LABELS.get(metric, ("", metric))


def format_number(value: float, metric: str, signed: bool = False) -> str:
    """Paper style for NRMSE/Dice (".146", "-.020"), 2 decimals otherwise; NaN -> "–"."""
    if value is None or not math.isfinite(value):
        return DASH
    decimals = 3 if metric in PAPER_STYLE else 2
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

def _descriptive(rows: pd.DataFrame, spec: TableSpec, models: list[str]) -> pd.DataFrame:
    records = []
    for group, group_rows in groups(rows, spec.per_site):
        for model in models:
            model_rows = group_rows[group_rows["model"] == model]
            for metric in spec.metrics:
                n, mean, std = describe(model_rows[metric])
                records.append({"group": group, "model": model, "metric": metric,
                                "n": n, "mean": mean, "std": std})
    return pd.DataFrame.from_records(records, columns=["group", "model", "metric",
                                                      "n", "mean", "std"])


def _is_best(means: pd.Series, metric: str) -> pd.Series:
    """Best mean(s) among the finite ones of one group and metric; ties all win."""
    if metric in columns.CLOSEST_TO_ZERO_IS_BETTER:
        score = means.abs()
    elif metric in columns.LOWER_IS_BETTER:
        score = means
    elif metric in columns.HIGHER_IS_BETTER:
        score = -means
    else:
        return pd.Series(False, index=means.index)   # no direction: nothing to bold
    if not np.isfinite(score).any():
        return pd.Series(False, index=means.index)
    return pd.Series(np.isclose(score, score.min(), rtol=1e-12, atol=0.0), index=means.index)


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
    table = compare(rows, peers, spec.metrics, reference=spec.reference,
                    per_site=spec.per_site, n_resamples=n_resamples, seed=seed)
    return table.drop(columns=["mean", "std"]).rename(columns={"n": "n_pairs"})


def build_table(metrics_df: pd.DataFrame, spec: TableSpec, *,
                n_resamples: int = N_RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """Long form of one table: group, model, metric, n, mean, std, best, comparison columns
    against the reference (NaN/NA on the reference's own rows) and star."""
    require_columns(metrics_df, ("model", *PAIR_KEYS, *spec.metrics))
    present = set(metrics_df["model"])
    models = [m for m in spec.models if m in present]
    if not models:
        return pd.DataFrame(columns=list(LONG_COLUMNS))
    rows = metrics_df[metrics_df["model"].isin(models)]
    table = _with_best(_descriptive(rows, spec, models))
    comparisons = _comparisons(rows, spec, models, n_resamples, seed)
    table = table.merge(comparisons, on=["group", "metric", "model"], how="left")
    table["n_pairs"] = table["n_pairs"].astype("Int64")
    table["significant"] = table["significant"].astype("boolean")
    table["star"] = table["significant"].fillna(False).astype(bool)
    return table[list(LONG_COLUMNS)]


# --- wide rendering ---------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    mean: str
    std: str
    bold: bool
    star: bool

    @property
    def empty(self) -> bool:
        return self.mean == DASH


def _cell(row: pd.Series) -> Cell:
    mean = format_number(row["mean"], row["metric"])
    std = format_number(row["std"], row["metric"])
    return Cell(mean, std, bool(row["best"]), bool(row["star"]))


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
    return (f"p < {ALPHA:g}, two-sided Wilcoxon signed-rank test of {ref} against the "
            f"marked method on paired cases (same site, subject, count level and "
            f"realization); unadjusted, as in the paper.")


def _best_note(spec: TableSpec) -> str:
    scope = " within each scanner group" if spec.per_site else ""
    return (f"Best mean of each column{scope} in bold: lowest where lower is better, highest "
            f"where higher is better, closest to zero for a bias.")


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
    return text + (r"\*" if cell.star else "")


def _md_main_table(table: pd.DataFrame, spec: TableSpec) -> list[str]:
    lead = ["Scanner", "Method"] if spec.per_site else ["Method"]
    header = lead + _header_labels(spec)
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "---|" * len(lead) + ":---:|" * len(spec.metrics)]
    previous_group = None
    for group, model, cells in wide_rows(table, spec):
        lead_cells = [model_label(model)]
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
    family = int(peers["p_holm"].notna().sum())
    lead = ["Scanner", "Method"] if spec.per_site else ["Method"]
    lines = [f"Mean paired difference {ref} − method with its bootstrap 95% CI (BCa), "
             f"two-sided Wilcoxon signed-rank p, and Holm-Bonferroni p over the {family} "
             f"tests of this table. Pairs: cases both methods have, with finite values.", "",
             "| " + " | ".join([*lead, "Metric", "Pairs", "Difference [95% CI]",
                                 "Wilcoxon p", "Holm p"]) + " |",
             "|" + "---|" * (len(lead) + 1) + "---:|" * 4]
    for _, row in peers.iterrows():
        family_name, label = metric_label(row["metric"])
        lead_cells = [model_label(row["model"])]
        if spec.per_site:
            lead_cells.insert(0, group_label(row["group"]))
        cells = [*lead_cells, f"{family_name} {label}".strip(), str(int(row["n_pairs"])),
                 _md_difference(row), format_p(row["p_wilcoxon"]), format_p(row["p_holm"])]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return lines


def to_markdown(table: pd.DataFrame, spec: TableSpec) -> str:
    lines = [f"## {spec.title}", "", spec.caption, ""]
    if table.empty:
        return "\n".join([*lines, f"_{_missing_note(spec)}_", ""])
    lines += [*_md_main_table(table, spec), "", _best_note(spec), ""]
    if _has_comparisons(table, spec):
        lines += [r"\* " + _star_footnote(spec), ""]
    lines += [f"### Comparisons with {model_label(spec.reference)}", "",
              *_md_comparisons(table, spec)]
    return "\n".join(lines) + "\n"


# LaTeX

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}
LATEX_UNICODE = {"±": r"$\pm$", "–": "--", "−": "$-$", "|": r"\textbar{}",
                 "<": r"\textless{}", ">": r"\textgreater{}"}   # OT1 prints < as ¡


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
    return text + ("$^{*}$" if cell.star else "")


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
        lead = [latex_escape(model_label(model))]
        if spec.per_site:
            if previous_group is not None and group != previous_group:
                lines.append(r"\midrule")
            lead.insert(0, latex_escape(group_label(group)) if group != previous_group else "")
        previous_group = group
        lines.append(" & ".join([*lead, *(_tex_cell(c) for c in cells)]) + r" \\")
    return lines


def _tex_notes(table: pd.DataFrame, spec: TableSpec) -> str:
    notes = latex_escape(_best_note(spec))
    if _has_comparisons(table, spec):
        notes += rf"\\ $^{{*}}$ {latex_escape(_star_footnote(spec))}"
    return rf"{{\footnotesize {notes}\par}}"


def to_latex(table: pd.DataFrame, spec: TableSpec) -> str:
    """A booktabs table environment; needs \\usepackage{booktabs}."""
    head = [f"% {spec.name}: generated by amdiff evaluate; needs \\usepackage{{booktabs}}",
            r"\begin{table}[htbp]", r"\centering",
            rf"\caption{{{latex_escape(spec.title)}. {latex_escape(spec.caption)}}}",
            rf"\label{{tab:{spec.name}}}"]
    if table.empty:
        return "\n".join([*head, rf"\emph{{{latex_escape(_missing_note(spec))}}}",
                          r"\end{table}", ""])
    n_lead = 2 if spec.per_site else 1
    lines = [*head, rf"\begin{{tabular}}{{{'l' * n_lead}{'c' * len(spec.metrics)}}}",
             r"\toprule", *_tex_header(spec, n_lead), r"\midrule", *_tex_body(table, spec),
             r"\bottomrule", r"\end{tabular}", "", r"\smallskip", _tex_notes(table, spec),
             r"\end{table}"]
    return "\n".join(lines) + "\n"


# --- files ------------------------------------------------------------------------------

def _tsv(table: pd.DataFrame) -> str:
    return table.to_csv(sep="\t", index=False, float_format="%.6g", na_rep="")


def write_tables(metrics_df: pd.DataFrame, out_dir: str | os.PathLike,
                 specs: tuple[TableSpec, ...] = TABLES, *,
                 n_resamples: int = N_RESAMPLES, seed: int = SEED) -> list[Path]:
    """Write {name}.tsv (long form), {name}.md and {name}.tex for each spec, atomically."""
    out_dir = Path(out_dir)
    written = []
    for spec in specs:
        table = build_table(metrics_df, spec, n_resamples=n_resamples, seed=seed)
        for suffix, text in ((".tsv", _tsv(table)), (".md", to_markdown(table, spec)),
                             (".tex", to_latex(table, spec))):
            path = out_dir / f"{spec.name}{suffix}"
            write_text(path, text)
            written.append(path)
    return written
