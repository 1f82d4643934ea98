"""Operating budget: what a step-up band costs legitimate users and what it catches, per action.

``suggest_bands`` sets the policy's bands from legitimate logins; ``cost_at`` prices any two
thresholds (suggested, or a policy's); ``budget_curve`` draws the whole trade-off.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from riskengine.lab.ranking import threshold_at_fpr
from riskengine.lab.scored import _arrays, _check_rate, _groups, _share_at_or_above


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
