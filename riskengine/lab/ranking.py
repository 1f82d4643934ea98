"""Ranking quality: ROC and PR, the one threshold definition, TPR at a legit FPR, scorers side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, precision_recall_curve, roc_auc_score, roc_curve

from riskengine.lab.scored import LEGIT, _arrays, _check_rate, _groups, _pct


DEFAULT_FPRS = (0.01, 0.02, 0.05)


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
