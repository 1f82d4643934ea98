"""The offline evaluation report: its tables as text, Markdown, HTML, JSON and PNG plots.

``tables.build`` computes the tables; ``registered.evaluate_dataset`` runs a registered model on a
data file (``riskengine evaluate``). The model under review comes first, the baselines (Freeman, an
older champion) beside it, all on the same events. ``report.build``, ``report.pick_model`` and
``report.evaluate_dataset`` still answer, for notebooks written before the split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from riskengine.lab.plots import plot_budget_curve, plot_catch_rates, plot_reliability, plot_roc
from riskengine.lab.ranking import DEFAULT_FPRS
from riskengine.lab.scored import _pct


FIGURES = {"roc": "ROC", "budget": "Step-up budget", "catch_rates": "Catch rate per attacker class",
           "reliability": "Reliability"}


class Section(NamedTuple):
    key: str                     # name in metrics.json
    heading: str
    guide: str                   # one line on how to read the table
    table: pd.DataFrame
    figures: tuple[str, ...] = ()


@dataclass
class Report:
    """Every table of one evaluation, plus what the plots need; render with ``text``/``write``."""

    title: str
    y: np.ndarray
    scores: dict[str, np.ndarray]
    comparison: pd.DataFrame
    calibration: pd.DataFrame
    thresholds: dict[str, float]                   # per scorer: where "flagged" starts in the tables
    bands: pd.DataFrame | None = None              # per scorer: suggested medium/high and their cost
    by_action: pd.DataFrame | None = None          # main scorer's bands, per action
    classes: pd.DataFrame | None = None
    history: pd.DataFrame | None = None
    drift: pd.DataFrame | None = None
    score_shift: pd.DataFrame | None = None
    action: np.ndarray | None = None
    attack_class: np.ndarray | None = None
    login_budget: float = 0.02
    deny_budget: float = 0.001
    fprs: tuple[float, ...] = DEFAULT_FPRS
    notes: list[str] = field(default_factory=list)
    model_version: str | None = None                 # the registered model behind ``main``, when there is one
    data_name: str | None = None                     # the data file (or "generated data") the events came from
    at_policy: pd.DataFrame | None = None            # main scorer's cost and catch at the policy's bands
    policy_bands: tuple[str, float, float] | None = None   # (policy version, step-up from, deny from)
    apart: pd.DataFrame | None = None                # rows kept out of the evaluated population (population.py)

    @property
    def main(self) -> str:
        return next(iter(self.scores))

    def sections(self) -> list[Section]:
        """The report's tables in reading order; text, Markdown and JSON all render these."""
        first = _pct(self.fprs[0])
        parts = [Section("comparison", "Comparison",
                         "ranking (ROC/PR AUC), attacks caught at a legit false-positive rate, Brier",
                         self.comparison, ("roc", "reliability"))]
        if self.at_policy is not None and self.policy_bands is not None:
            version, medium, deny = self.policy_bands
            parts.append(Section("at_policy", f"At the policy's bands ({version}: step-up from {medium:g}, "
                                 f"deny from {deny:g})",
                                 f"{self.main}'s risk against the bands in force; `riskengine whatif` replays "
                                 "the full decisions", self.at_policy))
        if self.bands is not None:
            parts.append(Section("bands", f"Suggested bands (legit logins stepped up <= "
                                 f"{_pct(self.login_budget)}, denied <= {_pct(self.deny_budget)})",
                                 "medium = step-up threshold, high = deny threshold; measured on logins",
                                 self.bands))
            parts.append(Section("by_action", f"Cost and catch per action at {self.main}'s bands",
                                 "legit_* = friction for real users, attacks_* = share of attacks stopped",
                                 self.by_action, ("budget",)))
        flagged = "its suggested medium band" if self.bands is not None else f"{first} legit FPR"
        if self.classes is not None:
            parts.append(Section("classes", "Catch rate per attacker class",
                                 f"share flagged by each scorer at {flagged}", self.classes, ("catch_rates",)))
        if self.history is not None:
            parts.append(Section("history", f"By login history (earlier logins), {first} legit FPR",
                                 "new users are where risk-based authentication struggles", self.history))
        if self.apart is not None and len(self.apart):
            parts.append(Section("apart", "Reported on their own (not in the figures above)",
                                 "failed-password logins and attack traffic that is not a takeover; flagged = "
                                 f"{self.main}'s risk at or above its step-up threshold", self.apart))
        parts.append(Section("calibration", "Calibration",
                             "Brier: lower is better; a score of 0.8 should mean an 80% attack share",
                             self.calibration))
        if self.score_shift is not None:
            parts.append(Section("score_shift", "Drift: scores, first vs second half of the window",
                                 "PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 major; flagged = share >= "
                                 "the scorer's threshold", self.score_shift))
        if self.drift is not None:
            parts.append(Section("feature_drift", "Drift: features, first vs second half of the window",
                                 "population stability index per feature, largest first", self.drift))
        return parts

    def _header(self) -> str:
        data = f" from {self.data_name}" if self.data_name else ""
        return f"{self.y.size:,} events{data}, {int(self.y.sum()):,} attacks; model under review: {self.main}"

    def text(self, max_rows: int = 12) -> str:
        """The report for a terminal: every table, long ones cut to their top ``max_rows``."""
        lines = [self.title, "=" * len(self.title), self._header()] + self.notes
        with pd.option_context("display.width", 160, "display.max_columns", 40):
            for part in self.sections():
                table = part.table if len(part.table) <= max_rows else part.table.head(max_rows)
                lines += ["", f"## {part.heading}", f"({part.guide})", table.round(4).to_string()]
                if len(part.table) > max_rows:
                    lines.append(f"... {len(part.table) - max_rows} more rows in report.md")
        return "\n".join(lines) + "\n"

    def markdown(self) -> str:
        parts = [f"# {self.title}", "", self._header() + "."] + [f"- {note}" for note in self.notes]
        for part in self.sections():
            parts += ["", f"## {part.heading}", "", f"_{part.guide}_", "", markdown_table(part.table), ""]
            parts += [f"![{FIGURES[name]}]({name}.png)\n" for name in part.figures]
        return "\n".join(parts)

    @property
    def subject(self) -> str:
        """What the plots are of: model and data, for their titles."""
        return " on ".join(x for x in (self.model_version or self.main, self.data_name) if x)

    def plot(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        in_unit = {k: s for k, s in self.scores.items() if s.size and s.min() >= 0 and s.max() <= 1}
        paths = [plot_roc(self.y, self.scores, out / "roc.png", subject=self.subject),
                 plot_reliability(self.y, in_unit, out / "reliability.png", subject=self.subject)]
        if self.bands is not None:
            paths.append(plot_budget_curve(self.y, self.scores[self.main], out / "budget.png",
                                           action=self.action, budget=self.login_budget, subject=self.subject))
        if self.classes is not None:
            paths.append(plot_catch_rates(self.y, self.scores, self.attack_class, self.thresholds,
                                          out / "catch_rates.png", subject=self.subject))
        return paths

    def metrics(self) -> dict[str, Any]:
        """Every table as plain JSON-ready dicts, for CI checks and dashboards."""
        return {"title": self.title, "n": int(self.y.size), "attacks": int(self.y.sum()), "model": self.main,
                "model_version": self.model_version, "data": self.data_name, "notes": self.notes,
                **{part.key: json_table(part.table) for part in self.sections()}}

    def write(self, out_dir: str | Path) -> str:
        """``report.md``, ``report.html`` (self-contained), ``report.txt``, ``metrics.json`` and the PNGs
        into ``out_dir``; returns the Markdown."""
        from riskengine.lab.htmlreport import render_html

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.plot(out)
        text = self.markdown()
        (out / "report.md").write_text(text, encoding="utf-8")
        (out / "report.html").write_text(render_html(self, out), encoding="utf-8")
        (out / "report.txt").write_text(self.text(), encoding="utf-8")
        (out / "metrics.json").write_text(json.dumps(self.metrics(), indent=2, default=str), encoding="utf-8")
        return text


def json_table(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """A table as {row: {column: value}} with every float exact (``json`` writes the shortest repr
    that reads back the same float; pandas' ``to_json`` keeps 10 digits, and a threshold cut to 10
    digits can flag rows the report did not), NaN as null.

    >>> json_table(pd.DataFrame({"t": [0.16686920082637371, float("nan")], "n": [3, 4]}, index=["a", "b"]))
    {'a': {'t': 0.16686920082637371, 'n': 3}, 'b': {'t': None, 'n': 4}}
    """
    def plain(value: Any) -> Any:
        value = value.item() if isinstance(value, np.generic) else value
        return None if isinstance(value, float) and not np.isfinite(value) else value

    return {str(row): {str(column): plain(value) for column, value in zip(df.columns, values)}
            for row, values in zip(df.index, df.itertuples(index=False))}


def markdown_table(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, (float, np.floating)) else str(v)

    header = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i)] + [cell(v) for v in row]) + " |"
              for i, row in zip(df.index, df.itertuples(index=False))]
    return "\n".join(lines)


_MOVED = {"build": "tables", "report_markdown": "tables", "pick_model": "registered", "evaluate_dataset": "registered",
          "WINDOWS": "registered"}


def __getattr__(name: str) -> Any:
    """``report.build`` and friends, from the modules they moved to (imported on first use: no cycle)."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"riskengine.lab.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
