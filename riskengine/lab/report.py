"""The offline evaluation report: ``evaluation.py``'s numbers as text, Markdown and PNG plots.

``riskengine evaluate`` and the notebooks call it; the model under review comes first, the
baselines (Freeman, an older champion) beside it, all on the same events.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from riskengine.lab.evaluation import (
    DEFAULT_FPRS,
    LEGIT,
    _arrays,
    _pct,
    by_history,
    calibration,
    catch_rate_by_class,
    compare,
    cost_at,
    drift,
    score_shift,
    second_half,
    suggest_bands,
    threshold_at_fpr,
)
from riskengine.lab import population
from riskengine.lab.plots import named_scores, plot_budget_curve, plot_catch_rates, plot_reliability, plot_roc

FIGURES = {"roc": "ROC", "budget": "Step-up budget", "catch_rates": "Catch rate per attacker class",
           "reliability": "Reliability"}


# --- the report -------------------------------------------------------------------------------


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


# --- from a data file and a registered model ---------------------------------------------------

WINDOWS = ("auto", "all", "later")


def pick_model(registry: Any, version: str | None = None) -> str:
    """``version``, else the champion; a clear error before any slow replay when there is neither."""
    version = version or registry.champion_version()
    if version is None:
        raise ValueError(f"no champion model in {registry.root}: train one with "
                         "`riskengine train --data PATH --promote`, or pass --model VERSION")
    registry.get(version)                               # an unknown version fails here, not after the replay
    return version


def evaluate_dataset(
    data: Any, registry: Any, version: str | None = None, window: str = "auto", policy: Any = None,
    data_name: str | None = None, **options: Any
) -> Report:
    """Score a backfilled ``training.Dataset`` with a registered model and the Freeman baseline.

    ``window="auto"`` evaluates only the later quarter when the model was trained on this very
    data (its ``metadata.json`` fingerprint matches), since the earlier rows are its training set;
    ``"later"`` always does, ``"all"`` never. The champion joins the table when it is not the model.
    Failed logins and non-takeover attack traffic are reported apart (``population.py``); ``policy``
    (default: the built-in default policy) adds cost and catch at its bands.
    """
    from riskengine.policy.decide import Policy
    from riskengine.lab import training
    from riskengine.features import FEATURE_NAMES
    from riskengine.scoring.model import TrainedScorer

    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
    champion = registry.champion_version()
    version = pick_model(registry, version)
    model, entry = registry.load(version)
    notes = [f"model {version}" + (" (champion)" if version == champion else "")]
    seen = entry.metadata.get("data_fingerprint") == training.fingerprint(data)
    if window == "later" or (window == "auto" and seen):
        data = training.split_by_time(data)[1]
        why = "the model was trained on the earlier rows of this data" if seen else "--window later"
        notes.append(f"held-out later window only ({why}): {data.meta['timestamp'].min()} .. "
                     f"{data.meta['timestamp'].max()}")
    elif seen:
        notes.append("WARNING: the model was trained on this data; figures on all rows are optimistic")
    groups = population.of_dataset(data)
    kept = data.y[population.evaluated(groups)]
    if len(np.unique(kept)) < 2:
        raise ValueError(f"the evaluated window holds {len(kept)} events of one class only "
                         f"({population.describe(groups)}); evaluation needs labelled takeovers and "
                         "legitimate events")
    scores = {"model": TrainedScorer.loaded(model, entry).predict(data.X), "freeman": data.meta["freeman"].to_numpy()}
    if champion is not None and champion != version:
        scores["champion"] = TrainedScorer.loaded(*registry.load(champion)).predict(data.X)
        notes.append(f"champion {champion} shown beside it")
    meta = data.meta
    report = build(data.y, scores, action=meta["action"].to_numpy(), attack_class=meta["attack_class"].to_numpy(),
                 history=meta["history"].to_numpy(), features=pd.DataFrame(data.X, columns=list(FEATURE_NAMES)),
                 timestamp=meta["timestamp"].to_numpy(),
                 title=f"riskengine offline evaluation: {version}" + (f" on {data_name}" if data_name else ""),
                 notes=notes, groups=groups, policy=policy or Policy(), data_name=data_name, **options)
    report.model_version = version
    return report
