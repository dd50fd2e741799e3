"""Result tables (paper Tables 2-4 + quantification) from a hand-made metrics table.

Design of the data (nrmse_whole; sites mct and new_site, subjects s1-s6 with one image each,
levels p005/p010 alternating, so the subject-level tests see 6 units per site):
- amdiff:     mct .10 .12 .14 .16 .18 .20 (.150 ± .037); new_site +.10 (.250 ± .037)
- med_ddpm:   amdiff + .01 ... + .06 on every case: AMDiff lower in all 6 pairs per site,
              two-sided Wilcoxon p = 2/2^6 = 0.03125 -> asterisk; mct .185 ± .056
- leqmod_gan: amdiff ± alternating offsets -> p > 0.05, no asterisk. In mct it has the lowest
              mean (.145 ± .048, bold); in new_site .255 (AMDiff bold); pooled it ties AMDiff
              at .200 (both bold).
- spach_transformer: absent (skipped); swin_unetr: present but not in Table 2.
- nrmse_lesion: amdiff mct .30 .32 NaN .34 .36 .38 (.340 ± .032 over 5); leqmod_gan one
  mct case (.500, no std); med_ddpm NaN (not applicable); new_site all NaN.
"""

import math

import numpy as np
import pandas as pd
import pytest

from amdiff.evaluate import columns
from amdiff.evaluate.statistics import holm
from amdiff.evaluate.tables import (LONG_COLUMNS, TABLES, build_table, format_number,
                                    latex_escape, to_latex, to_markdown, write_tables)

SPEC2 = TABLES[0]
FAST = {"n_resamples": 499, "seed": 0}
CASES = [(f"s{i + 1}", ("p005", "p010")[i % 2]) for i in range(6)]
OFFSETS = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
LEQMOD_OFFSETS = {"mct": OFFSETS * [1, -1, 1, -1, 1, -1],
                  "new_site": OFFSETS[::-1] * [1, -1, 1, -1, 1, -1]}


def _row(model, site, subject, level, **metrics):
    row = {c: np.nan for c in columns.COLUMNS}
    row.update(model=model, site=site, subject=subject, level=level, realization=0,
               count_percent=float(level[1:]))
    row.update(metrics)
    return row


def _metrics_frame() -> pd.DataFrame:
    rows = []
    none = [np.nan] * 6
    for site, base in (("new_site", 0.20), ("mct", 0.10)):
        ref = base + 0.02 * np.arange(6)
        whole = {"amdiff": ref, "med_ddpm": ref + OFFSETS,
                 "leqmod_gan": ref + LEQMOD_OFFSETS[site], "swin_unetr": none}
        lesion = {"amdiff": [0.30, 0.32, np.nan, 0.34, 0.36, 0.38], "leqmod_gan": [0.5, *none[1:]]}
        for model, values in whole.items():
            lesions = lesion.get(model, none) if site == "mct" else none
            for i, (subject, level) in enumerate(CASES):
                rows.append(_row(model, site, subject, level, nrmse_whole=values[i],
                                 nrmse_lesion=lesions[i],
                                 dice_lesion=0.5 if model == "swin_unetr" else np.nan))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def metrics() -> pd.DataFrame:
    return _metrics_frame()


@pytest.fixture(scope="module")
def table2(metrics) -> pd.DataFrame:
    return build_table(metrics, SPEC2, **FAST)


def _get(table, group, model, metric):
    hit = table[(table.group == group) & (table.model == model) & (table.metric == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


# --- long form --------------------------------------------------------------------------

def test_long_form_layout_and_row_order(table2):
    assert tuple(table2.columns) == LONG_COLUMNS
    assert list(table2["group"].unique()) == ["mct", "new_site", "all"]
    # spach_transformer is absent and skipped; swin_unetr is not a Table 2 model.
    assert list(table2["model"].unique()) == ["leqmod_gan", "med_ddpm", "amdiff"]
    assert len(table2) == 3 * 3 * len(columns.NRMSE)


def test_mean_std_and_n(table2):
    amdiff = _get(table2, "mct", "amdiff", "nrmse_whole")
    assert (amdiff["n"], amdiff["mean"]) == (6, pytest.approx(0.15))
    assert amdiff["std"] == pytest.approx(math.sqrt(0.007 / 5))
    med = _get(table2, "mct", "med_ddpm", "nrmse_whole")
    assert med["mean"] == pytest.approx(0.185)
    assert med["std"] == pytest.approx(math.sqrt(0.01575 / 5))
    pooled = _get(table2, "all", "amdiff", "nrmse_whole")    # both sites' 12 cases
    assert (pooled["n"], pooled["mean"]) == (12, pytest.approx(0.20))
    assert pooled["std"] == pytest.approx(math.sqrt(0.044 / 11))


def test_nan_is_left_out(table2):
    lesion = _get(table2, "mct", "amdiff", "nrmse_lesion")
    assert (lesion["n"], lesion["mean"]) == (5, pytest.approx(0.34))
    single = _get(table2, "mct", "leqmod_gan", "nrmse_lesion")
    assert single["n"] == 1 and math.isnan(single["std"])
    not_applicable = _get(table2, "mct", "med_ddpm", "nrmse_lesion")
    assert not_applicable["n"] == 0 and math.isnan(not_applicable["mean"])
    assert not not_applicable["best"] and not not_applicable["star"]
    all_nan = table2[(table2.group == "new_site") & (table2.metric == "nrmse_lesion")]
    assert not all_nan["best"].any()


def test_best_is_lowest_nrmse_with_ties(table2):
    def best(group):
        rows = table2[(table2.group == group) & (table2.metric == "nrmse_whole")]
        return set(rows.loc[rows["best"], "model"])
    assert best("mct") == {"leqmod_gan"}            # .145 < .150 < .185
    assert best("new_site") == {"amdiff"}           # .250 < .255 < .285
    assert best("all") == {"amdiff", "leqmod_gan"}  # tie at .200
    assert _get(table2, "mct", "amdiff", "nrmse_lesion")["best"]


def test_comparisons_and_stars(table2):
    med = _get(table2, "mct", "med_ddpm", "nrmse_whole")
    assert med["n_pairs"] == 6
    assert med["p_wilcoxon"] == pytest.approx(0.03125)
    assert med["mean_difference"] == pytest.approx(-0.035)
    assert med["ci_low"] <= -0.035 <= med["ci_high"]
    assert med["star"] and med["significant"]
    for group in ("mct", "new_site", "all"):
        leq = _get(table2, group, "leqmod_gan", "nrmse_whole")
        assert leq["p_wilcoxon"] > 0.05 and not leq["star"]
    ref = _get(table2, "mct", "amdiff", "nrmse_whole")
    assert pd.isna(ref["p_wilcoxon"]) and pd.isna(ref["n_pairs"]) and pd.isna(ref["significant"])
    assert not ref["star"]
    p = table2["p_wilcoxon"].to_numpy(float)
    assert (table2["p_holm"].dropna() >= p[np.isfinite(p)] - 1e-15).all()


def test_best_rules_for_other_metrics():
    rows = []
    for model, dice, bias in (("amdiff", 0.6, -5.0), ("nnmamba", 0.7, 2.0),
                              ("medsam3d", 0.5, -1.0)):
        rows += [_row(model, "mct", s, lvl, dice_lesion=dice + 0.01 * i,
                      tlg_bias_pct=bias + 0.1 * i) for i, (s, lvl) in enumerate(CASES)]
    df = pd.DataFrame(rows)
    dice = build_table(df, TABLES[1], **FAST)
    best_dice = dice[(dice.metric == "dice_lesion") & dice.best]
    assert set(best_dice["group"]) == {"mct", "all"} and set(best_dice["model"]) == {"nnmamba"}
    quant = build_table(df, TABLES[3], **FAST)
    best_bias = quant[(quant.metric == "tlg_bias_pct") & quant.best]
    assert list(best_bias["model"]) == ["medsam3d"]   # smallest |mean|, not the lowest mean


def test_table4_has_the_whole_regularizer_ablation():
    """amdiff_no_lor (all of L_lor removed) is a Table 4 row, after the partial ablations."""
    spec4 = next(spec for spec in TABLES if spec.name == "table4_ablation")
    assert spec4.models == ("amdiff", "amdiff_no_revision", "amdiff_no_organ_reg",
                            "amdiff_no_lesion_reg", "amdiff_no_lor", "amdiff_no_resmamba")
    assert "not in the paper's Table 4" in spec4.caption
    rows = [_row(model, "mct", s, lvl, nrmse_whole=base + 0.01 * i)
            for model, base in (("amdiff_no_lor", 0.3), ("amdiff", 0.2), ("amdiff_no_organ_reg", 0.25))
            for i, (s, lvl) in enumerate(CASES)]
    table = build_table(pd.DataFrame(rows), spec4, **FAST)
    assert list(table["model"].unique()) == ["amdiff", "amdiff_no_organ_reg", "amdiff_no_lor"]
    lor = _get(table, "all", "amdiff_no_lor", "nrmse_whole")
    assert lor["n"] == 6 and lor["mean"] == pytest.approx(0.325) and lor["n_pairs"] == 6
    assert "| w/o lesion-organ regularizer | .325 ± .019" in to_markdown(table, spec4)


# --- renderings -------------------------------------------------------------------------

def test_number_format_follows_the_paper():
    assert format_number(0.146, "nrmse_whole") == ".146"
    assert format_number(-0.02, "dice_lesion") == "-.020"
    assert format_number(1.25, "nrmse_whole") == "1.250"
    assert format_number(0.012, "nrmse_whole", signed=True) == "+.012"
    assert format_number(-1e-9, "nrmse_whole", signed=True) == ".000"
    assert format_number(-21.604, "tlg_bias_pct") == "-21.60"
    assert format_number(float("nan"), "nrmse_whole") == "–"


def test_markdown_cells_bold_and_asterisks(table2):
    md = to_markdown(table2, SPEC2)
    dashes = " | ".join(["–"] * 8)
    seven_dashes = " | ".join(["–"] * 7)
    # LeqMod-GAN's one lesion image vs AMDiff's five: the test uses fewer images (dagger).
    assert "| mCT | LeqMod-GAN | **.145 ± .048** | .500 ± –† | " + seven_dashes + " |" in md
    assert "|  | 3D Med-DDPM | .185 ± .056\\* | " + dashes + " |" in md
    assert "|  | AMDiff | .150 ± .037 | **.340 ± .032** | " in md
    assert "| new_site | LeqMod-GAN | .255 ± .048 | " + dashes + " |" in md
    assert "|  | AMDiff | **.250 ± .037** | " + dashes + " |" in md
    assert "| All | LeqMod-GAN | **.200 ± " in md
    assert "|  | AMDiff | **.200 ± .063** | " in md
    assert "\\* p < 0.05, two-sided Wilcoxon signed-rank test" in md
    assert md.count("\\*") == 3 + 1          # med_ddpm in each of 3 groups + the footnote


def test_markdown_comparison_section(table2):
    md = to_markdown(table2, SPEC2)
    comparisons = md.split("### Comparisons with AMDiff", 1)[1]
    line = next(l for l in comparisons.splitlines()
                if l.startswith("| mCT | 3D Med-DDPM | NRMSE Whole image |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:5] == ["6", "6"]                  # images, subjects
    assert cells[5].startswith("-.035 [") and cells[5].endswith("]")
    assert cells[6] == "0.031"
    # Whole image for both peers, plus LeqMod-GAN's one lesion pair in mCT and All.
    assert "tests per family: mCT 3, new_site 2, All 3." in comparisons
    assert "| mCT | 3D Med-DDPM | NRMSE Lesion |" not in comparisons   # no pair: TSV only


def test_latex_layout_escaping_and_marks(table2):
    tex = to_latex(table2, SPEC2)
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{llccccccccc}",
                    r"\multicolumn{9}{c}{NRMSE}", r"\cmidrule(lr){3-11}"):
        assert command in tex
    assert r"new\_site & LeqMod-GAN & .255 $\pm$ .048 & --" in tex
    assert r"mCT & LeqMod-GAN & \textbf{.145 $\pm$ .048} & .500 $\pm$ --$^{\dagger}$ &" in tex
    assert r" & 3D Med-DDPM & .185 $\pm$ .056$^{*}$ & --" in tex
    assert r"p \textless{} 0.05" in tex
    assert "±" not in tex and "–" not in tex and "new_site" not in tex


def test_latex_escape():
    assert latex_escape("a_b & 50% #1 $x$ {y} ~^\\") == (
        r"a\_b \& 50\% \#1 \$x\$ \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}")
    assert latex_escape("TLG Bias (%)") == r"TLG Bias (\%)"


def test_no_comparisons_without_reference(metrics):
    table = build_table(metrics[metrics.model != "amdiff"], SPEC2, **FAST)
    assert not table.empty and not table["star"].any() and table["p_wilcoxon"].isna().all()
    md = to_markdown(table, SPEC2)
    assert "No comparisons" in md and "\\*" not in md


# --- files ------------------------------------------------------------------------------

def test_write_tables_writes_every_file(metrics, tmp_path):
    paths = write_tables(metrics, tmp_path, **FAST)
    assert len(paths) == 3 * len(TABLES)
    for spec in TABLES:
        for suffix in (".tsv", ".md", ".tex"):
            assert (tmp_path / f"{spec.name}{suffix}") in paths
            assert (tmp_path / f"{spec.name}{suffix}").read_text()
    assert not list(tmp_path.glob(".*tmp*"))       # no temporaries left behind

    tsv = pd.read_csv(tmp_path / "table2_denoising.tsv", sep="\t")
    assert tuple(tsv.columns) == LONG_COLUMNS
    med = tsv[(tsv.group == "mct") & (tsv.model == "med_ddpm") & (tsv.metric == "nrmse_whole")]
    assert med["p_wilcoxon"].iloc[0] == pytest.approx(0.03125)
    assert tsv.loc[tsv.model == "amdiff", "p_wilcoxon"].isna().all()

    table4 = (tmp_path / "table4_ablation.md").read_text()   # AMDiff only, "All" only
    assert "| Method | NRMSE Whole image |" in table4 and "| AMDiff | **.200 ± .063** |" in table4
    assert "No comparisons" in table4


def test_empty_table_is_written_with_a_note(metrics, tmp_path):
    only_segmenter = metrics[metrics.model == "swin_unetr"]
    paths = write_tables(only_segmenter, tmp_path, (TABLES[0],), **FAST)
    assert [p.name for p in paths] == ["table2_denoising.tsv", "table2_denoising.md",
                                       "table2_denoising.tex"]
    assert "nothing to show" in (tmp_path / "table2_denoising.md").read_text()
    assert "nothing to show" in (tmp_path / "table2_denoising.tex").read_text()
    tsv = pd.read_csv(tmp_path / "table2_denoising.tsv", sep="\t")
    assert tsv.empty and tuple(tsv.columns) == LONG_COLUMNS


def test_missing_metric_column_is_an_error(metrics):
    with pytest.raises(ValueError, match="nrmse_whole"):
        build_table(metrics.drop(columns=["nrmse_whole"]), SPEC2, **FAST)


# --- excluded cases and Table 5 ---------------------------------------------------------

def test_each_cell_counts_the_images_its_mean_leaves_out(table2):
    assert _get(table2, "mct", "amdiff", "nrmse_lesion")["n_excluded"] == 1        # one NaN
    assert _get(table2, "mct", "leqmod_gan", "nrmse_lesion")["n_excluded"] == 5
    assert _get(table2, "mct", "med_ddpm", "nrmse_lesion")["n_excluded"] == 6       # not applicable
    assert _get(table2, "all", "amdiff", "nrmse_whole")["n_excluded"] == 0
    text = to_markdown(table2, SPEC2)
    assert "Left out of the means as undefined (NaN" in text
    assert "mCT NRMSE Lesion: LeqMod-GAN 5 of 6, AMDiff 1 of 6;" in text
    assert "NRMSE Whole image:" not in text                                      # nothing left out
    assert "NRMSE Liver:" not in text and "new_site NRMSE Lesion" not in text   # "–" cells
    assert "Left out of the means" in to_latex(table2, SPEC2)


def _detection_frame() -> pd.DataFrame:
    """AMDiff finds its lesions; nnMamba labels the whole body as one lesion (0 matches);
    s6 is lesion-free: lesion-wise scores NaN there, hallucinated volume reported."""
    rows = []
    for i, (subject, level) in enumerate(CASES):
        free = subject == "s6"
        nan_if_free = (lambda v: np.nan if free else v)
        common = dict(mtv_true_ml=0.0 if free else 10.0 + i, tlg_true=0.0 if free else 50.0)
        rows.append(_row("amdiff", "mct", subject, level, **common, mtv_auto_ml=0.5 if free else 9.0 + i,
                         tlg_bias_pct=nan_if_free(-5.0 + i), lesions_tp=0 if free else 2,
                         lesions_fp=1 if free else 0, lesions_fn=0,
                         lesion_precision=nan_if_free(1.0), lesion_recall=nan_if_free(1.0),
                         lesion_f1=nan_if_free(1.0), autopet_fp_volume_ml=0.5 if free else 0.0,
                         autopet_fn_volume_ml=0.0, lesion_free_fp_volume_ml=0.5 if free else np.nan))
        rows.append(_row("nnmamba", "mct", subject, level, **common, mtv_auto_ml=290000.0 + i,
                         tlg_bias_pct=nan_if_free(4000.0 + i), lesions_tp=0, lesions_fp=1,
                         lesions_fn=0 if free else 2, lesion_precision=nan_if_free(0.0),
                         lesion_recall=nan_if_free(0.0), lesion_f1=nan_if_free(0.0),
                         autopet_fp_volume_ml=290000.0 if free else 0.0, autopet_fn_volume_ml=0.0,
                         lesion_free_fp_volume_ml=290000.0 if free else np.nan))
    return pd.DataFrame(rows)


def test_table5_does_not_reward_segmenting_everything():
    spec5 = next(spec for spec in TABLES if spec.name == "table5_quantification")
    table = build_table(_detection_frame(), spec5, **FAST)
    for metric in ("lesion_precision", "lesion_recall", "lesion_f1", "lesions_tp", "lesions_fn"):
        assert _get(table, "all", "amdiff", metric)["best"], metric
        assert not _get(table, "all", "nnmamba", metric)["best"], metric
    f1 = _get(table, "all", "nnmamba", "lesion_f1")
    assert (f1["n"], f1["n_excluded"], f1["mean"]) == (5, 1, 0.0)    # the lesion-free image
    free = _get(table, "all", "nnmamba", "lesion_free_fp_volume_ml")
    assert (free["n"], free["n_excluded"], free["mean"]) == (1, 5, 290000.0)
    # Volumes are shown beside each other, described but not tested (no direction).
    volume = _get(table, "all", "nnmamba", "mtv_auto_ml")
    assert volume["mean"] == pytest.approx(290002.5) and not volume["best"]
    assert pd.isna(volume["p_wilcoxon"]) and not volume["star"]
    assert _get(table, "all", "nnmamba", "lesion_f1")["n_pairs"] == 5
    text = to_markdown(table, spec5)
    assert "Lesion volume (mL) Predicted" in text and "autoPET volume (mL) FP" in text
    assert "Lesion-free images FP volume (mL): 5 of 6 images for every method" in text
    assert "| nnMamba |" in text and ".000 ± .000" in text                      # 3-decimal F1


# --- ties, n, Holm families, |bias|, cases of means vs tests ------------------------------

def _spec(name):
    return next(spec for spec in TABLES if spec.name == name)


def test_ties_after_rounding_are_all_bold():
    """Means that print alike are tied, whatever the digits below the printed ones."""
    rows = []
    for model, nrmse, dice, bias in (("leqmod_gan", 0.1231, 0.0001, -0.004),
                                     ("med_ddpm", 0.1234, 0.0002, 0.003),
                                     ("amdiff", 0.1229, 0.0, 0.02)):
        rows += [_row(model, "mct", s, lvl, nrmse_whole=nrmse, dice_lesion=dice,
                      tlg_bias_pct=bias) for s, lvl in CASES]
    df = pd.DataFrame(rows)
    table2 = build_table(df, SPEC2, **FAST)
    for group in ("mct", "all"):
        assert _get(table2, group, "med_ddpm", "nrmse_whole")["best"]   # .123 like the others
        whole = table2[(table2.group == group) & (table2.metric == "nrmse_whole")]
        assert whole["best"].all()
    md = to_markdown(table2, SPEC2)
    for line in ("| mCT | LeqMod-GAN | **.123 ± .000**", "|  | 3D Med-DDPM | **.123 ± .000**",
                 "|  | AMDiff | **.123 ± .000** |"):
        assert line in md
    dice = df.assign(model=df.model.map({"leqmod_gan": "swin_unetr", "med_ddpm": "nnmamba",
                                         "amdiff": "amdiff"}))
    table3 = build_table(dice, _spec("table3_segmentation"), **FAST)
    assert table3.loc[table3.metric == "dice_lesion", "best"].all()      # every one .000
    table5 = build_table(dice, _spec("table5_quantification"), **FAST)
    bias = table5[(table5.metric == "tlg_bias_pct") & (table5.group == "all")]
    assert set(bias.loc[bias["best"], "model"]) == {"swin_unetr", "nnmamba"}   # 0.00, 0.00 < 0.02


def _clustered_rows(model_values, site_subjects):
    """nrmse_whole per image: value = base + offset of the model; subjects x levels per site."""
    rows = []
    for site, subjects, levels in site_subjects:
        for s in range(subjects):
            for j, level in enumerate(levels):
                for model, offset in model_values.items():
                    rows.append(_row(model, site, f"s{s + 1}", level,
                                     nrmse_whole=0.2 + 0.01 * s + 0.005 * j + offset))
    return pd.DataFrame(rows)


def test_two_subjects_at_three_levels_give_no_asterisk_and_n_is_stated():
    df = _clustered_rows({"amdiff": 0.0, "med_ddpm": 0.03},
                         [("uexplorer", 2, ("p002", "p006", "p012")), ("vision", 2, ("p017",))])
    table = build_table(df, SPEC2, **FAST)
    med = _get(table, "uexplorer", "med_ddpm", "nrmse_whole")
    assert (med["n"], med["n_subjects"], med["n_pairs"], med["n_pair_subjects"]) == (6, 2, 6, 2)
    assert med["p_wilcoxon"] == pytest.approx(0.5) and not med["star"]
    assert not table["star"].any()                    # 4 subjects pooled: p >= 2/2^4 as well
    md = to_markdown(table, SPEC2)
    assert "n (subjects / images): Vision 2 / 2, uExplorer 2 / 6, All 4 / 8;" in md
    assert "| uExplorer | 3D Med-DDPM | NRMSE Whole image | 6 | 2 |" in md
    assert "Vision 2 / 2, uExplorer 2 / 6, All 4 / 8" in to_latex(table, SPEC2)


def _caption_family_sizes(text):
    """{group label: size} from the generated Holm sentence."""
    listed = text.split("tests per family: ", 1)[1].split(".", 1)[0]
    return {name: int(size) for name, size in (part.rsplit(" ", 1) for part in listed.split(", "))}


def test_holm_family_size_is_what_the_caption_states(table2):
    md = to_markdown(table2, SPEC2)
    stated = _caption_family_sizes(md)
    assert stated == _caption_family_sizes(to_latex(table2, SPEC2).replace(r"\_", "_"))
    assert "one per scanner group, the pooled All (which reuses the sites' subjects)" in md
    peers = table2[table2.model != "amdiff"]
    for group, label in (("mct", "mCT"), ("new_site", "new_site"), ("all", "All")):
        part = peers[peers.group == group]
        assert stated[label] == int(part["p_wilcoxon"].notna().sum())
        assert (part["holm_family_size"] == stated[label]).all()
        finite = part["p_wilcoxon"].notna()
        np.testing.assert_allclose(part.loc[finite, "p_holm"],
                                   holm(part.loc[finite, "p_wilcoxon"]))


def test_holm_family_of_a_table_without_sites(metrics):
    spec4 = _spec("table4_ablation")
    df = metrics.assign(model=metrics.model.map({"amdiff": "amdiff", "med_ddpm": "amdiff_no_lor",
                                                 "leqmod_gan": "amdiff_no_revision"}))
    table = build_table(df.dropna(subset=["model"]), spec4, **FAST)
    tests = int(table["p_wilcoxon"].notna().sum())
    assert tests == 3                               # whole image x 2, lesion x 1
    assert f"Holm-Bonferroni family: the {tests} tests of this table." in to_markdown(table, spec4)


def test_the_tlg_asterisk_tests_the_absolute_bias():
    """Bold rewards the bias closest to zero; the asterisk tests |bias|, not the signed bias."""
    spec5 = _spec("table5_quantification")
    rows = []
    for i, (subject, level) in enumerate(CASES):
        sign = (-1) ** i
        rows += [_row("amdiff", "mct", subject, level, tlg_bias_pct=1.0 * sign),
                 _row("nnmamba", "mct", subject, level, tlg_bias_pct=-(5.0 + i) * sign)]
    table = build_table(pd.DataFrame(rows), spec5, **FAST)
    nn = _get(table, "all", "nnmamba", "tlg_bias_pct")
    assert nn["tested"] == "|value|" and nn["p_wilcoxon"] == pytest.approx(0.03125)
    assert nn["star"]                               # the signed differences alternate: p = 1
    assert nn["mean_difference"] == pytest.approx(1.0 - 7.5)
    md = to_markdown(table, spec5)
    assert "TLG Bias (%) (absolute)" in md and "of |value|, the closeness to zero" in md


def test_cells_whose_test_used_fewer_images_than_the_means_carry_a_dagger():
    rows = [_row(model, "mct", s, lvl, nrmse_whole=0.2 + 0.01 * i + offset)
            for model, offset in (("amdiff", 0.0), ("med_ddpm", 0.02), ("leqmod_gan", 0.01))
            for i, (s, lvl) in enumerate(CASES)]
    df = pd.DataFrame(rows)
    df.loc[(df.model == "med_ddpm") & (df.subject == "s1"), "nrmse_whole"] = np.nan
    table = build_table(df, SPEC2, **FAST)
    med = _get(table, "mct", "med_ddpm", "nrmse_whole")
    assert (med["n"], med["n_pairs"], bool(med["same_cases"])) == (5, 5, False)
    leq = _get(table, "mct", "leqmod_gan", "nrmse_whole")
    assert bool(leq["same_cases"])
    assert pd.isna(_get(table, "mct", "amdiff", "nrmse_whole")["same_cases"])   # no test
    md = to_markdown(table, SPEC2)
    assert "|  | 3D Med-DDPM | .250 ± .016† |" in md      # 5 subjects: no asterisk either
    assert "| mCT | LeqMod-GAN | .235 ± .019\\* |" in md   # all 6 images: no dagger
    assert "† The test and the difference use only the images both" in md
    assert r".250 $\pm$ .016$^{\dagger}$" in to_latex(table, SPEC2)
    assert "†" not in to_markdown(build_table(df.dropna(), SPEC2, **FAST), SPEC2)


def test_table2_opens_with_the_training_free_rows_labelled_with_their_fwhm(metrics, tmp_path):
    from amdiff.evaluate.gaussian import row_labels

    amdiff = metrics[metrics.model == "amdiff"]
    free = pd.concat([amdiff.assign(model="lowcount_input", nrmse_whole=amdiff.nrmse_whole + 0.30),
                      amdiff.assign(model="gaussian_filter", nrmse_whole=amdiff.nrmse_whole + 0.10)])
    df = pd.concat([metrics, free], ignore_index=True)
    table = build_table(df, SPEC2, **FAST)
    for group in ("mct", "new_site", "all"):
        models = list(table.loc[table.group == group, "model"].unique())
        assert models == ["lowcount_input", "gaussian_filter", "leqmod_gan", "med_ddpm", "amdiff"]
    # peers like every denoiser: AMDiff lower on all 6 subjects -> p = 2/2^6, asterisk
    for model in ("lowcount_input", "gaussian_filter"):
        row = _get(table, "mct", model, "nrmse_whole")
        assert row["n_pairs"] == 6 and row["p_wilcoxon"] == pytest.approx(0.03125) and row["star"]

    write_tables(df, tmp_path, (SPEC2,), row_labels=row_labels({"mct": 6.0, "new_site": 4.0}), **FAST)
    md = (tmp_path / "table2_denoising.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| mCT |") or line.startswith("|  |")]
    assert rows[0].startswith("| mCT | Low-count input | .450 ± .037\\* |")
    assert rows[1].startswith("|  | Gaussian filter (FWHM 6 mm) | .250 ± .037\\* |")
    assert "| new_site | Low-count input |" in md and "|  | Gaussian filter (FWHM 4 mm) |" in md
    assert "|  | Gaussian filter (each site's FWHM) |" in md                  # All: two FWHMs
    assert "| mCT | Gaussian filter (FWHM 6 mm) | NRMSE Whole image |" in md   # comparisons
    assert r"& Gaussian filter (FWHM 6 mm) &" in (tmp_path / "table2_denoising.tex").read_text()
    assert "first two rows need no training" in md
