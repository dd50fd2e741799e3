"""Paired statistics of AMDiff vs peers: Wilcoxon, bootstrap CI, Holm, pairing, compare."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from amdiff.evaluate import statistics
from amdiff.evaluate.statistics import (ALL_GROUP, COMPARE_COLUMNS, bootstrap_ci,
                                        cluster_bootstrap_ci, compare, holm, ordered_sites,
                                        paired_cases, paired_values, signed_rank_p,
                                        subject_differences, wilcoxon_p)

# Hand-written paired samples: mixed signs, no zero difference, no tie.
A = np.array([0.21, 0.35, 0.18, 0.42, 0.27, 0.31, 0.25, 0.39])
B = np.array([0.25, 0.33, 0.24, 0.49, 0.26, 0.40, 0.28, 0.47])


# --- Wilcoxon ---------------------------------------------------------------------------

def test_wilcoxon_matches_scipy_on_fixed_data():
    assert wilcoxon_p(A, B) == pytest.approx(stats.wilcoxon(A, B).pvalue, abs=0)


def test_wilcoxon_one_sided_pattern_gives_exact_two_sided_p():
    # All six differences of one sign, distinct magnitudes: p = 2 / 2**6.
    a = np.array([0.10, 0.12, 0.14, 0.16, 0.18, 0.20])
    b = a + np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    assert wilcoxon_p(a, b) == pytest.approx(2 / 2**6)


def test_wilcoxon_drops_pairs_with_nan():
    a = np.append(A, [np.nan, 0.3])
    b = np.append(B, [0.2, np.nan])
    assert wilcoxon_p(a, b) == pytest.approx(stats.wilcoxon(A, B).pvalue)


def test_wilcoxon_no_pairs_is_nan_and_all_zero_differences_is_one():
    assert math.isnan(wilcoxon_p([], []))
    assert math.isnan(wilcoxon_p([np.nan, 1.0], [2.0, np.nan]))
    assert wilcoxon_p([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 1.0


def test_wilcoxon_rejects_unpaired_lengths():
    with pytest.raises(ValueError):
        wilcoxon_p([1.0, 2.0], [1.0])


# --- Holm -------------------------------------------------------------------------------

def test_holm_hand_worked_example():
    # Sorted: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04;
    # running max -> 0.02, 0.03, 0.06, 0.06; back in input order:
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_nan_stays_nan_and_is_not_counted():
    # m = 2: 0.01 x 2 = 0.02, 0.04 x 1 = 0.04.
    adjusted = holm([0.01, np.nan, 0.04])
    np.testing.assert_allclose(adjusted, [0.02, np.nan, 0.04])


def test_holm_is_capped_at_one_and_monotone():
    # 0.3 x 3 = 0.9, 0.8 x 2 = 1.6 -> 1, 0.9 x 1 = 0.9 -> running max 1.
    raw = [0.3, 0.9, 0.8]
    adjusted = holm(raw)
    np.testing.assert_allclose(adjusted, [0.9, 1.0, 1.0])
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= np.asarray(raw))


def test_holm_of_nothing():
    assert holm([]).shape == (0,)
    assert np.isnan(holm([np.nan, np.nan])).all()


# --- bootstrap --------------------------------------------------------------------------

def test_bootstrap_ci_covers_a_known_shift_and_is_deterministic():
    rng = np.random.default_rng(42)
    differences = 0.05 + rng.normal(0.0, 0.02, size=40)   # true mean difference 0.05
    low, high = bootstrap_ci(differences, n_resamples=2000, seed=7)
    assert low < 0.05 < high
    assert low < differences.mean() < high
    assert high - low < 0.03                               # about 4 standard errors
    assert bootstrap_ci(differences, n_resamples=2000, seed=7) == (low, high)
    assert bootstrap_ci(differences, n_resamples=2000, seed=8) != (low, high)


def test_bootstrap_ci_is_scipys_bca_interval():
    differences = A - B
    expected = stats.bootstrap((differences,), np.mean, n_resamples=999, method="BCa",
                               rng=np.random.default_rng(3)).confidence_interval
    assert bootstrap_ci(differences, n_resamples=999, seed=3) == pytest.approx(
        (expected.low, expected.high))


def test_bootstrap_ci_wider_for_higher_confidence():
    low95, high95 = bootstrap_ci(A - B, 0.95, n_resamples=999, seed=1)
    low99, high99 = bootstrap_ci(A - B, 0.99, n_resamples=999, seed=1)
    assert low99 <= low95 and high95 <= high99


def test_bootstrap_ci_degenerate_inputs():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan]))
    assert bootstrap_ci([0.2]) == (0.2, 0.2)
    assert bootstrap_ci([0.1, 0.1, np.nan, 0.1]) == (0.1, 0.1)


def test_bootstrap_ci_falls_back_to_percentile_where_bca_is_undefined(monkeypatch):
    # scipy answers NaN (with a DegenerateDataWarning) where BCa is undefined; such data
    # are hard to make with many resamples, so stand in for that answer.
    real = statistics._scipy_bootstrap
    methods = []

    def bca_undefined(d, confidence, n_resamples, seed, method):
        methods.append(method)
        return (math.nan, math.nan) if method == "BCa" else real(d, confidence,
                                                                 n_resamples, seed, method)

    monkeypatch.setattr(statistics, "_scipy_bootstrap", bca_undefined)
    low, high = bootstrap_ci(A - B, n_resamples=999, seed=0)
    expected = stats.bootstrap((A - B,), np.mean, n_resamples=999, method="percentile",
                               rng=np.random.default_rng(0)).confidence_interval
    assert methods == ["BCa", "percentile"]
    assert (low, high) == pytest.approx((expected.low, expected.high))


# --- pairing ----------------------------------------------------------------------------

def _case(model, site, subject, level, value, realization=0, metric="nrmse_whole"):
    return {"model": model, "site": site, "subject": subject, "level": level,
            "realization": realization, metric: value}


def test_pairing_drops_nan_and_unmatched_cases():
    df = pd.DataFrame([
        _case("amdiff", "mct", "s1", "p005", 0.10),
        _case("amdiff", "mct", "s1", "p010", 0.20),
        _case("amdiff", "mct", "s2", "p005", np.nan),    # NaN on the reference side
        _case("amdiff", "mct", "s3", "p005", 0.40),      # peer lacks this case
        _case("amdiff", "mct", "s1", "p005", 0.50, realization=1),
        _case("peer", "mct", "s1", "p005", 0.11),
        _case("peer", "mct", "s1", "p010", np.nan),      # NaN on the peer side
        _case("peer", "mct", "s2", "p005", 0.31),
        _case("peer", "vision", "s3", "p005", 0.41),     # same subject, other site
        _case("peer", "mct", "s1", "p005", 0.51, realization=1),
        _case("other", "mct", "s1", "p010", 0.9),
    ])
    ref, peer = paired_values(df, "amdiff", "peer", "nrmse_whole")
    np.testing.assert_allclose(ref, [0.10, 0.50])
    np.testing.assert_allclose(peer, [0.11, 0.51])


def test_pairing_rejects_duplicate_cases():
    df = pd.DataFrame([_case("amdiff", "mct", "s1", "p005", 0.1),
                       _case("amdiff", "mct", "s1", "p005", 0.2),
                       _case("peer", "mct", "s1", "p005", 0.3)])
    with pytest.raises(ValueError, match="more than one row"):
        paired_values(df, "amdiff", "peer", "nrmse_whole")


def test_pairing_requires_the_key_columns():
    df = pd.DataFrame([{"model": "amdiff", "site": "mct", "nrmse_whole": 0.1}])
    with pytest.raises(ValueError, match="lacks columns"):
        paired_values(df, "amdiff", "peer", "nrmse_whole")


# --- compare ----------------------------------------------------------------------------

def _two_site_frame() -> pd.DataFrame:
    """AMDiff lower than `worse` on every case; `mixed` alternates; 6 subjects per site with
    one image each, so subject-level and image-level n coincide."""
    rows = []
    offsets = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    for site, base in (("vision", 0.20), ("mct", 0.10)):
        ref = base + 0.02 * np.arange(6)
        cases = [(f"s{i + 1}", ("p005", "p010")[i % 2]) for i in range(6)]
        for model, values in (("amdiff", ref), ("worse", ref + offsets),
                              ("mixed", ref + offsets * [1, -1, 1, -1, 1, -1])):
            rows += [_case(model, site, subj, lvl, v) for (subj, lvl), v in zip(cases, values)]
    rows.append(_case("worse", "mct", "s9", "p005", 0.9))   # unpaired: in mean/std, not in n
    return pd.DataFrame(rows)


def test_compare_layout_groups_and_values():
    df = _two_site_frame()
    table = compare(df, ["worse", "mixed"], ["nrmse_whole"], n_resamples=999, seed=0)
    assert tuple(table.columns) == COMPARE_COLUMNS
    assert list(table["group"].unique()) == ["mct", "vision", ALL_GROUP]   # paper order
    assert len(table) == 3 * 2

    worse_mct = table[(table.group == "mct") & (table.model == "worse")].iloc[0]
    assert worse_mct["n"] == 6
    own = np.array([0.11, 0.14, 0.17, 0.20, 0.23, 0.26, 0.9])   # its 7 cases incl. unpaired
    assert worse_mct["mean"] == pytest.approx(own.mean())
    assert worse_mct["std"] == pytest.approx(own.std(ddof=1))
    assert worse_mct["mean_difference"] == pytest.approx(-0.035)
    assert worse_mct["ci_low"] <= -0.035 <= worse_mct["ci_high"] < 0
    assert worse_mct["p_wilcoxon"] == pytest.approx(2 / 2**6)
    assert bool(worse_mct["significant"])

    worse_all = table[(table.group == ALL_GROUP) & (table.model == "worse")].iloc[0]
    assert worse_all["n"] == 12                                   # both sites pooled
    assert worse_all["p_wilcoxon"] < 0.01

    mixed = table[table.model == "mixed"]
    assert (mixed["p_wilcoxon"] > 0.05).all()
    assert not mixed["significant"].any()


def test_compare_holm_family_is_each_group():
    """One Holm family per site and one for the pooled group, not the whole table."""
    table = compare(_two_site_frame(), ["worse", "mixed"], ["nrmse_whole"],
                    n_resamples=99, seed=0)
    for group in ("mct", "vision", ALL_GROUP):
        part = table[table.group == group]
        np.testing.assert_allclose(part["p_holm"], holm(part["p_wilcoxon"]))
        assert (part["holm_family_size"] == 2).all()
    assert not np.allclose(table["p_holm"], holm(table["p_wilcoxon"]))   # not one family
    # Significance is the unadjusted p (the paper's asterisk), not the Holm p.
    assert (table["significant"] == (table["p_wilcoxon"] < 0.05)).all()


def test_compare_without_sites_and_with_missing_peer():
    table = compare(_two_site_frame(), ["worse", "absent"], ["nrmse_whole"],
                    per_site=False, n_resamples=99)
    assert list(table["group"]) == [ALL_GROUP, ALL_GROUP]
    absent = table[table.model == "absent"].iloc[0]
    assert absent["n"] == 0
    assert math.isnan(absent["mean"]) and math.isnan(absent["p_wilcoxon"])
    assert math.isnan(absent["p_holm"]) and not absent["significant"]


def test_ordered_sites_puts_known_sites_first():
    assert ordered_sites(["zeta", "uexplorer", "alpha", "mct"]) == [
        "mct", "uexplorer", "alpha", "zeta"]


# --- subjects as the independent units ---------------------------------------------------

def _clustered_frame(n_subjects, levels, realizations=1, site="uexplorer", effect=None,
                     noise=0.0, seed=0, metric="nrmse_whole"):
    """`worse` = AMDiff + a per-subject effect (+ per-image noise) on every image."""
    rng = np.random.default_rng(seed)
    effects = np.full(n_subjects, 0.02) if effect is None else np.asarray(effect, float)
    rows = []
    for s in range(n_subjects):
        for level in levels:
            for r in range(realizations):
                ref = 0.2 + 0.01 * s
                peer = ref + effects[s] + (rng.normal(0.0, noise) if noise else 0.0)
                rows += [_case("amdiff", site, f"s{s + 1}", level, ref, r, metric),
                         _case("worse", site, f"s{s + 1}", level, peer, r, metric)]
    return pd.DataFrame(rows)


def test_subject_differences_average_each_subjects_images():
    df = pd.DataFrame([_case("amdiff", "mct", "s1", "p005", 0.10),
                       _case("amdiff", "mct", "s1", "p010", 0.20),
                       _case("amdiff", "vision", "s1", "p005", 0.30),   # other site: other subject
                       _case("peer", "mct", "s1", "p005", 0.16),
                       _case("peer", "mct", "s1", "p010", 0.22),
                       _case("peer", "vision", "s1", "p005", 0.27)])
    subjects = subject_differences(paired_cases(df, "amdiff", "peer", "nrmse_whole"))
    assert list(zip(subjects.site, subjects.subject)) == [("mct", "s1"), ("vision", "s1")]
    np.testing.assert_allclose(subjects["difference"], [-0.04, 0.03])
    assert list(subjects["n_images"]) == [2, 1]


def test_signed_rank_p_is_scipys_test_of_the_differences():
    assert signed_rank_p(A - B) == pytest.approx(stats.wilcoxon(A - B).pvalue)
    assert signed_rank_p([*(A - B), np.nan]) == pytest.approx(stats.wilcoxon(A - B).pvalue)
    assert math.isnan(signed_rank_p([])) and signed_rank_p([0.0, 0.0]) == 1.0


def test_two_subjects_three_levels_give_no_asterisk():
    """6 consistent image pairs from 2 subjects are 2 units: p = 2/2^2, not 2/2^6."""
    df = _clustered_frame(2, ("p025", "p062", "p125"))
    row = compare(df, ["worse"], ["nrmse_whole"], per_site=False, n_resamples=99).iloc[0]
    assert (row["n"], row["n_subjects"]) == (6, 2)
    assert row["p_wilcoxon"] == pytest.approx(0.5)
    assert not row["significant"]
    assert row["mean_difference"] == pytest.approx(-0.02)


def test_five_subjects_cannot_reach_p_below_0_0625():
    """One count level, 2 realizations each: realizations are averaged per subject."""
    df = _clustered_frame(5, ("p010",), realizations=2, effect=[0.01, 0.02, 0.03, 0.04, 0.05])
    row = compare(df, ["worse"], ["nrmse_whole"], per_site=False, n_resamples=99).iloc[0]
    assert (row["n"], row["n_subjects"]) == (10, 5)
    assert row["p_wilcoxon"] == pytest.approx(2 / 2**5)            # the smallest possible
    assert not row["significant"]
    tied = compare(_clustered_frame(5, ("p010",), realizations=2), ["worse"], ["nrmse_whole"],
                   per_site=False, n_resamples=99).iloc[0]         # 5 equal differences
    assert tied["p_wilcoxon"] == pytest.approx(2 / 2**5) and not tied["significant"]


def test_a_per_level_row_averages_that_levels_realizations():
    rng = np.random.default_rng(5)
    df = _clustered_frame(7, ("p005", "p010"), realizations=3,
                          effect=rng.normal(0.0, 0.02, 7), noise=0.03, seed=5)
    level = df[df.level == "p005"]
    row = compare(level, ["worse"], ["nrmse_whole"], per_site=False, n_resamples=99).iloc[0]
    ref, peer = (level[level.model == m].sort_values(["subject", "realization"])
                 for m in ("amdiff", "worse"))
    d = (ref["nrmse_whole"].to_numpy() - peer["nrmse_whole"].to_numpy()).reshape(7, 3)
    assert (row["n"], row["n_subjects"]) == (21, 7)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d.mean(axis=1)).pvalue)
    assert row["p_wilcoxon"] != pytest.approx(stats.wilcoxon(d.ravel()).pvalue)


def test_cluster_bootstrap_ci_is_wider_than_the_image_level_one_on_clustered_data():
    """Subjects differ a lot, their images hardly: the images are not independent."""
    rng = np.random.default_rng(3)
    df = _clustered_frame(8, ("p005", "p010", "p020", "p040"),
                          effect=0.03 + rng.normal(0.0, 0.03, 8), noise=0.002, seed=3)
    row = compare(df, ["worse"], ["nrmse_whole"], per_site=False, n_resamples=999).iloc[0]
    ref, peer = paired_values(df, "amdiff", "worse", "nrmse_whole")
    image_low, image_high = bootstrap_ci(ref - peer, n_resamples=999)
    assert row["ci_low"] <= row["mean_difference"] <= row["ci_high"]
    assert row["ci_high"] - row["ci_low"] > 1.5 * (image_high - image_low)


def test_cluster_bootstrap_of_balanced_clusters_is_bca_of_the_subject_means():
    # With equal cluster sizes the pooled mean is the mean of the subject means, and
    # scipy draws the same subject indices for both.
    means = np.array([0.03, -0.01, 0.05, 0.02, 0.04, 0.00, 0.06])
    differences = np.repeat(means, 3) + np.tile([-0.002, 0.0, 0.002], 7)
    clusters = np.repeat([f"s{i}" for i in range(7)], 3)
    expected = stats.bootstrap((means,), np.mean, n_resamples=999, method="BCa",
                               rng=np.random.default_rng(4)).confidence_interval
    assert cluster_bootstrap_ci(differences, clusters, n_resamples=999, seed=4) == \
        pytest.approx((expected.low, expected.high))


def test_cluster_bootstrap_ci_degenerate_inputs():
    assert all(math.isnan(v) for v in cluster_bootstrap_ci([], []))
    one_subject = cluster_bootstrap_ci([0.1, 0.3, 0.2], ["s1"] * 3)
    assert all(math.isnan(v) for v in one_subject)      # nothing between subjects to resample
    assert cluster_bootstrap_ci([0.1, 0.3, 0.2, np.nan], ["a", "a", "b", "b"]) == (
        pytest.approx(0.2), pytest.approx(0.2))         # both subject means 0.2
    with pytest.raises(ValueError):
        cluster_bootstrap_ci([0.1, 0.2], ["a"])


def test_a_bias_is_tested_on_its_absolute_value():
    """The TLG-bias bold is closest to zero, so the asterisk tests |bias|, not the sign."""
    ref = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]          # AMDiff within 1 % ...
    peer = [-5.0, 5.0, -6.0, 6.0, -7.0, 7.0]         # ... the peer 5-7 % off, either way
    df = pd.DataFrame([_case(model, "mct", f"s{i}", "p005", v, metric="tlg_bias_pct")
                       for model, values in (("amdiff", ref), ("peer", peer))
                       for i, v in enumerate(values)])
    row = compare(df, ["peer"], ["tlg_bias_pct"], per_site=False, n_resamples=99).iloc[0]
    assert row["tested"] == "|value|"
    assert row["mean_difference"] == pytest.approx(1.0 - 6.0)
    assert row["p_wilcoxon"] == pytest.approx(2 / 2**6) and row["significant"]
    # The signed differences alternate in sign: a test of the signed bias finds nothing.
    assert wilcoxon_p(ref, peer) > 0.5
    nrmse = compare(_two_site_frame(), ["worse"], ["nrmse_whole"], per_site=False,
                    n_resamples=99)
    assert (nrmse["tested"] == "value").all()
