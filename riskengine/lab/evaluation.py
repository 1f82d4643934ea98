"""Offline evaluation: what a scored, labelled event table says about a model and its policy.

Sits after training (``training.py``) and before promotion and policy tuning. Pure functions
over label/score arrays; ``report.py`` turns them into text, Markdown and plots.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp, norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

LEGIT = "legit"
HISTORY_BUCKETS = ("0", "1-4", "5-19", "20+")
DEFAULT_FPRS = (0.01, 0.02, 0.05)
_PSI_EPS = 1e-4


# --- inputs -----------------------------------------------------------------------------------


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


# --- ranking quality --------------------------------------------------------------------------


def roc_pr(y: Any, score: Any) -> dict[str, Any]:
    """ROC and precision-recall summaries plus the curves to plot them.

    >>> r = roc_pr([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> round(r["roc_auc"], 4), round(r["pr_auc"], 4)
    (0.75, 0.8333)
    """
    y, score = _arrays(y, score)
    if np.unique(y).size < 2:
        raise ValueError("roc_pr needs both legit (0) and attack (1) rows")
    fpr, tpr, roc_thresholds = roc_curve(y, score)
    precision, recall, pr_thresholds = precision_recall_curve(y, score)
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
        "fpr": fpr,
        "tpr": tpr,
        "roc_thresholds": roc_thresholds,
        "precision": precision,
        "recall": recall,
        "pr_thresholds": pr_thresholds,
    }


def threshold_at_fpr(y: Any, score: Any, fpr: float) -> float:
    """Lowest threshold that steps up at most ``fpr`` of legit rows (a row flags when score >= it).

    Only legit scores decide which rows flag: every row above the highest legit score that must
    stay unflagged. Legit rows tied at that score all stay unflagged, so when a tie straddles the
    budget the realised rate falls below ``fpr``, never above. ``fpr=1`` flags every row. The
    threshold itself sits halfway to the next higher score (:func:`threshold_between`), so the
    value a report prints or a JSON file keeps flags the same rows.

    >>> threshold_at_fpr([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9, 0.8, 0.95], 0.25)
    0.55
    """
    _check_rate(fpr, "fpr")
    y, score = _arrays(y, score)
    if not (y == 0).any():
        raise ValueError("no legit rows (y == 0): a false-positive rate is undefined")
    return threshold_between(score[y == 0], fpr, score)


def threshold_between(legit: Any, share: float, scores: Any = None) -> float:
    """The one definition of a threshold set from legitimate scores alone.

    Flags (score >= threshold) at most ``share`` of ``legit``: the rows above the highest legit score
    that must stay unflagged, ties at it included in the unflagged side. It lies halfway between
    that score and the next higher one among ``scores`` (default: ``legit``), not one float step
    above it: a threshold one step above a score flags that score's ties again once it is rounded
    (a JSON file, a report table, a policy file), and a model with an anomaly floor scores many
    legit events the same. With nothing above, it is one float step above.

    >>> round(threshold_between([0.1, 0.2, 0.3, 0.9], 0.25), 9)
    0.6
    >>> round(threshold_between([0.1, 0.2, 0.3, 0.9], 0.25, [0.1, 0.2, 0.3, 0.9, 0.5]), 9)
    0.4
    """
    _check_rate(share, "share")
    ranked = np.sort(np.asarray(legit, dtype=float).ravel())[::-1]
    if ranked.size == 0:
        raise ValueError("no legit scores: a false-positive rate is undefined")
    allowed = int(np.floor(share * ranked.size + 1e-9))  # tolerance: 0.02 * 50 must allow 1 row
    everything = ranked if scores is None else np.asarray(scores, dtype=float).ravel()
    if allowed >= ranked.size:
        return float(min(ranked.min(), everything.min()))
    kept = ranked[allowed]
    above = everything[everything > kept]
    if above.size == 0:
        return float(np.nextafter(kept, np.inf))
    return float(kept + (above.min() - kept) / 2)


def tpr_at_fpr(y: Any, score: Any, fpr: float) -> float:
    """Share of attacks caught at :func:`threshold_at_fpr` (the ROC's best point with FPR <= fpr).

    >>> tpr_at_fpr([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9, 0.8, 0.95], 0.25)
    1.0
    >>> tpr_at_fpr([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9, 0.8, 0.95], 0.0)
    0.5
    """
    threshold = threshold_at_fpr(y, score, fpr)
    y, score = _arrays(y, score)
    attacks = score[y == 1]
    if attacks.size == 0:
        raise ValueError("no attack rows (y == 1): a true-positive rate is undefined")
    return float(np.mean(attacks >= threshold))


# --- operating budget -------------------------------------------------------------------------


def budget_curve(y: Any, score: Any, action: Any = None, points: int = 512) -> pd.DataFrame:
    """Legit share stepped up vs attack share caught, per threshold: the price of each catch rate.

    One block for ``"all"`` rows, then one per action when ``action`` is given. Thresholds are the
    distinct scores of each block, or ``points`` score quantiles when there are more (big data).

    >>> budget_curve([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
      action  threshold  legit_stepped_up  attacks_caught
    0    all        0.9               0.0             0.5
    1    all        0.6               0.5             0.5
    2    all        0.4               0.5             1.0
    3    all        0.1               1.0             1.0
    """
    y, score = _arrays(y, score)
    blocks: list[tuple[str, np.ndarray]] = [("all", np.ones(y.size, dtype=bool))]
    if action is not None:
        actions = _groups(action, y.size, "action")
        blocks += [(str(a), actions == a) for a in sorted(pd.unique(actions), key=str)]
    frames = []
    for name, mask in blocks:
        s, labels = score[mask], y[mask]
        thresholds = np.unique(s)
        if thresholds.size > points:
            thresholds = np.unique(np.quantile(s, np.linspace(0.0, 1.0, points)))
        thresholds = thresholds[::-1]
        frames.append(pd.DataFrame({
            "action": name,
            "threshold": thresholds,
            "legit_stepped_up": _share_at_or_above(np.sort(s[labels == 0]), thresholds),
            "attacks_caught": _share_at_or_above(np.sort(s[labels == 1]), thresholds),
        }))
    return pd.concat(frames, ignore_index=True)


def catch_rate_by_class(y: Any, score: Any, attack_class: Any, threshold: float) -> pd.DataFrame:
    """Rows per attacker class and the share flagged (score >= threshold) at one threshold.

    Shows which attackers slip through; the ``legit`` row's share is the legit step-up rate.

    >>> table = catch_rate_by_class([0, 0, 1, 1, 1], [0.1, 0.7, 0.9, 0.2, 0.8],
    ...                             ["legit", "legit", "stuffing", "targeted", "targeted"], 0.5)
    >>> table["caught_share"].to_dict()
    {'stuffing': 1.0, 'targeted': 0.5, 'legit': 0.5}
    """
    y, score = _arrays(y, score)
    classes = _groups(attack_class, y.size, "attack_class").astype(str)
    caught = (score >= threshold).astype(int)
    table = (
        pd.DataFrame({"attack_class": classes, "attack": y, "caught": caught})
        .groupby("attack_class")
        .agg(n=("attack", "size"), attacks=("attack", "sum"), caught=("caught", "sum"))
    )
    table["caught_share"] = table["caught"] / table["n"]
    order = sorted(table.index, key=lambda c: (c == LEGIT, c))
    return table.loc[order]


def history_bucket(history: Any) -> np.ndarray:
    """Earlier logins of the user -> ``"0"`` (first ever), ``"1-4"``, ``"5-19"`` or ``"20+"``.

    >>> history_bucket([0, 1, 4, 5, 19, 20, 300]).tolist()
    ['0', '1-4', '1-4', '5-19', '5-19', '20+', '20+']
    """
    h = np.asarray(history, dtype=float).ravel()
    if not np.isfinite(h).all() or (h < 0).any():
        raise ValueError("history must be a count of earlier logins (>= 0, no NaN)")
    return np.select([h < 1, h < 5, h < 20], list(HISTORY_BUCKETS[:3]), HISTORY_BUCKETS[3])


def by_history(y: Any, score: Any, history: Any, fpr: float = 0.01) -> pd.DataFrame:
    """How well the model does for users it knows little about vs long-standing ones.

    ``tpr_at_fpr`` uses each bucket's own threshold; ``tpr_at_global``/``fpr_at_global`` use the one
    threshold a deployment would run (chosen on all legit rows). NaN where a bucket lacks a class.
    """
    y, score = _arrays(y, score)
    buckets = history_bucket(history)
    if buckets.size != y.size:
        raise ValueError(f"history has {buckets.size} rows but y has {y.size}")
    global_threshold = threshold_at_fpr(y, score, fpr)
    rows = []
    for bucket in HISTORY_BUCKETS:
        mask = buckets == bucket
        yb, sb = y[mask], score[mask]
        both = 0 < yb.sum() < yb.size
        legit, attacks = sb[yb == 0], sb[yb == 1]
        rows.append({
            "history": bucket,
            "n": int(mask.sum()),
            "attacks": int(yb.sum()),
            "roc_auc": float(roc_auc_score(yb, sb)) if both else np.nan,
            "tpr_at_fpr": tpr_at_fpr(yb, sb, fpr) if both else np.nan,
            "tpr_at_global": np.mean(attacks >= global_threshold) if attacks.size else np.nan,
            "fpr_at_global": np.mean(legit >= global_threshold) if legit.size else np.nan,
        })
    return pd.DataFrame(rows).set_index("history")


def calibration(y: Any, score: Any, bins: int = 10, strategy: str = "uniform") -> dict[str, Any]:
    """Reliability curve and Brier score: can a score of 0.8 be read as an 80% risk?

    >>> c = calibration([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], bins=2)
    >>> c["prob_true"].tolist(), c["prob_pred"].round(2).tolist(), round(c["brier"], 4), c["counts"].tolist()
    ([0.0, 1.0], [0.15, 0.85], 0.025, [2, 2])
    """
    y, score = _arrays(y, score)
    if score.size and (score.min() < 0 or score.max() > 1):
        raise ValueError("calibration needs probability-like scores in [0, 1]")
    prob_true, prob_pred = calibration_curve(y, score, n_bins=bins, strategy=strategy)
    edges = (np.percentile(score, np.linspace(0, 100, bins + 1)) if strategy == "quantile"
             else np.linspace(0.0, 1.0, bins + 1))
    per_bin = np.bincount(np.searchsorted(edges[1:-1], score), minlength=bins)   # sklearn's binning
    return {
        "prob_true": prob_true,
        "prob_pred": prob_pred,
        "counts": per_bin[per_bin > 0],                 # events behind each point of the curve
        "brier": float(brier_score_loss(y, score, pos_label=1)),
        "bins": bins,
        "strategy": strategy,
    }


def suggest_bands(
    y: Any,
    score: Any,
    action: Any,
    login_budget: float = 0.02,
    deny_budget: float = 0.001,
    login_action: str = "login",
) -> dict[str, Any]:
    """Risk-band thresholds for the policy, set from what legit users would pay on login.

    ``medium`` (step-up) keeps legit logins stepped up at or under ``login_budget``; ``high``
    (deny) keeps legit logins denied at or under the much smaller ``deny_budget``. ``by_action``
    shows what the same thresholds cost and catch on every action.
    """
    _check_rate(login_budget, "login_budget")
    _check_rate(deny_budget, "deny_budget")
    if deny_budget > login_budget:
        raise ValueError(f"deny_budget ({deny_budget}) must not exceed "
                         f"login_budget ({login_budget})")
    y, score = _arrays(y, score)
    actions = _groups(action, y.size, "action")
    logins = actions == login_action
    if not (logins & (y == 0)).any():
        raise ValueError(f"no legit rows with action {login_action!r}; "
                         "pass login_action=... to pick one")
    medium = threshold_at_fpr(y[logins], score[logins], login_budget)
    high = max(threshold_at_fpr(y[logins], score[logins], deny_budget), medium)
    by_action = cost_at(y, score, actions, medium, high)
    login = by_action.loc[str(login_action)]
    return {
        "medium": medium,
        "high": high,
        "login_budget": login_budget,
        "deny_budget": deny_budget,
        "login_legit_stepped_up": float(login["legit_stepped_up"]),
        "login_legit_denied": float(login["legit_denied"]),
        "login_attacks_caught": float(login["attacks_caught"]),
        "login_attacks_denied": float(login["attacks_denied"]),
        "by_action": by_action,
    }


def cost_at(y: Any, score: Any, action: Any, step_up_at: float, deny_at: float) -> pd.DataFrame:
    """Per action: legit shares stepped up / denied and attack shares caught / denied at two thresholds.

    The thresholds may be suggested ones or a policy's bands (``medium_at``, ``deny_at``).

    >>> cost_at([0, 0, 1], [0.1, 0.5, 0.9], ["login"] * 3, 0.4, 0.95)[["legit", "legit_stepped_up", "attacks_caught"]]
    ... # doctest: +NORMALIZE_WHITESPACE
            legit  legit_stepped_up  attacks_caught
    action
    login       2               0.5             1.0
    """
    y, score = _arrays(y, score)
    actions = _groups(action, y.size, "action")
    rows = []
    for name in sorted(pd.unique(actions), key=str):
        mask = actions == name
        legit, attacks = np.sort(score[mask & (y == 0)]), np.sort(score[mask & (y == 1)])
        step, deny = _share_at_or_above(legit, [step_up_at, deny_at])
        caught, denied = _share_at_or_above(attacks, [step_up_at, deny_at])
        rows.append({"action": str(name), "n": int(mask.sum()), "legit": int(legit.size), "attacks": int(attacks.size),
                     "legit_stepped_up": step, "legit_denied": deny, "attacks_caught": caught,
                     "attacks_denied": denied})
    return pd.DataFrame(rows).set_index("action")


# --- drift ------------------------------------------------------------------------------------


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


# --- uncertainty ------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a share ``successes / n``: honest at 0%, 100% and small ``n``.

    The normal (Wald) interval collapses to a point at 0 of 30 caught; Wilson does not. An empty
    group (``n == 0``) knows nothing: (0, 1).

    >>> [round(v, 4) for v in wilson_interval(3, 4)]
    [0.3006, 0.9544]
    >>> [round(v, 4) for v in wilson_interval(0, 20)]
    [0.0, 0.1611]
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got {successes} of {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r} (e.g. 0.95)")
    if n == 0:
        return 0.0, 1.0
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    lower = 0.0 if successes == 0 else max(0.0, float(centre - half))   # exact ends, no 1e-18 residue
    upper = 1.0 if successes == n else min(1.0, float(centre + half))
    return lower, upper


def aim_within(budget: float, n: int, confidence: float = 0.95) -> float:
    """The share to aim at on ``n`` events so that a budget holds beyond this sample: the largest
    ``k / n`` whose Wilson upper bound (:func:`wilson_interval`) is still within ``budget``.

    Bands chosen on a few hundred logins at exactly the budget exceed it on the next window about
    half the time; aiming at this share keeps the true rate within the budget at ``confidence``
    (for the same population), and it approaches the budget as ``n`` grows. 0 when even none of
    ``n`` cannot show the budget holds (then the band is set above every legitimate score).

    >>> aim_within(0.02, 500), round(aim_within(0.02, 100_000), 4), aim_within(0.001, 500)
    (0.006, 0.0191, 0.0)
    """
    _check_rate(budget, "budget")
    if n <= 0:
        raise ValueError(f"aim_within needs at least one event, got n={n}")
    k = 0
    while k < n and wilson_interval(k + 1, n, confidence)[1] <= budget:
        k += 1
    return k / n


# --- comparison -------------------------------------------------------------------------------


def compare(
    y: Any,
    scores: Mapping[str, Any],
    fprs: Sequence[float] = DEFAULT_FPRS,
    attack_class: Any = None,
) -> pd.DataFrame:
    """Side-by-side table of scorers on the same events (e.g. the model vs the Freeman baseline).

    Columns: roc_auc, pr_auc, ``tpr@1%``... per fpr, brier (NaN for scores outside [0, 1]), and
    with ``attack_class`` the caught share of each attacker class at each fpr (``<class>@1%``).
    """
    rows = {}
    for name, raw in scores.items():
        yy, s = _arrays(y, raw)
        row: dict[str, float] = {"roc_auc": roc_pr(yy, s)["roc_auc"],
                                 "pr_auc": float(average_precision_score(yy, s))}
        thresholds = {f: threshold_at_fpr(yy, s, f) for f in fprs}
        for f, t in thresholds.items():
            row[f"tpr@{_pct(f)}"] = float(np.mean(s[yy == 1] >= t))
        in_unit = s.min() >= 0 and s.max() <= 1
        row["brier"] = float(brier_score_loss(yy, s, pos_label=1)) if in_unit else np.nan
        if attack_class is not None:
            classes = _groups(attack_class, yy.size, "attack_class").astype(str)
            for cls in sorted(set(classes) - {LEGIT}):
                for f, t in thresholds.items():
                    row[f"{cls}@{_pct(f)}"] = float(np.mean(s[classes == cls] >= t))
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table
