"""Who slips through: catch rates per attacker class, and figures per login-history bucket.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from riskengine.lab.ranking import threshold_at_fpr, tpr_at_fpr
from riskengine.lab.scored import LEGIT, _arrays, _groups


HISTORY_BUCKETS = ("0", "1-4", "5-19", "20+")


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
