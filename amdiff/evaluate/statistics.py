"""Paired statistics of a reference model (AMDiff) against its peers, per site and pooled.

The paper (Tables 2-3) marks a result with an asterisk when the two-sided Wilcoxon
signed-rank test between AMDiff and the other method gives p < 0.05. Cases are paired by
(site, subject, count level, realization): the same low-count input went through both
models. A pair where either value is NaN (metric not applicable or undefined) is dropped,
as is a case that only one of the two models has.

Beyond the paper, every comparison also carries the mean paired difference
(reference - peer) with a bootstrap confidence interval and a Holm-Bonferroni adjusted
p-value. Holm's family is everything one `compare` call returns (for a table: all peers x
metrics x groups); the asterisk (``significant``) stays on the unadjusted p-value, as in
the paper, so both readings are available.

Bootstrap method: BCa (bias-corrected and accelerated), scipy's default. Differences of
error metrics are skewed (the paper's stds are of the order of the means) and BCa corrects
the percentile interval for skew and median bias. Where BCa is undefined (a degenerate
bootstrap distribution, e.g. almost all differences equal) the percentile interval is used
instead; a constant sample gives the constant as both bounds.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from amdiff.evaluate.columns import ALL_SITES, PAIR_KEYS

REFERENCE = "amdiff"
ALL_GROUP = ALL_SITES
KNOWN_SITES = ("mct", "vision", "uexplorer")   # paper order of the scanners
ALPHA = 0.05
N_RESAMPLES = 9999
SEED = 0
BOOTSTRAP_BATCH = 1000     # resamples held in memory at once (n_cases x 1000 floats)

COMPARE_COLUMNS = ("group", "metric", "model", "n", "mean", "std", "mean_difference",
                   "ci_low", "ci_high", "p_wilcoxon", "p_holm", "significant")


# --- pairing ----------------------------------------------------------------------------

def require_columns(df: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns: {', '.join(missing)}")


def _model_values(df: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    """One model's finite values of one metric, indexed by the pairing keys."""
    rows = df.loc[df["model"] == model, [*PAIR_KEYS, metric]]
    duplicated = rows.duplicated(list(PAIR_KEYS))
    if duplicated.any():
        # Two rows for one case would silently double-weight it in every test.
        first = rows.loc[duplicated, list(PAIR_KEYS)].iloc[0].tolist()
        raise ValueError(f"model {model!r} has more than one row for case {first}")
    rows = rows.astype({metric: float})
    return rows[np.isfinite(rows[metric].to_numpy())]


def paired_values(df: pd.DataFrame, reference: str, model: str,
                  metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``metric`` for ``reference`` and ``model`` on the cases both have.

    Pairs are matched on (site, subject, level, realization); a case missing from either
    model, or NaN for either, is left out. The arrays come back in a stable key order.
    """
    require_columns(df, ("model", *PAIR_KEYS, metric))
    ref = _model_values(df, reference, metric).rename(columns={metric: "ref"})
    other = _model_values(df, model, metric).rename(columns={metric: "other"})
    both = ref.merge(other, on=list(PAIR_KEYS), how="inner").sort_values(list(PAIR_KEYS))
    return both["ref"].to_numpy(float), both["other"].to_numpy(float)


# --- tests and intervals ----------------------------------------------------------------

def _finite_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples ``a`` and ``b``.

    scipy's defaults otherwise: zero differences are discarded ("wilcox"), the exact
    null distribution is used for small samples without ties. NaN when there is no
    (finite) pair; 1.0 when every difference is zero, where scipy has no non-zero rank to
    test and would warn or return NaN.
    """
    a, b = _finite_pairs(a, b)
    if a.size == 0:
        return float("nan")
    if np.all(a - b == 0):
        return 1.0
    return float(stats.wilcoxon(a, b, alternative="two-sided").pvalue)


def bootstrap_ci(differences: Sequence[float], confidence: float = 0.95,
                 n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of ``differences`` (NaNs dropped).

    BCa with a percentile fallback where BCa is undefined (see the module docstring).
    Deterministic for a given ``seed``. No data -> (NaN, NaN); a constant sample (one
    value included) -> (constant, constant).
    """
    d = np.asarray(differences, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan")
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    low, high = _scipy_bootstrap(d, confidence, n_resamples, seed, "BCa")
    if not (np.isfinite(low) and np.isfinite(high)):
        low, high = _scipy_bootstrap(d, confidence, n_resamples, seed, "percentile")
    return low, high


def _scipy_bootstrap(d: np.ndarray, confidence: float, n_resamples: int, seed: int,
                     method: str) -> tuple[float, float]:
    with warnings.catch_warnings():
        # BCa's "degenerate distribution" warning is handled by the percentile fallback.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.bootstrap((d,), np.mean, n_resamples=n_resamples,
                                 confidence_level=confidence, method=method,
                                 vectorized=True, batch=BOOTSTRAP_BATCH,
                                 rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    The i-th smallest of m p-values becomes max_{j<=i} (m - j + 1) p_(j), capped at 1, so
    the adjusted values keep the order of the raw ones. NaN stays NaN and does not count
    towards the family size m.
    """
    p = np.asarray(pvalues, float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


# --- groups and the comparison table ----------------------------------------------------

def ordered_sites(sites: Iterable[str]) -> list[str]:
    """Sites in the paper's order (mCT, Vision, uExplorer), any others after, sorted."""
    present = set(sites)
    known = [s for s in KNOWN_SITES if s in present]
    return known + sorted(present - set(KNOWN_SITES), key=str)


def groups(df: pd.DataFrame, per_site: bool = True) -> list[tuple[str, pd.DataFrame]]:
    """(name, rows) per site when ``per_site``, then the ``ALL_GROUP`` pooling every site."""
    out = []
    if per_site:
        out = [(site, df[df["site"] == site]) for site in ordered_sites(df["site"].unique())]
    return out + [(ALL_GROUP, df)]


def describe(values: Sequence[float]) -> tuple[int, float, float]:
    """(n, mean, sample std) of the finite values; std needs two values, else NaN."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0, float("nan"), float("nan")
    std = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
    return int(v.size), float(np.mean(v)), std


def _compare_one(rows: pd.DataFrame, reference: str, model: str, metric: str,
                 confidence: float, n_resamples: int, seed: int) -> dict:
    ref_values, model_values = paired_values(rows, reference, model, metric)
    differences = ref_values - model_values
    _, mean, std = describe(rows.loc[rows["model"] == model, metric])
    low, high = bootstrap_ci(differences, confidence, n_resamples, seed)
    return {
        "n": int(differences.size),
        "mean": mean,
        "std": std,
        "mean_difference": float(np.mean(differences)) if differences.size else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "p_wilcoxon": wilcoxon_p(ref_values, model_values),
    }


def compare(df: pd.DataFrame, peers: Sequence[str], metrics: Sequence[str], *,
            reference: str = REFERENCE, per_site: bool = True,
            confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
            seed: int = SEED) -> pd.DataFrame:
    """Reference vs each peer on each metric, per site (if ``per_site``) and pooled.

    One row per (group, metric, peer) with: n (pairs), mean and std of the peer over its
    own finite cases in the group, mean_difference (reference - peer) over the pairs with
    its bootstrap CI, the two-sided Wilcoxon p, the Holm-adjusted p over every row
    returned, and ``significant`` (unadjusted p < 0.05, the paper's asterisk).
    """
    require_columns(df, ("model", *PAIR_KEYS, *metrics))
    records = []
    for group, rows in groups(df, per_site):
        for metric in metrics:
            for model in peers:
                result = _compare_one(rows, reference, model, metric,
                                      confidence, n_resamples, seed)
                records.append({"group": group, "metric": metric, "model": model, **result})
    table = pd.DataFrame.from_records(records, columns=[c for c in COMPARE_COLUMNS
                                                        if c not in ("p_holm", "significant")])
    table["p_holm"] = holm(table["p_wilcoxon"].to_numpy(float))
    table["significant"] = table["p_wilcoxon"].to_numpy(float) < ALPHA   # NaN -> False
    return table[list(COMPARE_COLUMNS)]
