"""The paper's numbers as data (transcription checks) and the paper-vs-ours comparison."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from amdiff.evaluate import paper
from amdiff.evaluate.columns import DICE, METRICS, NRMSE

from .conftest import REPO

# --- transcription ----------------------------------------------------------------------

PAPER_NAME = "000_dee158b79807f4b5.txt"
SITES = ("mct", "vision", "uexplorer")
TABLE2_MODELS = {"leqmod_gan", "spach_transformer", "med_ddpm", "amdiff"}
TABLE3_MODELS = {"swin_unetr", "nnmamba", "medsam3d", "amdiff"}
TABLE4_MODELS = ("amdiff", "amdiff_no_revision", "amdiff_no_organ_reg",
                 "amdiff_no_lesion_reg", "amdiff_no_resmamba")
PAPER_LABELS = {"LeqMod-GAN": "leqmod_gan", "SpachTransformer": "spach_transformer",
                "3D Med-DDPM": "med_ddpm", "AMDiff": "amdiff", "SwinUNETR": "swin_unetr",
                "nnMamba": "nnmamba", "Med-SAM": "medsam3d"}
SITE_LABELS = {"mCT": "mct", "Vision": "vision", "uExplorer": "uexplorer"}

# OCR numbers have no leading zero and sometimes a space after the dot (". 764 ± . 044").
MEAN_STD = re.compile(r"\.\s*(\d{3})\*?\s*±\s*\.\s*(\d{3})")
MEAN = re.compile(r"\.\s*(\d{3})")
STD = re.compile(r"±\s*\.\s*(\d{3})")


def _thousandths(digits) -> list[float]:
    return [int(d) / 1000 for d in digits]


def _cells(table: int, site: str, model: str) -> pd.DataFrame:
    p = paper.load_paper_tables()
    rows = p[(p["table"] == table) & (p["site"] == site) & (p["model"] == model)]
    return rows.set_index("metric")


def _assert_row(table, site, model, metrics, means, stds):
    cells = _cells(table, site, model)
    assert list(cells.index) == list(metrics)          # the paper's column order
    np.testing.assert_allclose(cells["mean"].to_numpy(), means, atol=1e-9)
    np.testing.assert_allclose(cells["std"].to_numpy(), stds, atol=1e-9)


def _paper_text() -> str | None:
    candidates = [os.environ.get("AMDIFF_PAPER_TEXT"),
                  REPO.parent / "shared" / "paper" / PAPER_NAME,
                  REPO / "shared" / "paper" / PAPER_NAME]
    for path in candidates:
        if path and Path(path).is_file():
            return Path(path).read_text()
    return None


@pytest.fixture(scope="module")
def paper_text() -> str:
    text = _paper_text()
    if text is None:
        pytest.skip("paper text not available (set AMDIFF_PAPER_TEXT)")
    return text


def test_table_shapes():
    p = paper.load_paper_tables()
    counts = p.groupby("table").size().to_dict()
    assert counts == {2: 3 * 4 * 9, 3: 3 * 4 * 8, 4: 5 * 17}
    assert not p.duplicated(["table", "site", "model", "metric"]).any()
    assert set(p["metric"]) <= set(METRICS)
    t2, t3, t4 = (p[p["table"] == t] for t in (2, 3, 4))
    assert set(t2["model"]) == TABLE2_MODELS and set(t2["metric"]) == set(NRMSE)
    assert set(t3["model"]) == TABLE3_MODELS and set(t3["metric"]) == set(DICE)
    assert set(t2["site"]) == set(t3["site"]) == set(SITES)
    assert set(t4["model"]) == set(TABLE4_MODELS) and set(t4["site"]) == {"all"}
    assert set(t4["metric"]) == set(NRMSE) | set(DICE)
    # NRMSE and Dice are fractions; every printed value is three decimals.
    for col in ("mean", "std"):
        assert p[col].between(0, 1).all()
        assert np.allclose(p[col] * 1000, np.round(p[col] * 1000))


# Rows copied verbatim from the paper's OCR text, so these checks run without it.
TABLE2_MCT_AMDIFF = ("\tAMDiff\t.146 ± .116*\t.150 ± .172\t.080 ± .041*\t.115 ± .053*\t"
                     ".129 ± .131*\t.148 ± .106\t.148 ± .121*\t.109 ± .056\t.101 ± .049*")
TABLE3_VISION_MEDSAM = ("\tMed-SAM\t.440 ± .323\t.715 ± .056\t.815 ± .101\t.554 ± .075\t"
                        ". 764 ± . 044\t.726 ± .121\t.500 ± .131\t.450 ± .158")
TABLE3_UEXPLORER_NNMAMBA = ("\tnnMamba\t.338 ± .336\t.888 ± .112\t.839 ± .095\t.520 ± .108\t"
                            ".693 ± .047\t.759 ± .067\t.781 ± .074\t.591 ± .089")
TABLE4_NO_LESION_REG = (
    "w/o lesion\t.147\t.274\t.095\t.130\t.137\t.153\t.158\t.111\t.116\t.474\t.860\t.892\t"
    ".640\t.766\t.662\t.655\t.740",
    "regularizer\t± .103\t± .176\t± .037\t± .058\t±.116\t± .100\t± .109\t± .053\t±.051\t"
    "± .218\t± .068\t± .057\t± .075\t± .045\t± .176\t± .248\t± .128")


@pytest.mark.parametrize("line, table, site, model, metrics", [
    (TABLE2_MCT_AMDIFF, 2, "mct", "amdiff", NRMSE),
    (TABLE3_VISION_MEDSAM, 3, "vision", "medsam3d", DICE),
    (TABLE3_UEXPLORER_NNMAMBA, 3, "uexplorer", "nnmamba", DICE),
])
def test_spot_check_site_rows(line, table, site, model, metrics):
    pairs = MEAN_STD.findall(line)
    assert len(pairs) == len(metrics)
    _assert_row(table, site, model, metrics,
                _thousandths(a for a, _ in pairs), _thousandths(b for _, b in pairs))


def test_spot_check_table4_row():
    means_line, stds_line = TABLE4_NO_LESION_REG
    means, stds = _thousandths(MEAN.findall(means_line)), _thousandths(STD.findall(stds_line))
    assert len(means) == len(stds) == 17
    _assert_row(4, "all", "amdiff_no_lesion_reg", (*NRMSE, *DICE), means, stds)


def _parse_site_table(lines: list[str], start: str, metrics) -> list[tuple]:
    """(site, model, metric, mean, std) of a per-site table of the paper text."""
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    out, site = [], None
    for line in lines[first + 1:]:
        if line.startswith("^{*}"):                 # the table's footnote ends it
            break
        fields = line.split("\t")
        site = SITE_LABELS.get(fields[0], site)
        if len(fields) > 1 and fields[1] in PAPER_LABELS:
            pairs = MEAN_STD.findall(line)
            assert len(pairs) == len(metrics), line
            out += [(site, PAPER_LABELS[fields[1]], m, int(a) / 1000, int(b) / 1000)
                    for m, (a, b) in zip(metrics, pairs)]
    return out


def _parse_table4(lines: list[str]) -> list[tuple]:
    first = next(i for i, line in enumerate(lines) if line.startswith("Table 4 Ablation"))
    rows = [line for line in lines[first:first + 20] if len(MEAN.findall(line)) == 17]
    assert len(rows) == 2 * len(TABLE4_MODELS)       # a means line, then a stds line
    out = []
    for k, model in enumerate(TABLE4_MODELS):
        means, stds = MEAN.findall(rows[2 * k]), STD.findall(rows[2 * k + 1])
        out += [("all", model, m, int(a) / 1000, int(b) / 1000)
                for m, a, b in zip((*NRMSE, *DICE), means, stds, strict=True)]
    return out


def test_every_cell_matches_the_paper_text(paper_text):
    lines = paper_text.splitlines()
    parsed = {2: _parse_site_table(lines, "Table 2 Denoising", NRMSE),
              3: _parse_site_table(lines, "Segmentation comparisons with SOTA", DICE),
              4: _parse_table4(lines)}
    p = paper.load_paper_tables()
    for table, cells in parsed.items():
        ours = p[p["table"] == table]
        assert len(cells) == len(ours)
        expected = pd.DataFrame(cells, columns=["site", "model", "metric", "mean", "std"])
        merged = ours.merge(expected, on=["site", "model", "metric"], suffixes=("", "_text"))
        assert len(merged) == len(ours)
        np.testing.assert_allclose(merged["mean"], merged["mean_text"], atol=1e-9)
        np.testing.assert_allclose(merged["std"], merged["std_text"], atol=1e-9)


STARRED = re.compile(r"\.\s*\d{3}\s*±\s*\.\s*\d{3}(\*?)")


def test_paper_asterisks_are_transcribed():
    """Tables 2-3 print 32 asterisks, all on AMDiff's rows; Table 4 reports no test."""
    p = paper.load_paper_tables()
    stars = p[p["significant"].fillna(False).astype(bool)]
    assert len(stars) == 32
    assert set(stars["model"]) == {"amdiff"}
    assert stars.groupby(["table", "site"]).size().to_dict() == {
        (2, "mct"): 6, (2, "vision"): 4, (2, "uexplorer"): 6,
        (3, "mct"): 5, (3, "vision"): 6, (3, "uexplorer"): 5}
    assert p.loc[p["table"] == 4, "significant"].isna().all()
    assert p.loc[p["table"] != 4, "significant"].notna().all()
    # The mCT AMDiff row of Table 2, copied from the text, star by star.
    marks = [m == "*" for m in STARRED.findall(TABLE2_MCT_AMDIFF)]
    assert _cells(2, "mct", "amdiff")["significant"].tolist() == marks


def test_asterisks_match_the_paper_text(paper_text):
    lines = paper_text.splitlines()
    found = {}
    for start, table, metrics in (("Table 2 Denoising", 2, NRMSE),
                                  ("Segmentation comparisons with SOTA", 3, DICE)):
        first = next(i for i, line in enumerate(lines) if line.startswith(start))
        site = None
        for line in lines[first + 1:]:
            if line.startswith("^{*}"):
                break
            fields = line.split("\t")
            site = SITE_LABELS.get(fields[0], site)
            if len(fields) > 1 and fields[1] in PAPER_LABELS:
                marks = STARRED.findall(line)
                assert len(marks) == len(metrics), line
                found.update({(table, site, PAPER_LABELS[fields[1]], m): k == "*"
                              for m, k in zip(metrics, marks)})
    p = paper.load_paper_tables()
    ours = {(r.table, r.site, r.model, r.metric): bool(r.significant)
            for r in p[p["table"] != 4].itertuples()}
    assert ours == found and sum(found.values()) == 32


def _significance_data() -> pd.DataFrame:
    """Six mCT subjects, one image each, AMDiff and the Table 2 denoisers (see the test)."""
    amdiff = np.array([0.10, 0.11, 0.12, 0.13, 0.14, 0.15])
    up = np.array([0.02, 0.05, 0.01, 0.04, 0.03, 0.06])      # a peer worse on every subject
    mixed = np.array([0.02, -0.05, 0.01, -0.04, 0.03, -0.06])
    values = {
        "amdiff": {"nrmse_whole": amdiff, "nrmse_lesion": amdiff, "nrmse_liver": amdiff,
                   "nrmse_lung": amdiff},
        "leqmod_gan": {"nrmse_whole": amdiff + up, "nrmse_lesion": amdiff + up,
                       "nrmse_liver": amdiff + up, "nrmse_lung": amdiff + up},
        "spach_transformer": {"nrmse_whole": amdiff + 2 * up, "nrmse_lesion": amdiff + up,
                              "nrmse_liver": amdiff + mixed, "nrmse_lung": amdiff + up},
        "med_ddpm": {"nrmse_whole": amdiff + up, "nrmse_lesion": amdiff + up,
                     "nrmse_liver": amdiff + up, "nrmse_lung": np.full(6, np.nan)},
    }
    rows = [{"model": model, "subject": f"mct{k}", "count_percent": 5.0,
             **{metric: v[k] for metric, v in by_metric.items()}}
            for model, by_metric in values.items() for k in range(6)]
    return make_metrics(rows)


def test_significance_beside_the_papers_asterisks():
    """Ours: AMDiff p < .05 against every other method of the table (Wilcoxon, subjects).

    mCT, Table 2 - paper: whole *, lesion none, liver *, lung *.
    whole: every peer worse on all 6 subjects, p = 2/2^6 each: significant, agrees.
    lesion: the same, but the paper has no asterisk: disagrees.
    liver: SpachTransformer differs with mixed signs, p > .05: not significant, disagrees.
    lung: Med-DDPM has no value, so "against every other" cannot be tested: n/a.
    """
    table = paper.comparison_table(_significance_data())
    key = table.set_index(["table", "site", "model", "metric"])
    cell = {m: key.loc[(2, "mct", "amdiff", m)] for m in NRMSE}
    assert cell["nrmse_whole"]["paper_significant"] and cell["nrmse_whole"]["ours_significant"]
    assert cell["nrmse_whole"]["ours_p_max"] == pytest.approx(2 / 2 ** 6)
    assert cell["nrmse_whole"]["significance_agrees"] == "yes"
    assert not cell["nrmse_lesion"]["paper_significant"]
    assert cell["nrmse_lesion"]["ours_significant"]
    assert cell["nrmse_lesion"]["significance_agrees"] == "no"
    mixed = np.array([0.02, -0.05, 0.01, -0.04, 0.03, -0.06])
    assert cell["nrmse_liver"]["ours_p_max"] == pytest.approx(stats.wilcoxon(-mixed).pvalue)
    assert not cell["nrmse_liver"]["ours_significant"]
    assert cell["nrmse_liver"]["significance_agrees"] == "no"
    assert pd.isna(cell["nrmse_lung"]["ours_significant"]) and math.isnan(cell["nrmse_lung"]["ours_p_max"])
    assert cell["nrmse_lung"]["significance_agrees"] == "n/a"
    # Only AMDiff's cells of Tables 2-3 are judged: a peer's, Table 4's and an untested site's are n/a.
    assert key.loc[(2, "mct", "leqmod_gan", "nrmse_whole"), "significance_agrees"] == "n/a"
    assert pd.isna(key.loc[(2, "mct", "leqmod_gan", "nrmse_whole"), "paper_significant"])
    assert key.loc[(4, "all", "amdiff", "nrmse_whole"), "significance_agrees"] == "n/a"
    assert key.loc[(2, "vision", "amdiff", "nrmse_whole"), "significance_agrees"] == "n/a"
    assert (table["significance_agrees"] != "n/a").sum() == 3
    assert "ours agrees on 1 of the 3" in paper.significance_summary(table)
    assert "The paper marks 32 of 51 cells" in paper.significance_summary(table)


def test_headline_constants_match_the_abstract(paper_text):
    abstract = next(line for line in paper_text.splitlines()
                    if line.startswith("Positron emission"))
    assert "22.92/17.27%" in abstract and "10.17/2.02%" in abstract
    biases = [(float(m), float(s)) for m, s in
              re.findall(r"(-\d+\.\d+)\s*(?:±|\\pm)\s*(\d+\.\d+)", abstract)]
    # "without the lesion-organ-specific regularizer" is the whole-L_lor ablation.
    assert "(without the lesion-organ-specific regularizer)" in abstract
    assert biases == [paper.PAPER_TLG_BIAS[m][:2] for m in
                      ("amdiff", "amdiff_no_lor", "amdiff_no_revision")]
    relative = {metric: value for _, metric, _, value, _ in paper.PAPER_RELATIVE_HEADLINES}
    assert relative == {"nrmse_lesion": 22.92, "nrmse_liver": 17.27,
                        "dice_lesion": 10.17, "dice_liver": 2.02}


def test_tlg_bias_paper_values_only_for_the_models_the_abstract_names():
    assert set(paper.PAPER_TLG_BIAS) == {paper.REFERENCE, *paper.ABLATIONS}
    assert paper.PAPER_TLG_BIAS["amdiff_no_lor"][:2] == (-30.83, 59.11)
    reported = {m for m, (mean, std, _) in paper.PAPER_TLG_BIAS.items() if np.isfinite(mean)}
    assert reported == {"amdiff", "amdiff_no_lor", "amdiff_no_revision"}
    # The partial ablations are in Table 4 only: no TLG bias of the paper beside them.
    for model in ("amdiff_no_organ_reg", "amdiff_no_lesion_reg"):
        assert all(map(math.isnan, paper.PAPER_TLG_BIAS[model][:2])), model


def test_claimed_percentages_appear_in_the_paper(paper_text):
    for claim in paper.CLAIMS:
        if claim.note.startswith("approximate"):
            continue
        assert f"{abs(claim.paper_change_pct)}" in paper_text, claim.id


def _printed_half_unit(value: float) -> float:
    decimals = len(repr(abs(value)).split(".")[1])
    return 0.5 * 10 ** -decimals


def test_ablation_claims_follow_from_table4():
    """Sec. 4.3/5 percentages are relative changes of the Table 4 means (to printed digits)."""
    p = paper.load_paper_tables()
    t4 = p[p["table"] == 4].set_index(["model", "metric"])["mean"]
    ablation_claims = [c for c in paper.CLAIMS if c.worse in paper.ABLATIONS]
    assert len(ablation_claims) >= 12
    for claim in ablation_claims:
        change = paper.relative_change(t4[(claim.better, claim.metric)],
                                       t4[(claim.worse, claim.metric)])
        tolerance = _printed_half_unit(claim.paper_change_pct) + 1e-3
        assert abs(change - claim.paper_change_pct) <= tolerance, claim.id


def test_claims_are_well_formed():
    models = {"amdiff", *paper.ABLATIONS, *TABLE2_MODELS, *TABLE3_MODELS}
    ids = [c.id for c in paper.CLAIMS]
    assert len(ids) == len(set(ids))
    for claim in paper.CLAIMS:
        assert claim.metric in METRICS and {claim.better, claim.worse} <= models
        # The stated percentage points the way the metric says is better.
        assert np.sign(claim.paper_change_pct) == paper.claimed_sign(claim), claim.id
    required = {
        ("nrmse_lesion", "amdiff_no_lesion_reg", -32.48), ("dice_lesion", "amdiff_no_lesion_reg", 9.7),
        ("nrmse_bone", "amdiff_no_organ_reg", -10.9), ("nrmse_aorta", "amdiff_no_organ_reg", -7.0),
        ("dice_lesion", "amdiff_no_revision", 27.14), ("nrmse_lesion", "amdiff_no_revision", -14.75),
        ("dice_aorta", "amdiff_no_revision", 5.7), ("dice_lesion", "amdiff_no_resmamba", 9.2),
        ("dice_bone", "amdiff_no_resmamba", 4.9), ("dice_aorta", "amdiff_no_resmamba", 5.8),
        ("nrmse_lesion", "med_ddpm", -22.92), ("nrmse_liver", "med_ddpm", -17.27),
        ("nrmse_liver", "leqmod_gan", -31.6), ("nrmse_liver", "spach_transformer", -7.1),
        ("dice_lesion", "nnmamba", 10.17), ("dice_liver", "nnmamba", 2.02)}
    present = {(c.metric, c.worse, c.paper_change_pct)
               for c in paper.CLAIMS if c.max_clinical_percent is None}
    assert required <= present
    assert {"swin_unetr", "medsam3d"} <= {c.worse for c in paper.CLAIMS if c.metric == "dice_lesion"}



def test_claims_file_is_read_typed_and_checked(tmp_path):
    below5 = [c for c in paper.CLAIMS if c.max_clinical_percent is not None]
    assert below5 and all(c.max_clinical_percent == 5.0 for c in below5)
    assert all(isinstance(c.paper_change_pct, float) for c in paper.CLAIMS)
    text = paper.PAPER_CLAIMS_PATH.read_text()
    header = next(line for line in text.splitlines() if not line.startswith("#"))
    row = next(line for line in text.splitlines() if line.startswith("ddpm_lesion_nrmse\t"))
    twice = tmp_path / "twice.tsv"
    twice.write_text(f"{header}\n{row}\n{row}\n")
    with pytest.raises(ValueError, match="duplicate claim ids.*ddpm_lesion_nrmse"):
        paper.load_claims(twice)
    renamed = tmp_path / "renamed.tsv"
    renamed.write_text(f"{header.replace('worse', 'baseline')}\n{row}\n")
    with pytest.raises(ValueError, match="columns must be id, statement"):
        paper.load_claims(renamed)

# --- hand-made metrics tables -----------------------------------------------------------

def make_metrics(rows: list[dict]) -> pd.DataFrame:
    """Rows with defaults for the keys; level follows count_percent, clinical_percent equals
    it (a site whose full list is the clinical count) unless given."""
    out = []
    for i, row in enumerate(rows):
        row = {"site": "mct", "subject": f"s{i}", "realization": 0, "count_percent": 5.0, **row}
        row.setdefault("level", f"{row['count_percent']:g}pct")
        row.setdefault("clinical_percent", row["count_percent"])
        out.append(row)
    return pd.DataFrame(out)


def paired(models_values: dict[str, list[float]], metric: str, site="mct",
           count_percent=5.0) -> list[dict]:
    """Case k of every model gets models_values[model][k] (same subject: a pair)."""
    return [{"model": model, "site": site, "subject": f"{site}{k}",
             "count_percent": count_percent, metric: v}
            for model, values in models_values.items() for k, v in enumerate(values)]


def _row(table: pd.DataFrame, quantity_start: str, models: str) -> pd.Series:
    hit = table[table["quantity"].str.startswith(quantity_start) & (table["models"] == models)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_headline_relative_changes_of_means():
    rows = (paired({"amdiff": [0.10, 0.20], "med_ddpm": [0.15, 0.25]}, "nrmse_lesion")
            + paired({"amdiff": [0.08, 0.08], "med_ddpm": [0.09, 0.11]}, "nrmse_liver", site="vision")
            + paired({"amdiff": [0.6, 0.5], "nnmamba": [0.5, 0.5]}, "dice_lesion", site="uexplorer"))
    # An AMDiff case that Med-DDPM lacks is left out (means over the same cases).
    rows.append({"model": "amdiff", "subject": "unpaired", "nrmse_lesion": 5.0})
    table = paper.headline(make_metrics(rows))
    lesion = _row(table, "lesion NRMSE", "amdiff vs med_ddpm")
    assert lesion["n"] == 2 and lesion["ours"] == pytest.approx(25.0)   # 0.15 vs 0.20
    assert lesion["paper"] == 22.92
    liver = _row(table, "liver NRMSE", "amdiff vs med_ddpm")
    assert liver["ours"] == pytest.approx(20.0) and liver["paper"] == 17.27   # 0.08 vs 0.10
    dice = _row(table, "lesion Dice", "amdiff vs nnmamba")
    assert dice["ours"] == pytest.approx(10.0) and dice["paper"] == 10.17    # 0.55 vs 0.50
    missing = _row(table, "liver Dice", "amdiff vs nnmamba")
    assert missing["n"] == 0 and math.isnan(missing["ours"])


def test_headline_tlg_bias_only_at_most_20_percent_of_the_clinical_count():
    rows = [{"model": "amdiff", "count_percent": 5.0, "tlg_bias_pct": -10.0},
            {"model": "amdiff", "count_percent": 20.0, "tlg_bias_pct": -30.0},   # 20 % is in
            # Vision's standard-count image: 16.7 % of its 30-min list, 100 % of the clinical count
            {"model": "amdiff", "site": "vision", "count_percent": 16.7, "clinical_percent": 100.0,
             "tlg_bias_pct": 500.0},
            {"model": "amdiff", "count_percent": 40.0, "tlg_bias_pct": 900.0},
            {"model": "amdiff", "count_percent": 5.0, "tlg_bias_pct": np.nan},   # undefined
            {"model": "amdiff_no_lesion_reg", "count_percent": 2.5, "tlg_bias_pct": -40.0},
            {"model": "amdiff_no_lesion_reg", "count_percent": 2.5, "tlg_bias_pct": -60.0},
            {"model": "amdiff_no_lor", "count_percent": 10.0, "tlg_bias_pct": -35.0}]
    table = paper.headline(make_metrics(rows))
    tlg = table[table["quantity"].str.startswith("TLG")].set_index("models")
    # only ablations present
    assert list(tlg.index) == ["amdiff", "amdiff_no_lesion_reg", "amdiff_no_lor"]
    assert tlg.loc["amdiff", "n"] == 2
    assert tlg.loc["amdiff", "ours"] == pytest.approx(-20.0)
    assert tlg.loc["amdiff", "ours_std"] == pytest.approx(math.sqrt(200.0))   # sample std
    assert (tlg.loc["amdiff", "paper"], tlg.loc["amdiff", "paper_std"]) == (-21.60, 47.26)
    assert tlg.loc["amdiff", "quantity"] == "TLG bias (%), ≤ 20% of clinical count"
    # The abstract's "without the lesion-organ-specific regularizer" is amdiff_no_lor; the
    # partial lesion ablation has no TLG bias in the paper.
    assert tlg.loc["amdiff_no_lor", "ours"] == pytest.approx(-35.0)
    assert (tlg.loc["amdiff_no_lor", "paper"], tlg.loc["amdiff_no_lor", "paper_std"]) == (-30.83, 59.11)
    assert "lesion-organ" in tlg.loc["amdiff_no_lor", "note"]
    assert tlg.loc["amdiff_no_lesion_reg", "ours"] == pytest.approx(-50.0)
    assert math.isnan(tlg.loc["amdiff_no_lesion_reg", "paper"])
    assert "not reported" in tlg.loc["amdiff_no_lesion_reg", "note"]


def test_headline_without_amdiff_rows_is_nan():
    table = paper.headline(make_metrics([{"model": "med_ddpm", "nrmse_lesion": 0.2}]))
    assert (table["n"] == 0).all() and table["ours"].isna().all()
    assert table.loc[table["models"] == "amdiff", "paper"].item() == -21.60


def test_low_count_cases_are_chosen_on_the_clinical_count_limits_included():
    """"Below 5 %" and "below 20 %": at most that percent of the clinical count, not of the list."""
    df = make_metrics([
        {"model": "amdiff", "site": "uexplorer", "count_percent": 2.5},
        {"model": "amdiff", "count_percent": 5.0},                            # exactly 5 %: in
        {"model": "amdiff", "site": "uexplorer", "count_percent": 6.25},
        {"model": "amdiff", "count_percent": 20.0},                           # exactly 20 %: in
        # mCT Group II: 5 % of the 30-min list is 29.9 % of one pass, the clinical count
        {"model": "amdiff", "subject": "g2", "count_percent": 5.0, "clinical_percent": 29.9401},
        {"model": "amdiff", "site": "vision", "count_percent": 16.7, "clinical_percent": 100.0}])
    assert sorted(paper.low_count(df, 5.0)["clinical_percent"]) == [2.5, 5.0]
    assert sorted(paper.low_count(df, 20.0)["clinical_percent"]) == [2.5, 5.0, 6.25, 20.0]
    assert len(paper.low_count(df, None)) == 6


def test_below_5_percent_claims_keep_the_5_percent_cases():
    rows = (paired({"amdiff": [0.10], "leqmod_gan": [0.20]}, "nrmse_lesion", count_percent=5.0)
            + paired({"amdiff": [0.30], "leqmod_gan": [0.10]}, "nrmse_lesion", site="uexplorer",
                     count_percent=6.25))
    table = paper.claims_table(make_metrics(rows)).set_index("id")
    below5 = table.loc["leqmod_lesion_nrmse_lt5"]
    assert below5["n"] == 1 and below5["reproduced"] == "yes"
    assert below5["ours_change_pct"] == pytest.approx(-50.0)
    assert below5["cases"] == "≤ 5% of clinical count"
    assert table.loc["leqmod_lesion_nrmse", "n"] == 2


def test_missing_key_columns_are_an_error():
    with pytest.raises(ValueError, match="count_percent"):
        paper.headline(pd.DataFrame({"model": ["amdiff"], "site": ["mct"], "subject": ["a"],
                                     "level": ["5pct"], "realization": [0]}))
    with pytest.raises(ValueError, match="clinical_percent"):
        paper.headline(pd.DataFrame({"model": ["amdiff"], "site": ["mct"], "subject": ["a"],
                                     "level": ["5pct"], "realization": [0], "count_percent": [5.0]}))


def test_duplicate_cases_are_an_error():
    rows = paired({"amdiff": [0.1], "med_ddpm": [0.2]}, "nrmse_lesion") * 2
    with pytest.raises(ValueError, match="more than one row"):
        paper.headline(make_metrics(rows))


CUSTOM_CLAIMS = (
    paper.Claim("lower_yes", "AMDiff lowers lesion NRMSE", "test", "nrmse_lesion",
                "amdiff", "amdiff_no_lesion_reg", -32.5),
    paper.Claim("higher_no", "AMDiff raises lesion Dice", "test", "dice_lesion",
                "amdiff", "amdiff_no_lesion_reg", 9.7),
    paper.Claim("tie_no", "AMDiff lowers liver NRMSE", "test", "nrmse_liver",
                "amdiff", "amdiff_no_lesion_reg", -1.0),
    paper.Claim("model_missing", "AMDiff lowers lesion NRMSE vs Med-DDPM", "test",
                "nrmse_lesion", "amdiff", "med_ddpm", -22.9),
    paper.Claim("metric_missing", "AMDiff lowers bone NRMSE", "test", "nrmse_bone",
                "amdiff", "amdiff_no_lesion_reg", -1.0),
    paper.Claim("low_count_yes", "AMDiff lowers aorta NRMSE below 5% count", "test",
                "nrmse_aorta", "amdiff", "amdiff_no_lesion_reg", -5.0, max_clinical_percent=5.0),
    paper.Claim("all_counts_no", "AMDiff lowers aorta NRMSE", "test",
                "nrmse_aorta", "amdiff", "amdiff_no_lesion_reg", -5.0),
)


def claim_data() -> pd.DataFrame:
    better, worse = "amdiff", "amdiff_no_lesion_reg"
    rows = (paired({better: [0.10, 0.20], worse: [0.20, 0.20]}, "nrmse_lesion")
            + paired({better: [0.40, 0.40], worse: [0.50, 0.50]}, "dice_lesion", site="vision")
            + paired({better: [0.10], worse: [0.10]}, "nrmse_liver", site="uexplorer")
            # Aorta: better below 5 % count, much worse at 40 %, so worse overall.
            + paired({better: [0.10], worse: [0.20]}, "nrmse_aorta", site="low",
                     count_percent=2.5)
            + paired({better: [0.90], worse: [0.30]}, "nrmse_aorta", site="high",
                     count_percent=40.0))
    return make_metrics(rows)


def test_claims_directions():
    table = paper.claims_table(claim_data(), CUSTOM_CLAIMS).set_index("id")
    assert table["reproduced"].to_dict() == {
        "lower_yes": "yes", "higher_no": "no", "tie_no": "no", "model_missing": "n/a",
        "metric_missing": "n/a", "low_count_yes": "yes", "all_counts_no": "no"}
    assert table.loc["lower_yes", "ours_change_pct"] == pytest.approx(-25.0)   # 0.15 vs 0.20
    assert table.loc["lower_yes", "n"] == 2
    assert table.loc["higher_no", "ours_change_pct"] == pytest.approx(-20.0)   # 0.40 vs 0.50
    assert table.loc["low_count_yes", "n"] == 1 and table.loc["all_counts_no", "n"] == 2
    assert table.loc["low_count_yes", "cases"] == "≤ 5% of clinical count"
    assert table.loc["model_missing", "n"] == 0
    assert table.loc["lower_yes", "paper_change_pct"] == -32.5


def test_claim_verdicts_follow_the_bootstrap_interval():
    """Eight subjects: AMDiff lower on every one (reproduced), higher on every one (reversed),
    lower on half and higher on half (inconclusive: the interval holds 0)."""
    base = [0.20, 0.22, 0.18, 0.25, 0.21, 0.19, 0.23, 0.24]
    claims = (paper.Claim("lower", "AMDiff lowers lesion NRMSE", "test", "nrmse_lesion",
                          "amdiff", "amdiff_no_lesion_reg", -10.0),
              paper.Claim("higher", "AMDiff lowers liver NRMSE", "test", "nrmse_liver",
                          "amdiff", "amdiff_no_lesion_reg", -10.0),
              paper.Claim("mixed", "AMDiff lowers lung NRMSE", "test", "nrmse_lung",
                          "amdiff", "amdiff_no_lesion_reg", -10.0))
    signs = [1, -1] * 4
    rows = (paired({"amdiff": [b - 0.05 for b in base], "amdiff_no_lesion_reg": base}, "nrmse_lesion")
            + paired({"amdiff": [b + 0.05 for b in base], "amdiff_no_lesion_reg": base}, "nrmse_liver")
            + paired({"amdiff": [b + 0.03 * s for b, s in zip(base, signs)],
                      "amdiff_no_lesion_reg": base}, "nrmse_lung"))
    table = paper.claims_table(make_metrics(rows), claims).set_index("id")
    assert table["verdict"].to_dict() == {"lower": "reproduced", "higher": "reversed",
                                          "mixed": "inconclusive"}
    low, high = table.loc["lower", ["ours_ci_low_pct", "ours_ci_high_pct"]]
    # every paired difference is -0.05 on a mean of 0.215: the interval is that one value
    assert low == pytest.approx(-0.05 / 0.215 * 100) and high == pytest.approx(low)
    assert table.loc["mixed", "ours_ci_low_pct"] < 0 < table.loc["mixed", "ours_ci_high_pct"]
    assert (table["n_subjects"] == 8).all()
    assert paper.verdict_counts(table) == {"reproduced": 1, "reversed": 1, "inconclusive": 1, "n/a": 0}


def test_default_claims_table_covers_every_claim():
    table = paper.claims_table(claim_data())
    assert list(table["id"]) == [c.id for c in paper.CLAIMS]
    assert table.set_index("id").loc["lesion_reg_lesion_nrmse", "reproduced"] == "yes"
    assert table.set_index("id").loc["lesion_reg_lesion_dice", "reproduced"] == "no"
    assert (table.set_index("id").loc[["revision_lesion_dice", "ddpm_liver_nrmse"],
                                      "reproduced"] == "n/a").all()


def test_comparison_table_per_site_and_pooled():
    rows = (paired({"amdiff": [0.10, 0.30]}, "nrmse_lesion", site="mct")
            + paired({"amdiff": [0.50]}, "nrmse_lesion", site="vision"))
    table = paper.comparison_table(make_metrics(rows))
    assert len(table) == len(paper.load_paper_tables()) + 17     # + amdiff_no_lor's Table 4 row
    key = table.set_index(["table", "site", "model", "metric"])
    mct = key.loc[(2, "mct", "amdiff", "nrmse_lesion")]
    assert (mct["n"], mct["paper_mean"], mct["paper_std"]) == (2, 0.150, 0.172)
    assert mct["ours_mean"] == pytest.approx(0.2)
    assert mct["ours_std"] == pytest.approx(math.sqrt(0.02))
    assert key.loc[(2, "vision", "amdiff", "nrmse_lesion"), "n"] == 1
    assert math.isnan(key.loc[(2, "vision", "amdiff", "nrmse_lesion"), "ours_std"])
    pooled = key.loc[(4, "all", "amdiff", "nrmse_lesion")]
    assert pooled["n"] == 3 and pooled["ours_mean"] == pytest.approx(0.3)
    assert key.loc[(2, "uexplorer", "amdiff", "nrmse_lesion"), "n"] == 0
    assert key.loc[(3, "mct", "nnmamba", "dice_lesion"), "n"] == 0


def test_comparison_table_whole_lor_ablation_has_no_paper_values():
    """The paper's Table 4 has no whole-L_lor row: ours stands beside NaN, not a reused number."""
    rows = paired({"amdiff_no_lor": [0.20, 0.40], "amdiff_no_organ_reg": [0.30, 0.30]},
                  "nrmse_lesion")
    table = paper.comparison_table(make_metrics(rows))
    lor = table[table["model"] == "amdiff_no_lor"]
    assert set(lor["table"]) == {4} and set(lor["site"]) == {"all"}
    assert list(lor["metric"]) == [*NRMSE, *DICE]
    assert lor["paper_mean"].isna().all() and lor["paper_std"].isna().all()
    cell = lor.set_index("metric").loc["nrmse_lesion"]
    assert cell["n"] == 2 and cell["ours_mean"] == pytest.approx(0.3)
    partial = table.set_index(["table", "model", "metric"]).loc[(4, "amdiff_no_organ_reg",
                                                                 "nrmse_lesion")]
    assert (partial["paper_mean"], partial["paper_std"]) == (0.186, 0.172)   # Table 4 as printed


def test_write_paper_comparison(tmp_path):
    metrics = claim_data()
    paths = paper.write_paper_comparison(metrics, tmp_path / "paper")
    names = {"headline.tsv", "headline.md", "paper_vs_reproduction.tsv",
             "paper_vs_reproduction.md", "claims.tsv"}
    assert {p.name for p in paths} == names and all(p.is_file() for p in paths)
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "paper").iterdir()) == sorted(names)
    report = (tmp_path / "paper" / "paper_vs_reproduction.md").read_text()
    assert paper.COHORT_NOTE in report.split("|")[0]          # the note precedes the tables
    assert "lesion_reg_lesion_nrmse" in report and "0.150 ± 0.172" in report
    claims = paper.read_output_tsv(tmp_path / "paper" / "claims.tsv")
    assert list(claims["id"]) == [c.id for c in paper.CLAIMS]
    assert set(claims["reproduced"]) == {"yes", "no", "n/a"}
    assert set(claims["verdict"]) <= set(paper.VERDICTS) and (claims["verdict"] == "n/a").any()
    assert claims["ours_change_pct"].isna().sum() == (claims["reproduced"] == "n/a").sum()
    comparison = paper.read_output_tsv(tmp_path / "paper" / "paper_vs_reproduction.tsv")
    assert len(comparison) == 3 * 4 * 9 + 3 * 4 * 8 + 6 * 17      # Table 4 + amdiff_no_lor
    lor = [line for line in report.splitlines() if "| amdiff_no_lor |" in line]
    assert len(lor) == 17 and all("| n/a |" in line for line in lor)
    heads = paper.read_output_tsv(tmp_path / "paper" / "headline.tsv")
    assert list(heads.columns) == list(paper.HEADLINE_COLUMNS)
    assert paper.COHORT_NOTE in (tmp_path / "paper" / "headline.md").read_text()
