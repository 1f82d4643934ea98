"""Plots of the offline evaluation (matplotlib, headless): what ``report.py`` puts beside its tables.

Each function draws one figure from labels and scores via ``evaluation.py`` and writes a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from riskengine.lab.evaluation import _pct, budget_curve, calibration, catch_rate_by_class, roc_pr


def _figure(size: tuple[float, float] = (6.0, 4.5)) -> Any:
    """A figure drawn by the Agg canvas: headless, and without switching pyplot's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, format="png")
    return out


def named_scores(scores: Any) -> dict[str, Any]:
    """One score array, or a ``{name: scores}`` mapping, as the mapping."""
    return dict(scores) if isinstance(scores, Mapping) else {"model": scores}


def plot_roc(y: Any, scores: Any, path: str | Path) -> Path:
    """ROC curve of one score array or a ``{name: scores}`` dict, AUC in the legend."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, s in named_scores(scores).items():
        r = roc_pr(y, s)
        ax.plot(r["fpr"], r["tpr"], label=f"{name} (AUC {r['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="legit false-positive rate", ylabel="attacks caught (TPR)", title="ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_budget_curve(
    y: Any, score: Any, path: str | Path, action: Any = None, budget: float | None = 0.02,
    xmax: float = 0.1,
) -> Path:
    """Legit step-up share vs attacks caught, one line per action, the login budget dashed.

    The x axis stops at ``xmax`` (10%): budgets live there; pass 1.0 for the whole curve.
    """
    curve = budget_curve(y, score, action)
    fig = _figure()
    ax = fig.add_subplot()
    for name, block in curve.groupby("action", sort=False):
        if block[["legit_stepped_up", "attacks_caught"]].isna().all().any():
            continue                                  # an action without attacks (or legit rows) has no curve
        ax.step(np.r_[0.0, block["legit_stepped_up"]], np.r_[0.0, block["attacks_caught"]],
                where="post", label=str(name))
    if budget is not None:
        ax.axvline(budget, ls="--", color="grey", label=f"budget {_pct(budget)}")
    ax.set(xlabel="legit events stepped up", ylabel="attacks caught", title="Step-up budget",
           xlim=(0, xmax), ylim=(0, 1.02))
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_catch_rates(
    y: Any, scores: Any, attack_class: Any, threshold: float | Mapping[str, float], path: str | Path
) -> Path:
    """Bars per attacker class, one per scorer: share flagged at its threshold (legit = false step-ups)."""
    scores = named_scores(scores)
    thresholds = threshold if isinstance(threshold, Mapping) else dict.fromkeys(scores, threshold)
    tables = {name: catch_rate_by_class(y, s, attack_class, thresholds[name]) for name, s in scores.items()}
    classes = list(next(iter(tables.values())).index)
    fig = _figure((max(6.0, 1.1 * len(classes) + 2), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / len(tables)
    x = np.arange(len(classes))
    for i, (name, table) in enumerate(tables.items()):
        bars = ax.bar(x + (i - (len(tables) - 1) / 2) * width, table.loc[classes, "caught_share"], width,
                      label=f"{name} (>= {thresholds[name]:.3g})")
        if i == 0:
            ax.bar_label(bars, labels=[f"n={n}" for n in table.loc[classes, "n"]], fontsize=8)
    ax.set_xticks(x, [str(c) for c in classes], rotation=30, ha="right")
    ax.set(ylabel="share flagged", ylim=(0, 1.15), title="Flagged per attacker class (legit: false step-ups)")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_reliability(y: Any, scores: Any, path: str | Path, bins: int = 10) -> Path:
    """Reliability curve per scorer against the diagonal, Brier score in the legend."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect")
    for name, s in named_scores(scores).items():
        c = calibration(y, s, bins=bins)
        ax.plot(c["prob_pred"], c["prob_true"], marker="o",
                label=f"{name} (Brier {c['brier']:.4f})")
    ax.set(xlabel="mean predicted risk", ylabel="observed attack share", title="Reliability")
    ax.legend(loc="upper left")
    return _save(fig, path)
