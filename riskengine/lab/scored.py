"""Labelled scores as every figure takes them: checked arrays, shares at or above a threshold.

The checks live here once, so a wrong input gets the same sentence from every figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np


LEGIT = "legit"


def _arrays(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 ints and scores as floats, or a ValueError saying what is wrong."""
    y_arr = np.asarray(y).ravel()
    s_arr = np.asarray(score, dtype=float).ravel()
    if y_arr.shape != s_arr.shape:
        raise ValueError(f"y has {y_arr.size} rows but score has {s_arr.size}; "
                         "pass one score per label")
    if y_arr.size and not np.isin(y_arr, (0, 1)).all():
        bad = np.unique(y_arr[~np.isin(y_arr, (0, 1))])[:5]
        raise ValueError(f"y must hold 0 (legit) / 1 (attack) labels; found {bad.tolist()}")
    if not np.isfinite(s_arr).all():
        bad = int((~np.isfinite(s_arr)).sum())
        raise ValueError(f"score has {bad} NaN/inf values; score every row")
    return y_arr.astype(int), s_arr


def _groups(values: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=object).ravel()
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} rows but y has {n}; pass one value per event")
    return arr


def _check_rate(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a share in [0, 1], got {value!r} (e.g. 0.02 for 2%)")


def _share_at_or_above(sorted_scores: np.ndarray, thresholds: Any) -> np.ndarray:
    """Share of ``sorted_scores`` that are >= each threshold (NaN for an empty group)."""
    t = np.asarray(thresholds, dtype=float)
    if sorted_scores.size == 0:
        return np.full(t.shape, np.nan)
    below = np.searchsorted(sorted_scores, t, side="left")
    return (sorted_scores.size - below) / sorted_scores.size


def _pct(rate: float) -> str:
    return f"{rate * 100:g}%"
