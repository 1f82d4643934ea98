"""What-if: replay a labelled or recorded event stream under a candidate policy and model, beside the current ones.

Sits beside ``evaluation.py``: evaluation ranks scores; this counts the decisions users would get
(step-ups and denies of legitimate events, attacks caught) before a policy change is enforced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from riskengine.engine import Engine
from riskengine.enrich import Enricher
from riskengine.lab import population
from riskengine.lab.calibration import wilson_interval
from riskengine.lab.replay import Replayed, replay_stream
from riskengine.scoring.model import Scorer
from riskengine.policy.decide import Policy
from riskengine.stores import OFFLINE_KEYS, memory_store

CAUGHT = ("step_up", "deny")          # an attacker asked to step up fails it: stepped up is caught
MODES = ("shadow", "counterfactual")


@dataclass(frozen=True)
class Setup:
    """A policy and the scorer it decides on: what is serving now, or what might."""

    name: str
    scorer: Scorer
    policy: Policy


# --- replay -------------------------------------------------------------------------------------


def replay(rows: Iterable[Mapping[str, Any]], current: Setup, candidate: Setup, mode: str = "shadow",
           enricher: Enricher | None = None, progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Each event's decision under both setups, one row per event, in stream order.

    ``shadow`` (the default, and the only honest mode for a recorded stream) lets the current
    setup drive the profiles, as production did, and asks the candidate about each event on the
    same history, changing nothing. ``counterfactual`` (labelled streams) replays the stream a
    second time with the candidate driving, so its own step-ups and denies shape later history.
    In both, legitimate users pass the step-ups they are asked for and attackers do not, as in
    ``training.backfill``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if current.name == candidate.name:
        raise ValueError(f"the two setups need different names, both are {current.name!r}")
    rows = rows if isinstance(rows, list) else list(rows)
    enricher = enricher or Enricher()
    if mode == "shadow":
        return _drive(rows, current, [candidate], enricher, progress)
    first = _drive(rows, current, [], enricher, progress)
    second = _drive(rows, candidate, [], enricher, progress)
    return first.join(second[[f"{candidate.name}_risk", f"{candidate.name}_decision"]])


def _drive(rows: list[Mapping[str, Any]], driver: Setup, shadows: list[Setup], enricher: Enricher,
           progress: Callable[[int], None] | None) -> pd.DataFrame:
    store = memory_store(OFFLINE_KEYS, keep_events=False, keep_audit=False)
    engine = Engine(store, enricher, driver.scorer, driver.policy, keep_records=False)
    # shadows share the store: they read the same history and, with ``evaluate``, never write it
    watchers = [(s.name, Engine(store, enricher, s.scorer, s.policy, keep_records=False)) for s in shadows]
    columns: dict[str, list] = {k: [] for k in ("event_id", "action", "success", "label", "attack_class")}
    for name in [driver.name] + [n for n, _ in watchers]:
        columns[f"{name}_risk"], columns[f"{name}_decision"] = [], []
    def each(seen: Replayed) -> None:
        for (name, _), watched in zip(watchers, seen.watched):
            columns[f"{name}_risk"].append(watched.decision.risk_score)
            columns[f"{name}_decision"].append(watched.decision.decision)
        columns[f"{driver.name}_risk"].append(seen.scored.decision.risk_score)
        columns[f"{driver.name}_decision"].append(seen.scored.decision.decision)
        for key, value in (("event_id", seen.event.event_id), ("action", seen.event.action),
                           ("success", seen.event.success), ("label", seen.label),
                           ("attack_class", seen.row.get("attack_class") or "legit")):
            columns[key].append(value)
        if progress and seen.n % 10_000 == 0:
            progress(seen.n)

    replay_stream(engine, rows, each, tuple(watcher for _, watcher in watchers))
    if progress:
        progress(len(rows))
    return pd.DataFrame(columns)


# --- what users would see -----------------------------------------------------------------------


def decided(replayed: pd.DataFrame) -> pd.Series:
    """Events in the evaluated population (``population.py``, as in ``evaluate``): failed-password
    logins (denied by every policy) and non-takeover attack traffic are counted apart."""
    return pd.Series(population.evaluated(population.of_frame(replayed)), index=replayed.index)


def summarize(replayed: pd.DataFrame, setup: str, confidence: float = 0.95) -> pd.DataFrame:
    """Per action (and ``all``): legit shares stepped up and denied, attack share caught, with Wilson CIs.

    >>> replayed = pd.DataFrame({"action": ["login"] * 5, "success": True, "label": [0, 0, 0, 0, 1],
    ...                          "x_decision": ["allow", "step_up", "deny", "allow", "step_up"]})
    >>> table = summarize(replayed, "x")
    >>> table[["legit", "legit_step_up", "legit_deny", "attacks", "caught"]]  # doctest: +NORMALIZE_WHITESPACE
            legit  legit_step_up  legit_deny  attacks  caught
    action
    all         4           0.25        0.25        1     1.0
    login       4           0.25        0.25        1     1.0
    """
    decision = f"{setup}_decision"
    if decision not in replayed:
        raise ValueError(f"no decisions for {setup!r} in the replay; it holds "
                         f"{sorted(c.removesuffix('_decision') for c in replayed if c.endswith('_decision'))}")
    frame = replayed[decided(replayed)]
    rows = {}
    for action, group in [("all", frame)] + sorted(frame.groupby("action"), key=lambda g: str(g[0])):
        legit, attacks = group[group["label"] == 0][decision], group[group["label"] == 1][decision]
        row: dict[str, Any] = {"legit": len(legit), "attacks": len(attacks)}
        for name, hits, n in (("legit_step_up", (legit == "step_up").sum(), len(legit)),
                              ("legit_deny", (legit == "deny").sum(), len(legit)),
                              ("caught", attacks.isin(CAUGHT).sum(), len(attacks))):
            low, high = wilson_interval(int(hits), n, confidence)
            row[name], row[f"{name}_low"], row[f"{name}_high"] = (hits / n if n else math.nan), low, high
        rows[str(action)] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("action")


def compare(replayed: pd.DataFrame, current: str, candidate: str, confidence: float = 0.95) -> pd.DataFrame:
    """Both setups' summaries, one row per (action, setup), and how many decisions differ per action."""
    summaries = {name: summarize(replayed, name, confidence) for name in (current, candidate)}
    frame = replayed[decided(replayed)]
    differs = frame[f"{current}_decision"] != frame[f"{candidate}_decision"]
    changed = {"all": int(differs.sum()), **differs.groupby(frame["action"]).sum().astype(int).to_dict()}
    rows, index = [], []
    for action in summaries[current].index:
        for name in (current, candidate):
            rows.append({**summaries[name].loc[action].to_dict(), "changed": changed.get(action, 0)})
            index.append((action, name))
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["action", "setup"]))


def _share(value: float, low: float, high: float, n: int) -> str:
    return "-" if n == 0 else f"{value:6.1%} [{low:.1%}, {high:.1%}]"


def format_comparison(table: pd.DataFrame, confidence: float = 0.95) -> str:
    """The comparison as a terminal table: shares with their confidence intervals in brackets."""
    ci = f"{confidence:.0%} CI"
    lines = [f"{'action':<16} {'setup':<10} {'legit':>7}  {'legit stepped up [' + ci + ']':<28} "
             f"{'legit denied [' + ci + ']':<28} {'attacks':>7}  {'attacks caught [' + ci + ']':<28} changed"]
    candidate = table.index.get_level_values("setup").unique()[-1]
    for (action, setup), row in table.iterrows():
        lines.append(
            f"{action:<16} {setup:<10} {int(row['legit']):>7}  "
            f"{_share(row['legit_step_up'], row['legit_step_up_low'], row['legit_step_up_high'], row['legit']):<28} "
            f"{_share(row['legit_deny'], row['legit_deny_low'], row['legit_deny_high'], row['legit']):<28} "
            f"{int(row['attacks']):>7}  "
            f"{_share(row['caught'], row['caught_low'], row['caught_high'], row['attacks']):<28} "
            f"{int(row['changed']) if setup == candidate else '':>7}")
    return "\n".join(lines)


def render(replayed: pd.DataFrame, current: Setup, candidate: Setup, mode: str = "shadow",
           confidence: float = 0.95) -> str:
    """The whole what-if answer for a terminal: who is compared, how, and the table."""
    groups = population.of_frame(replayed)
    lines = [f"what-if over {len(replayed):,} events ({int(replayed['label'].sum()):,} labelled attacks), "
             f"{mode} replay",
             f"  {current.name:<10} policy {current.policy.version}, model {current.scorer.version}",
             f"  {candidate.name:<10} policy {candidate.policy.version}, model {candidate.scorer.version}",
             population.describe(groups),
             "caught = stepped up or denied (attackers fail step-ups); changed = events decided differently", "",
             format_comparison(compare(replayed, current.name, candidate.name, confidence), confidence)]
    apart = population.apart_table(groups, replayed["label"],
                                   replayed[f"{candidate.name}_decision"].isin(CAUGHT).to_numpy())
    if len(apart):
        lines += ["", f"reported on their own (flagged = stepped up or denied by {candidate.name}):",
                  apart.round(4).to_string()]
    if mode == "shadow":
        lines += ["", "shadow: history follows the current setup's decisions, as recorded; "
                  "--counterfactual lets the candidate's own step-ups shape it (labelled data only)"]
    return "\n".join(lines)


def setups(settings: Any, policy: str | Path, version: str | None = None) -> tuple[Setup, Setup]:
    """(current, candidate): the serving policy and champion (Freeman while there is none), and the
    candidate policy file with model ``version`` (default: the current model)."""
    from riskengine.scoring.model import StatisticalScorer, TrainedScorer
    from riskengine.policy.file import load_policy, resolve
    from riskengine.scoring.registry import ModelRegistry

    registry = ModelRegistry.open(settings)
    champion = registry.champion_version()
    current_scorer: Scorer = (TrainedScorer.loaded(*registry.load(champion)) if champion
                              else StatisticalScorer())
    candidate_scorer = current_scorer
    if version is not None and version != champion:
        candidate_scorer = TrainedScorer.loaded(*registry.load(version))
    return (Setup("current", current_scorer, load_policy(resolve(settings.policy))),
            Setup("candidate", candidate_scorer, load_policy(resolve(policy))))   # a file or a preset name


# --- candidate policies -------------------------------------------------------------------------


def _ceil4(value: float) -> float:
    """Up to 4 decimals, rounding up: a threshold raised a hair never spends more of the budget."""
    return math.ceil(value * 10_000 - 1e-9) / 10_000


def policy_with_bands(base: str | Path, medium: float, deny_at: float, note: str = "") -> str:
    """A copy of the policy file ``base`` with the step-up band starting at ``medium`` and the
    ceiling at ``deny_at``, as YAML (comments are not kept): a candidate for ``riskengine whatif``.

    The high band (one level more) moves only as far as it must to stay between the two; the
    name gets a ``-suggested`` suffix so answers and audit records show which policy decided.
    """
    from riskengine.policy.file import parse_policy

    doc = yaml.safe_load(Path(base).read_text(encoding="utf-8"))
    medium, deny_at = _ceil4(medium), max(_ceil4(deny_at), _ceil4(medium) + 0.0002)
    deny_at = min(deny_at, 1.0)
    medium = min(medium, deny_at - 0.0002)
    bands = doc.setdefault("bands", {})
    bands.setdefault("medium", {})["from"] = medium
    if "high" in bands:
        high = float(bands["high"].get("from", deny_at))
        bands["high"]["from"] = float(np.clip(high, medium + 0.0001, deny_at))
    doc["deny_at"] = deny_at
    doc["name"] = f"{doc.get('name', 'policy')}-suggested"
    header = "# Suggested by riskengine (whatif.policy_with_bands): review, then try it with `riskengine whatif`.\n"
    text = header + "".join(f"# {line}\n" for line in note.splitlines()) + yaml.safe_dump(doc, sort_keys=False)
    parse_policy(text, "suggested policy")          # never hand out a file the service would refuse
    return text
