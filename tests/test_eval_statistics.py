"""Paired statistics of AMDiff vs peers: Wilcoxon, bootstrap CI, Holm, pairing, compare."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from amdiff.evaluate import statistics
from amdiff.evaluate.statistics import (ALL_GROUP, COMPARE_COLUMNS, bootstrap_ci, compare,
                                        holm, ordered_sites, paired_values, wilcoxon_p)

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
    """AMDiff lower than `worse` on every case; `mixed` alternates; 6 cases per site."""
    rows = []
    offsets = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    for site, base in (("vision", 0.20), ("mct", 0.10)):
        ref = base + 0.02 * np.arange(6)
        cases = [(f"s{i // 2 + 1}", ("p005", "p010")[i % 2]) for i in range(6)]
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


def test_compare_holm_family_is_the_whole_table():
    table = compare(_two_site_frame(), ["worse", "mixed"], ["nrmse_whole"],
                    n_resamples=99, seed=0)
    np.testing.assert_allclose(table["p_holm"], holm(table["p_wilcoxon"]))
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
