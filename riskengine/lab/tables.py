"""Every table of one evaluation, computed from labels and scores: ``build`` fills a ``report.Report``.

Optional inputs switch sections on (actions: bands; attacker classes: catch rates; history;
timestamps: drift); ``population`` groups keep failed logins and non-takeover attack traffic apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from riskengine.lab import population
from riskengine.lab.bands import cost_at, suggest_bands
from riskengine.lab.calibration import calibration
from riskengine.lab.drift import drift, score_shift, second_half
from riskengine.lab.plots import named_scores
from riskengine.lab.ranking import DEFAULT_FPRS, compare, threshold_at_fpr
from riskengine.lab.report import Report
from riskengine.lab.scored import LEGIT, _arrays
from riskengine.lab.segments import by_history, catch_rate_by_class


def build(
    y: Any,
    scores: Any,
    *,
    action: Any = None,
    attack_class: Any = None,
    history: Any = None,
    features: pd.DataFrame | None = None,
    timestamp: Any = None,
    fprs: Sequence[float] = DEFAULT_FPRS,
    login_budget: float = 0.02,
    deny_budget: float = 0.001,
    title: str = "riskengine offline evaluation",
    notes: Sequence[str] = (),
    groups: Any = None,
    policy: Any = None,
    data_name: str | None = None,
) -> Report:
    """Compute every table; the first entry of ``scores`` is the model under review.

    Optional inputs switch sections on: ``action`` the bands and budget curve, ``attack_class`` the
    per-class catch rates, ``history`` the login-history buckets, ``timestamp`` the drift between
    the window's halves (of ``features`` columns too, when given). ``groups`` (``population.assign``)
    keeps failed logins and non-takeover attack traffic out of the figures and reports them on their
    own; ``policy`` (with ``action``) adds cost and catch at that policy's bands.
    """
    raw = named_scores(scores)
    y = _arrays(y, next(iter(raw.values())))[0]
    scores = {name: _arrays(y, s)[1] for name, s in raw.items()}
    notes = list(notes)
    everyone = None
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        keep = population.evaluated(groups)
        everyone = (groups, y, next(iter(scores.values())))
        notes.append(population.describe(groups))
        y, scores = y[keep], {name: s[keep] for name, s in scores.items()}
        action, attack_class, history, timestamp = (None if v is None else np.asarray(v, dtype=object)[keep]
                                                    for v in (action, attack_class, history, timestamp))
        features = None if features is None else features.reset_index(drop=True)[keep]
    fprs = tuple(fprs)
    report = Report(title, y, scores, compare(y, scores, fprs).rename_axis("scorer"), _calibration_table(y, scores),
                    {name: threshold_at_fpr(y, s, fprs[0]) for name, s in scores.items()},
                    login_budget=login_budget, deny_budget=deny_budget, fprs=fprs, notes=notes, data_name=data_name)
    if action is not None:
        report.action = np.asarray(action, dtype=object)
        _add_bands(report)
        if policy is not None:
            report.policy_bands = (policy.version, policy.medium_at, policy.deny_at)
            report.at_policy = cost_at(y, scores[report.main], report.action, policy.medium_at, policy.deny_at)
    if everyone is not None:
        all_groups, all_y, main_score = everyone
        report.apart = population.apart_table(all_groups, all_y, main_score >= report.thresholds[report.main])
    if attack_class is not None:
        report.attack_class = np.asarray(attack_class, dtype=object).astype(str)
        report.classes = _classes_table(report)
    if history is not None:
        report.history = _history_table(y, scores, history, fprs[0])
    if timestamp is not None:
        later = second_half(timestamp)
        if later.all() or not later.any():
            report.notes.append("drift: every event has the same timestamp; no halves to compare")
        else:
            report.score_shift = pd.DataFrame.from_dict(
                {name: score_shift(s[~later], s[later], report.thresholds[name]) for name, s in scores.items()},
                orient="index").rename_axis("scorer")
            if features is not None:
                frame = features.reset_index(drop=True)
                report.drift = (drift(frame[~later], frame[later], list(frame.columns))
                                .drop(columns="kind").sort_values("psi", ascending=False))
    return report


def _calibration_table(y: np.ndarray, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = {}
    for name, s in scores.items():
        in_unit = s.size and s.min() >= 0 and s.max() <= 1
        rows[name] = {"brier": calibration(y, s)["brier"] if in_unit else np.nan,
                      "mean_score": float(s.mean()), "attack_share": float(y.mean())}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("scorer")


def _add_bands(report: Report) -> None:
    """Bands per scorer at the same login budget: the fair way to put two scorers side by side."""
    rows = {}
    for name, s in report.scores.items():
        try:
            bands = suggest_bands(report.y, s, report.action, report.login_budget, report.deny_budget)
        except ValueError as refused:                       # e.g. a stream without legit logins
            report.notes.append(f"no bands for {name}: {refused}")
            return
        report.thresholds[name] = bands["medium"]
        rows[name] = {k: bands[k] for k in ("medium", "high", "login_legit_stepped_up", "login_attacks_caught",
                                            "login_legit_denied", "login_attacks_denied")}
        if name == report.main:
            report.by_action = bands["by_action"]
    report.bands = pd.DataFrame.from_dict(rows, orient="index").rename_axis("scorer")


def _classes_table(report: Report) -> pd.DataFrame:
    columns = {}
    for name, s in report.scores.items():
        table = catch_rate_by_class(report.y, s, report.attack_class, report.thresholds[name])
        columns.setdefault("n", table["n"])
        columns[name] = table["caught_share"]
    out = pd.DataFrame(columns)
    out["n"] = out["n"].astype(int)
    order = sorted(out.index, key=lambda c: (c == LEGIT, c))
    return out.loc[order].rename_axis("attack_class")


def _history_table(y: np.ndarray, scores: dict[str, np.ndarray], history: Any, fpr: float) -> pd.DataFrame:
    tables = {name: by_history(y, s, history, fpr) for name, s in scores.items()}
    first = next(iter(tables.values()))
    out = first[["n", "attacks"]].copy()
    for name, table in tables.items():
        for column in ("roc_auc", "tpr_at_global", "fpr_at_global"):
            out[f"{name} {column}"] = table[column]
    return out


def report_markdown(
    y: Any,
    scores: Any,
    out_dir: str | Path,
    *,
    action: Any = None,
    attack_class: Any = None,
    history: Any = None,
    fprs: Sequence[float] = DEFAULT_FPRS,
    login_budget: float = 0.02,
    deny_budget: float = 0.001,
    title: str = "riskengine offline evaluation",
) -> str:
    """Write ``report.md`` and its PNGs into ``out_dir``; return the Markdown (``build`` + ``write``)."""
    return build(y, scores, action=action, attack_class=attack_class, history=history, fprs=fprs,
                 login_budget=login_budget, deny_budget=deny_budget, title=title).write(out_dir)
