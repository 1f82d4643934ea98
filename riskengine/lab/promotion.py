"""The promotion gate: may a challenger model replace the champion? A verdict a risk team can sign.

Both models are scored on the same later window and the same evaluated population
(``population.py``). The challenger must not regress beyond a stated tolerance on any criterion:
takeovers caught at the policy's step-up band, each attacker class caught there, legitimate
friction at the policy's bands (stepped up and denied, per action), and calibration (Brier). A
challenger that cannot score an action the champion scores (trained without it, e.g. on login-only
data) is refused unless forced. Every criterion is listed with both values and its tolerance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss

from riskengine.lab import population

# largest regression that still passes, in absolute shares (Brier: absolute score)
TOLERANCES = {"catch": 0.01, "class_catch": 0.05, "friction": 0.002, "brier": 0.0005}
MIN_CLASS_ROWS = 5            # fewer takeovers of a class than this: too few to gate on, listed as info


@dataclass(frozen=True)
class Criterion:
    """One line of the verdict: both values, the tolerance, and which way is better."""

    name: str
    champion: float
    challenger: float
    tolerance: float
    higher_is_better: bool
    n: int                                       # events behind the figure

    @property
    def passed(self) -> bool:
        if self.n == 0 or np.isnan(self.champion) or np.isnan(self.challenger):
            return True                          # nothing to compare on this window
        change = self.challenger - self.champion
        return bool(change >= -self.tolerance - 1e-12 if self.higher_is_better else change <= self.tolerance + 1e-12)


@dataclass
class Verdict:
    """The gate's answer: every criterion, and the actions the challenger cannot score."""

    champion: str
    challenger: str
    window: tuple[str, str]
    criteria: list[Criterion]
    unscored_actions: list[str] = field(default_factory=list)
    forced: bool = False

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria) and (not self.unscored_actions or self.forced)

    def text(self) -> str:
        lines = [f"promotion gate: challenger {self.challenger} vs champion {self.champion}, "
                 f"same window {self.window[0]} .. {self.window[1]}",
                 f"  {'criterion':<40} {'champion':>9} {'challenger':>10} {'tolerance':>9}  {'n':>6}  result"]
        for c in self.criteria:
            better = "higher" if c.higher_is_better else "lower"
            lines.append(f"  {c.name:<40} {c.champion:>9.4f} {c.challenger:>10.4f} {c.tolerance:>9.4f}  {c.n:>6}  "
                         f"{'pass' if c.passed else 'FAIL'} ({better} is better)")
        if self.unscored_actions:
            lines.append(f"  actions the champion scores and the challenger was not trained on: "
                         f"{', '.join(self.unscored_actions)} -> "
                         + ("allowed by --force" if self.forced else "FAIL (use --force to promote anyway)"))
        lines.append(f"verdict: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion, "challenger": self.challenger, "window": list(self.window),
                "passed": self.passed, "forced": self.forced, "unscored_actions": self.unscored_actions,
                "criteria": [{**asdict(c), "passed": c.passed} for c in self.criteria]}


def unscored(champion_actions: Iterable[str] | None, challenger_actions: Iterable[str] | None) -> list[str]:
    """Actions the champion was trained on and the challenger was not (unknown lists: none).

    >>> unscored(["login", "payment"], ["login"]), unscored(None, ["login"])
    (['payment'], [])
    """
    if champion_actions is None or challenger_actions is None:
        return []
    return sorted(set(champion_actions) - set(challenger_actions))


def judge(y: Any, champion: Any, challenger: Any, action: Any, attack_class: Any, groups: Any, policy: Any, *,
          names: tuple[str, str] = ("champion", "challenger"), window: tuple[str, str] = ("", ""),
          champion_actions: Iterable[str] | None = None, challenger_actions: Iterable[str] | None = None,
          force: bool = False, tolerances: Mapping[str, float] = TOLERANCES) -> Verdict:
    """Score both models' risks on the same events against the policy's bands; see the module docstring."""
    keep = population.evaluated(np.asarray(groups, dtype=object))
    y = np.asarray(y).astype(int)[keep]
    scores = {"champion": np.asarray(champion, dtype=float)[keep], "challenger": np.asarray(challenger, dtype=float)[keep]}
    actions = np.asarray(action, dtype=object)[keep].astype(str)
    classes = np.asarray(attack_class, dtype=object)[keep].astype(str)
    step, deny = policy.medium_at, policy.deny_at
    criteria = []

    def add(name: str, mask: np.ndarray, figure: Any, key: str, higher: bool) -> None:
        values = [float(figure(scores[who][mask], y[mask])) if mask.any() else np.nan
                  for who in ("champion", "challenger")]
        criteria.append(Criterion(name, values[0], values[1], tolerances[key], higher, int(mask.sum())))

    takeovers = y == 1
    add(f"takeovers caught at risk >= {step:g}", takeovers, lambda s, _: np.mean(s >= step), "catch", True)
    for cls in sorted(set(classes[takeovers])):
        mask = takeovers & (classes == cls)
        if mask.sum() >= MIN_CLASS_ROWS:
            add(f"  {cls} caught", mask, lambda s, _: np.mean(s >= step), "class_catch", True)
    for name in sorted(set(actions)):
        legit = (y == 0) & (actions == name)
        add(f"legit {name} stepped up (>= {step:g})", legit, lambda s, _: np.mean(s >= step), "friction", False)
        add(f"legit {name} denied (>= {deny:g})", legit, lambda s, _: np.mean(s >= deny), "friction", False)
    add("Brier score", np.ones(y.size, dtype=bool), lambda s, t: brier_score_loss(t, s, pos_label=1), "brier", False)
    return Verdict(names[0], names[1], window, criteria, unscored(champion_actions, challenger_actions), force)


def listing(entries: Iterable[Any], champion: str | None) -> list[str]:
    """``riskengine models list``: each version's figures, and whether they compare with the champion's.

    A model's stored metrics come from its own later window; two models' figures compare only when
    that window and the data are the same. Otherwise the line says so, and points at the gate's
    same-window verdict when the model was judged against a champion.
    """
    entries = list(entries)
    window = {e.version: (e.metadata.get("data_fingerprint"), tuple(e.metadata.get("metrics", {}).get("eval_window", ())))
              for e in entries}
    lines = []
    for entry in entries:
        m = entry.metadata.get("metrics", {})
        mark = "*" if entry.version == champion else " "
        figures = (f"roc_auc={m.get('roc_auc', np.nan):.4f} pr_auc={m.get('pr_auc', np.nan):.4f} "
                   f"tpr@1%={m.get('tpr@1%', np.nan):.4f} brier={m.get('brier', np.nan):.4f}")
        span = m.get("eval_window") or ["?", "?"]
        if champion is None or entry.version == champion:
            where = f"window {span[0]} .. {span[1]}"
        elif champion in window and window[entry.version] == window[champion]:
            where = "same window as the champion: comparable"
        else:
            where = "NOT comparable with the champion (other data or window)"
        gate = entry.metadata.get("promotion")
        if gate:
            where += f"; gate vs {gate['champion']} on one window: {'PASS' if gate['passed'] else 'FAIL'}"
        lines.append(f"{mark} {entry.version}  {figures}  {where}")
    return lines
