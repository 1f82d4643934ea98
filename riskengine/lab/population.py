"""The evaluated population: which events count as legitimate users and which as takeovers.

One definition for ``evaluate``, ``whatif``, the training report, the promotion gate and the
notebooks, so their figures describe the same events. Two kinds of rows are kept out of the
legit-vs-takeover figures and reported on their own:

- failed primary-credential logins: every policy denies them, so they cost no user friction and
  say nothing about catching a takeover (on RBA data they are mostly attack traffic labelled 0);
- attack traffic that is not a takeover (RBA ``Is Attack IP`` rows with label 0): stepping them up
  is no friction for a real user, and they are not a class of account takeover.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

LEGIT = "legit"
TAKEOVER = "takeover"
FAILED_LOGIN = "failed_login"
ATTACK_TRAFFIC = "attack_traffic"
GROUPS = (LEGIT, TAKEOVER, FAILED_LOGIN, ATTACK_TRAFFIC)
EVALUATED = (LEGIT, TAKEOVER)
ATTACK_TRAFFIC_CLASSES = frozenset({"attack_ip"})     # rba.py's class for Is Attack IP rows that are not takeovers
DESCRIPTIONS = {FAILED_LOGIN: "failed-password logins (denied by every policy)",
                ATTACK_TRAFFIC: "attack-traffic rows that are not takeovers (RBA Is Attack IP)"}


def assign(action: Any, success: Any, label: Any, attack_class: Any) -> np.ndarray:
    """Each event's group: ``legit``, ``takeover``, ``failed_login`` or ``attack_traffic``.

    A failed login is ``failed_login`` whatever its label; label 1 is a takeover; label 0 with an
    attack-traffic class is ``attack_traffic``.

    >>> assign(["login", "login", "login", "login", "payment"], [True, False, True, True, True],
    ...        [0, 1, 1, 0, 0], ["legit", "attack_ip", "account_takeover", "attack_ip", "legit"]).tolist()
    ['legit', 'failed_login', 'takeover', 'attack_traffic', 'legit']
    """
    action = np.asarray(action, dtype=object).ravel()
    n = action.size
    success = np.asarray(success, dtype=bool).ravel()
    label = np.asarray(label).astype(int).ravel()
    classes = np.asarray(attack_class, dtype=object).ravel().astype(str)
    for name, values in (("success", success), ("label", label), ("attack_class", classes)):
        if values.size != n:
            raise ValueError(f"{name} has {values.size} rows but action has {n}; pass one value per event")
    failed = (action == "login") & ~success
    traffic = (label == 0) & np.isin(classes, list(ATTACK_TRAFFIC_CLASSES))
    return np.select([failed, label == 1, traffic], [FAILED_LOGIN, TAKEOVER, ATTACK_TRAFFIC], LEGIT).astype(object)


def of_dataset(data: Any) -> np.ndarray:
    """Groups of a ``training.Dataset``: success is read back from its ``login_failed`` feature."""
    from riskengine.features import FEATURE_NAMES

    failed = np.asarray(data.X[:, FEATURE_NAMES.index("login_failed")]) == 1
    return assign(data.meta["action"].to_numpy(), ~failed, data.y, data.meta["attack_class"].to_numpy())


def of_frame(frame: pd.DataFrame) -> np.ndarray:
    """Groups of a table with ``action``, ``success``, ``label`` and (optional) ``attack_class`` columns."""
    missing = [c for c in ("action", "success", "label") if c not in frame]
    if missing:
        raise ValueError(f"the table lacks the column(s) {', '.join(missing)}")
    classes = frame["attack_class"].fillna(LEGIT) if "attack_class" in frame else pd.Series(LEGIT, index=frame.index)
    return assign(frame["action"].to_numpy(), frame["success"].fillna(True).astype(bool).to_numpy(),
                  frame["label"].fillna(0).to_numpy(), classes.to_numpy())


def evaluated(groups: np.ndarray) -> np.ndarray:
    """True for the rows legit-vs-takeover figures are computed on."""
    return np.isin(groups, EVALUATED)


def counts(groups: np.ndarray) -> dict[str, int]:
    """Rows per group, every group named (zeros included), for reports and JSON."""
    return {g: int(np.sum(groups == g)) for g in GROUPS}


def describe(groups: np.ndarray) -> str:
    """One line saying what was evaluated and what was reported on its own.

    >>> describe(np.array(["legit", "legit", "takeover", "failed_login"], dtype=object))
    'evaluated: 2 legitimate events and 1 takeovers; on their own: 1 failed-password logins (denied by every policy)'
    """
    c = counts(groups)
    line = f"evaluated: {c[LEGIT]:,} legitimate events and {c[TAKEOVER]:,} takeovers"
    apart = [f"{c[g]:,} {DESCRIPTIONS[g]}" for g in (FAILED_LOGIN, ATTACK_TRAFFIC) if c[g]]
    return line + ("; on their own: " + ", ".join(apart) if apart else "")


def apart_table(groups: np.ndarray, label: Any, flagged: Any = None) -> pd.DataFrame:
    """The rows kept out of the evaluation, per group: how many, how many labelled attacks, share flagged.

    ``flagged`` (bool per row, e.g. score >= the step-up band, or a step-up/deny decision) adds the
    share of each group the scorer or policy would have stepped up or denied.

    >>> apart_table(np.array(["legit", "failed_login", "failed_login"], dtype=object), [0, 1, 0],
    ...             [False, True, False])  # doctest: +NORMALIZE_WHITESPACE
                  n  labelled_attacks  flagged_share
    group
    failed_login  2                 1            0.5
    """
    label = np.asarray(label).astype(int).ravel()
    rows = {}
    for group in (FAILED_LOGIN, ATTACK_TRAFFIC):
        mask = groups == group
        if not mask.any():
            continue
        row: dict[str, Any] = {"n": int(mask.sum()), "labelled_attacks": int(label[mask].sum())}
        if flagged is not None:
            row["flagged_share"] = float(np.mean(np.asarray(flagged, dtype=bool).ravel()[mask]))
        rows[group] = row
    columns = ["n", "labelled_attacks"] + (["flagged_share"] if flagged is not None else [])
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("group")
