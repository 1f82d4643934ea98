"""Plots of the offline evaluation (matplotlib, headless): what ``report.py`` puts beside its tables.

Each function draws one figure from labels and scores via the evaluation modules (``ranking``, ``bands``, ``segments``, ``calibration``) and writes a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from riskengine.lab.bands import budget_curve
from riskengine.lab.calibration import calibration
from riskengine.lab.ranking import roc_pr
from riskengine.lab.scored import _pct
from riskengine.lab.segments import catch_rate_by_class


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


def _title(what: str, subject: str | None) -> str:
    """A plot title naming what it shows and, when known, the model and data it is of."""
    return f"{what}\n{subject}" if subject else what


def named_scores(scores: Any) -> dict[str, Any]:
    """One score array, or a ``{name: scores}`` mapping, as the mapping."""
    return dict(scores) if isinstance(scores, Mapping) else {"model": scores}


def plot_roc(y: Any, scores: Any, path: str | Path, subject: str | None = None, xmax: float = 0.1) -> Path:
    """ROC curve of one score array or a ``{name: scores}`` dict, AUC in the legend.

    The false-positive axis is logarithmic up to ``xmax`` (10%): step-up budgets live at 0.1-5%,
    which a linear axis squeezes into its first pixels. 1% and 2% are marked.
    """
    fig = _figure()
    ax = fig.add_subplot()
    lowest = xmax
    for name, s in named_scores(scores).items():
        r = roc_pr(y, s)
        positive = r["fpr"] > 0
        if positive.any():
            lowest = min(lowest, float(r["fpr"][positive].min()))
        ax.step(np.maximum(r["fpr"], 1e-6), r["tpr"], where="post", label=f"{name} (AUC {r['roc_auc']:.3f})")
    for rate in (0.01, 0.02):
        ax.axvline(rate, ls=":", color="grey")
    ax.set_xscale("log")
    ax.set(xlabel="legit false-positive rate (log scale)", ylabel="attacks caught (TPR)",
           title=_title("ROC", subject), xlim=(min(lowest, 1e-3), xmax), ylim=(0, 1.02))
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.legend(loc="lower right")
    return _save(fig, path)


def _percent_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x * 100:g}%")


def plot_budget_curve(
    y: Any, score: Any, path: str | Path, action: Any = None, budget: float | None = 0.02,
    xmax: float = 0.1, subject: str | None = None,
) -> Path:
    """Legit step-up share vs attacks caught, one panel per action, the login budget dashed.

    One panel each, not one axis for all: overlapping curves hid actions. The x axis stops at
    ``xmax`` (10%): budgets live there; pass 1.0 for the whole curve.
    """
    curve = budget_curve(y, score, action)
    blocks = [(name, block) for name, block in curve.groupby("action", sort=False)
              if not block[["legit_stepped_up", "attacks_caught"]].isna().all().any()]   # needs both classes
    columns = min(3, max(1, len(blocks)))
    rows = -(-max(1, len(blocks)) // columns)
    fig = _figure((3.2 * columns + 0.5, 2.8 * rows + 0.8))
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True).ravel()
    for ax, (name, block) in zip(axes, blocks):
        ax.step(np.r_[0.0, block["legit_stepped_up"]], np.r_[0.0, block["attacks_caught"]], where="post")
        if budget is not None:
            ax.axvline(budget, ls="--", color="grey")
        ax.set(title=str(name), xlim=(0, xmax), ylim=(0, 1.02))
        ax.xaxis.set_major_formatter(_percent_formatter())
        ax.tick_params(labelbottom=True)              # every panel keeps its own x labels
    for ax in axes[len(blocks):]:
        ax.set_axis_off()
    fig.supxlabel("legit events stepped up" + (f" (dashed: budget {_pct(budget)})" if budget is not None else ""))
    fig.supylabel("attacks caught")
    fig.suptitle(_title("Step-up budget per action", subject))
    return _save(fig, path)


def plot_catch_rates(
    y: Any, scores: Any, attack_class: Any, threshold: float | Mapping[str, float], path: str | Path,
    subject: str | None = None,
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
    ax.set(ylabel="share flagged", ylim=(0, 1.15), title=_title("Flagged per attacker class (legit: false step-ups)", subject))
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_reliability(y: Any, scores: Any, path: str | Path, bins: int = 10, subject: str | None = None) -> Path:
    """Reliability curve per scorer against the diagonal, Brier score in the legend, events per bin
    written beside the first scorer's points (a bin of 3 events says little)."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect")
    for i, (name, s) in enumerate(named_scores(scores).items()):
        c = calibration(y, s, bins=bins)
        ax.plot(c["prob_pred"], c["prob_true"], marker="o",
                label=f"{name} (Brier {c['brier']:.4f})")
        if i == 0:
            for x, v, n in zip(c["prob_pred"], c["prob_true"], c["counts"]):
                ax.annotate(f"n={n:,}", (x, v), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="mean predicted risk", ylabel="observed attack share", title=_title("Reliability", subject))
    ax.legend(loc="upper left")
    return _save(fig, path)
