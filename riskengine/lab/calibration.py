"""Calibration and uncertainty: the reliability curve and Brier score, Wilson intervals, and the
share to aim at so a budget holds beyond the sample it was chosen on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from riskengine.lab.scored import _arrays, _check_rate


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
