"""Paired statistics of a reference model (AMDiff) against its peers, per site and pooled.

The paper (Tables 2-3) marks a result with an asterisk when the two-sided Wilcoxon
signed-rank test between AMDiff and the other method gives p < 0.05. Images are paired by
(site, subject, count level, realization): the same low-count input went through both
models. A pair where either value is NaN (metric not applicable or undefined) is dropped,
as is an image that only one of the two models has.

Independent units are subjects, not images: the count levels and realizations of one
subject share its anatomy and lesions, so treating them as separate pairs would overstate
n (2 subjects x 3 levels would give 6 "independent" pairs). Hence
- the Wilcoxon test runs on subject-averaged differences: per subject (site, subject), the
  mean over its paired images of reference - peer, one value per subject;
- the bootstrap resamples subjects (a cluster bootstrap) and recomputes the mean paired
  difference over the images of the drawn subjects, so its interval is for the difference
  of the two means over the paired images, with the subject as the resampling unit.
The images a subject contributes are those of the rows being tested: the tables pool all
count levels, so a subject's levels and realizations are averaged; rows restricted to one
count level (no table has them today) would average that level's realizations, one value
per subject again (our choice). With few subjects the test cannot reach p < 0.05 at all (exact two-sided
p >= 2 / 2^n: 0.5 for n = 2, 0.0625 for n = 5); no asterisk is then the honest answer.

For a metric where closest to zero is best (the TLG bias) the bold marks the smallest |mean|,
so the test and the difference are on per-image |value| (absolute bias): the test asks
whether one model is closer to zero than the other, which is what the bold claims.

Beyond the paper, every comparison also carries the mean paired difference
(reference - peer) with a bootstrap confidence interval and a Holm-Bonferroni adjusted
p-value. Holm's family is one group of one `compare` call (for a table: every peer x metric
of one scanner; the pooled group "all", which reuses the sites' subjects, is a family of
its own); the asterisk (``significant``) stays on the unadjusted p-value, as in the paper,
so both readings are available.

Bootstrap method: BCa (bias-corrected and accelerated), scipy's default. Differences of
error metrics are skewed (the paper's stds are of the order of the means) and BCa corrects
the percentile interval for skew and median bias. Where BCa is undefined (a degenerate
bootstrap distribution, e.g. almost all differences equal) the percentile interval is used
instead; a constant sample gives the constant as both bounds. A single subject gives no
interval (NaN): there is no between-subject spread to resample.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from amdiff.evaluate.columns import ALL_SITES, CLOSEST_TO_ZERO_IS_BETTER, PAIR_KEYS, SUBJECT_KEYS

REFERENCE = "amdiff"
ALL_GROUP = ALL_SITES
KNOWN_SITES = ("mct", "vision", "uexplorer")   # paper order of the scanners
ALPHA = 0.05
N_RESAMPLES = 9999
SEED = 0
BOOTSTRAP_BATCH = 1000     # resamples held in memory at once (n_cases x 1000 floats)

COMPARE_COLUMNS = ("group", "metric", "model", "n", "n_subjects", "mean", "std", "tested",
                   "mean_difference", "ci_low", "ci_high", "p_wilcoxon", "p_holm",
                   "holm_family_size", "significant")


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


def paired_cases(df: pd.DataFrame, reference: str, model: str, metric: str, *,
                 absolute: bool = False) -> pd.DataFrame:
    """The images both models have: the pairing keys plus columns "ref" and "other".

    Pairs are matched on (site, subject, level, realization); an image missing from either
    model, or NaN for either, is left out. Rows come in a stable key order. ``absolute``
    pairs |value| instead of the value (the TLG bias, where closest to zero is best).
    """
    require_columns(df, ("model", *PAIR_KEYS, metric))
    ref = _model_values(df, reference, metric).rename(columns={metric: "ref"})
    other = _model_values(df, model, metric).rename(columns={metric: "other"})
    both = ref.merge(other, on=list(PAIR_KEYS), how="inner").sort_values(list(PAIR_KEYS))
    if absolute:
        both[["ref", "other"]] = both[["ref", "other"]].abs()
    return both.reset_index(drop=True)


def paired_values(df: pd.DataFrame, reference: str, model: str,
                  metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``metric`` for ``reference`` and ``model`` on the images both have."""
    both = paired_cases(df, reference, model, metric)
    return both["ref"].to_numpy(float), both["other"].to_numpy(float)


def subject_differences(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per subject (site, subject): the mean of ref - other over its paired images, and
    how many images that mean is over. One row per subject, the unit of the Wilcoxon test."""
    d = pairs.assign(difference=pairs["ref"] - pairs["other"])
    return (d.groupby(list(SUBJECT_KEYS), sort=True)["difference"]
            .agg(difference="mean", n_images="size").reset_index())


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
    return signed_rank_p(a - b)


def signed_rank_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of one sample of paired differences.

    The same test as `wilcoxon_p` (scipy's defaults), fed the differences themselves, e.g.
    one subject-averaged difference per subject. NaNs are dropped; NaN when nothing is
    left, 1.0 when every difference is zero.
    """
    d = np.asarray(differences, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative="two-sided").pvalue)


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


def cluster_bootstrap_ci(differences: Sequence[float], clusters: Sequence,
                         confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                         seed: int = SEED) -> tuple[float, float]:
    """Bootstrap CI of the mean of ``differences`` when the independent units are clusters.

    Each resample draws clusters (subjects) with replacement and takes the mean over all
    images of the drawn clusters (sum of their differences / number of their images), so
    images of one subject stay together. BCa with the percentile fallback, seeded, as
    `bootstrap_ci`. NaN differences are dropped. No data or a single cluster -> (NaN, NaN);
    every cluster with the same mean -> (that mean, that mean).
    """
    d = np.asarray(differences, float)
    labels = pd.Series(list(clusters), dtype=object)
    if labels.size != d.size:
        raise ValueError(f"differences and clusters differ in length: {d.size} vs {labels.size}")
    keep = np.isfinite(d)
    per_cluster = pd.DataFrame({"d": d[keep], "c": labels[keep].to_numpy()}).groupby(
        "c", sort=True)["d"].agg(["sum", "size"])
    sums, sizes = per_cluster["sum"].to_numpy(float), per_cluster["size"].to_numpy(float)
    if sums.size < 2:
        return float("nan"), float("nan")
    means = sums / sizes
    if np.all(means == means[0]):
        return float(means[0]), float(means[0])
    data = (sums, sizes)
    low, high = _scipy_bootstrap(data, confidence, n_resamples, seed, "BCa", _pooled_mean)
    if not (np.isfinite(low) and np.isfinite(high)):
        low, high = _scipy_bootstrap(data, confidence, n_resamples, seed, "percentile",
                                     _pooled_mean)
    return low, high


def _pooled_mean(sums: np.ndarray, sizes: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the images of the drawn clusters (vectorised over resamples)."""
    return np.sum(sums, axis=axis) / np.sum(sizes, axis=axis)


def _scipy_bootstrap(d: np.ndarray | tuple[np.ndarray, ...], confidence: float,
                     n_resamples: int, seed: int, method: str,
                     statistic=np.mean) -> tuple[float, float]:
    """scipy's bootstrap interval; a tuple ``d`` is resampled jointly (paired=True)."""
    data = d if isinstance(d, tuple) else (d,)
    with warnings.catch_warnings():
        # BCa's "degenerate distribution" warning is handled by the percentile fallback.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.bootstrap(data, statistic, n_resamples=n_resamples,
                                 confidence_level=confidence, method=method,
                                 vectorized=True, paired=len(data) > 1,
                                 batch=BOOTSTRAP_BATCH, rng=np.random.default_rng(seed))
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


def tested_quantity(metric: str) -> str:
    """What the paired test compares: "|value|" where closest to zero is best, else "value"."""
    return "|value|" if metric in CLOSEST_TO_ZERO_IS_BETTER else "value"


def _compare_one(rows: pd.DataFrame, reference: str, model: str, metric: str,
                 confidence: float, n_resamples: int, seed: int) -> dict:
    tested = tested_quantity(metric)
    pairs = paired_cases(rows, reference, model, metric, absolute=tested == "|value|")
    differences = (pairs["ref"] - pairs["other"]).to_numpy(float)
    subjects = subject_differences(pairs)
    clusters = list(zip(*(pairs[k] for k in SUBJECT_KEYS)))
    _, mean, std = describe(rows.loc[rows["model"] == model, metric])
    low, high = cluster_bootstrap_ci(differences, clusters, confidence, n_resamples, seed)
    return {
        "n": int(differences.size),
        "n_subjects": int(len(subjects)),
        "mean": mean,
        "std": std,
        "tested": tested,
        "mean_difference": float(np.mean(differences)) if differences.size else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "p_wilcoxon": signed_rank_p(subjects["difference"]),
    }


def _holm_by_group(table: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjusted p and the family size, one family per group (site or pooled)."""
    table["p_holm"] = np.nan
    table["holm_family_size"] = 0
    for _, index in table.groupby("group", sort=False).groups.items():
        p = table.loc[index, "p_wilcoxon"].to_numpy(float)
        table.loc[index, "p_holm"] = holm(p)
        table.loc[index, "holm_family_size"] = int(np.isfinite(p).sum())
    return table


def compare(df: pd.DataFrame, peers: Sequence[str], metrics: Sequence[str], *,
            reference: str = REFERENCE, per_site: bool = True,
            confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
            seed: int = SEED) -> pd.DataFrame:
    """Reference vs each peer on each metric, per site (if ``per_site``) and pooled.

    One row per (group, metric, peer) with: n (paired images) and n_subjects (subjects
    among them), mean and std of the peer over its own finite images in the group, tested
    ("value", or "|value|" for a closest-to-zero metric), mean_difference (reference - peer)
    over the paired images with its subject-level bootstrap CI, the two-sided Wilcoxon p on
    subject-averaged differences, the Holm-adjusted p within the row's group and that
    family's size, and ``significant`` (unadjusted p < 0.05, the paper's asterisk).
    """
    require_columns(df, ("model", *PAIR_KEYS, *metrics))
    records = []
    for group, rows in groups(df, per_site):
        for metric in metrics:
            for model in peers:
                result = _compare_one(rows, reference, model, metric,
                                      confidence, n_resamples, seed)
                records.append({"group": group, "metric": metric, "model": model, **result})
    computed = [c for c in COMPARE_COLUMNS if c not in ("p_holm", "holm_family_size",
                                                        "significant")]
    table = _holm_by_group(pd.DataFrame.from_records(records, columns=computed))
    table["holm_family_size"] = table["holm_family_size"].astype(int)
    table["significant"] = table["p_wilcoxon"].to_numpy(float) < ALPHA   # NaN -> False
    return table[list(COMPARE_COLUMNS)]
