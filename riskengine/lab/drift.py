"""Drift: did the inputs or the score move between two windows (PSI, KS), and what that does to step-ups.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp


_PSI_EPS = 1e-4


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def psi(expected: Any, actual: Any, bins: int = 10) -> float:
    """Population stability index of ``actual`` against the ``expected`` window.

    Numbers use quantile bins of ``expected`` (ties merge bins); other values use their categories.
    Missing values get a bin of their own, and empty bins count as 1e-4 so the log stays finite.
    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.

    >>> psi([1, 2, 3, 4], [1, 2, 3, 4])
    0.0
    >>> round(psi(list(range(10)), [0] * 8 + [9] * 2, bins=2), 4)
    0.4159
    """
    e, a = pd.Series(expected), pd.Series(actual)
    if e.empty or a.empty:
        raise ValueError("psi needs non-empty expected and actual samples")
    if _is_numeric(e) and _is_numeric(a):
        ev, av = e.to_numpy(dtype=float), a.to_numpy(dtype=float)
        known = ev[~np.isnan(ev)]
        probs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
        cuts = np.unique(np.quantile(known, probs)) if known.size else np.array([])

        def counts(v: np.ndarray) -> np.ndarray:
            present = v[~np.isnan(v)]
            bin_of = np.searchsorted(cuts, present, side="right")
            return np.append(np.bincount(bin_of, minlength=cuts.size + 1), np.isnan(v).sum())

        e_counts, a_counts = counts(ev), counts(av)
    else:
        e_str = e.astype(object).where(e.notna(), None)
        a_str = a.astype(object).where(a.notna(), None)
        categories = pd.unique(pd.concat([e_str, a_str], ignore_index=True))
        e_counts = e_str.value_counts(dropna=False).reindex(categories, fill_value=0).to_numpy()
        a_counts = a_str.value_counts(dropna=False).reindex(categories, fill_value=0).to_numpy()
    p = np.maximum(e_counts / e_counts.sum(), _PSI_EPS)
    q = np.maximum(a_counts / a_counts.sum(), _PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def _shift(value: float) -> str:
    return "stable" if value < 0.1 else "moderate" if value < 0.25 else "major"


def drift(
    df_a: pd.DataFrame, df_b: pd.DataFrame, columns: Sequence[str], score: str | None = None,
    bins: int = 10,
) -> pd.DataFrame:
    """Which inputs moved between two windows (``df_a`` the reference): PSI and KS per column.

    ``score`` names the risk-score column, reported last as ``kind="score"``. KS (two-sample,
    missing values dropped) is left NaN for non-numeric columns.
    """
    names = [(c, "feature") for c in columns] + ([(score, "score")] if score is not None else [])
    missing = sorted({c for c, _ in names} - (set(df_a.columns) & set(df_b.columns)))
    if missing:
        raise ValueError(f"drift: columns {missing} are not in both frames")
    rows = []
    for column, kind in names:
        a, b = df_a[column], df_b[column]
        value = psi(a, b, bins=bins)
        ks_stat = ks_p = np.nan
        if _is_numeric(a) and _is_numeric(b):
            av, bv = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
            av, bv = av[~np.isnan(av)], bv[~np.isnan(bv)]
            if av.size and bv.size:
                with warnings.catch_warnings():  # exact->asymptotic fallback notice on large ties
                    warnings.simplefilter("ignore", RuntimeWarning)
                    result = ks_2samp(av, bv)
                ks_stat, ks_p = float(result.statistic), float(result.pvalue)
        rows.append({"column": column, "kind": kind, "psi": value, "shift": _shift(value),
                     "ks_statistic": ks_stat, "ks_pvalue": ks_p})
    return pd.DataFrame(rows).set_index("column")


def second_half(timestamp: Any) -> np.ndarray:
    """True for events after the midpoint of the time window: splits it into two halves for drift.

    >>> second_half(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-05T00:00:00Z"]).tolist()
    [False, False, True]
    """
    ts = pd.to_datetime(pd.Series(np.asarray(timestamp, dtype=object).ravel()), utc=True)
    if ts.empty:
        raise ValueError("second_half needs at least one timestamp")
    middle = ts.min() + (ts.max() - ts.min()) / 2
    return (ts > middle).to_numpy()


def score_shift(first: Any, second: Any, threshold: float, bins: int = 10) -> dict[str, float]:
    """How a score's distribution moved between two windows, and what that does to step-ups.

    ``flagged_*`` is the share at or above ``threshold``: a stable PSI with a moved flagged share
    still changes what users see, so both are reported.

    >>> shift = score_shift([0.1, 0.2, 0.3, 0.9], [0.1, 0.2, 0.8, 0.9], threshold=0.5)
    >>> shift["flagged_first"], shift["flagged_second"], round(shift["mean_second"] - shift["mean_first"], 2)
    (0.25, 0.5, 0.12)
    """
    a, b = np.asarray(first, dtype=float).ravel(), np.asarray(second, dtype=float).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("score_shift needs scores in both windows")
    with warnings.catch_warnings():  # exact->asymptotic fallback notice on large ties
        warnings.simplefilter("ignore", RuntimeWarning)
        ks = ks_2samp(a, b)
    value = psi(a, b, bins=bins)
    return {"psi": value, "shift": _shift(value), "ks_statistic": float(ks.statistic),
            "ks_pvalue": float(ks.pvalue), "mean_first": float(a.mean()), "mean_second": float(b.mean()),
            "p95_first": float(np.quantile(a, 0.95)), "p95_second": float(np.quantile(b, 0.95)),
            "flagged_first": float(np.mean(a >= threshold)), "flagged_second": float(np.mean(b >= threshold))}
