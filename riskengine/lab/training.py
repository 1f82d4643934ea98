"""The retraining job: replay labelled events through the serving pipeline, fit, evaluate, register.

``backfill`` sends each event, in time order, through the very same
enrich -> profile -> features code as ``/score`` (with an in-memory store), so
every row sees only the history before it. Step-ups are resolved as the real
users and attackers would: legitimate users pass them, attackers do not.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from riskengine.lab import population, promotion, ranking, segments
from riskengine.lab.replay import Replayed, replay_stream
from riskengine.enrich import Enricher
from riskengine.engine import Engine
from riskengine.features import FEATURE_NAMES, MONOTONIC
from riskengine.scoring.model import FLOOR_SIGNALS, RiskModel, StatisticalScorer, TrainedScorer
from riskengine.policy.decide import Policy
from riskengine.scoring.registry import ModelRegistry, ModelVersion
from riskengine.stores import OFFLINE_KEYS, ProfileStore, memory_store

FPRS = (0.01, 0.02, 0.05)
#: the statistical score's scale the trained risk never goes below (see README: measured choice)
ANOMALY_FLOOR: float | None = 40.0
#: legitimate rows the trees fit on at most (all attacks always): halves the fit at 1M events with the
#: same catch rates; above the 200,000 rows from which the trees' binning samples (below, it is dearer)
MAX_LEGIT_ROWS = 250_000
Progress = Callable[[int], None]


@dataclass
class Dataset:
    """Point-in-time feature rows, labels and what evaluation slices by."""

    X: np.ndarray
    y: np.ndarray
    meta: pd.DataFrame            # event_id, timestamp, action, attack_class, history, freeman, decision

    def window(self, mask: np.ndarray) -> "Dataset":
        return Dataset(self.X[mask], self.y[mask], self.meta[mask].reset_index(drop=True))


def backfill(rows: Iterable[Mapping[str, Any]], enricher: Enricher | None = None, policy: Policy | None = None,
             progress: Progress | None = None, chunk: int = 10_000, store: ProfileStore | None = None) -> Dataset:
    """Features for every row as ``/score`` would have computed them at that moment. ``store``: a
    partition's (partitions.py), whose per-IP and population reads come from the whole stream."""
    engine = Engine(store or memory_store(OFFLINE_KEYS, keep_events=False, keep_audit=False), enricher or Enricher(),
                    StatisticalScorer(), policy, keep_records=False)
    blocks: list[np.ndarray] = []
    buffer: list[list[float]] = []
    meta: dict[str, list] = {k: [] for k in ("event_id", "timestamp", "action", "attack_class", "history",
                                             "freeman", "decision")}
    labels: list[int] = []
    def each(seen: Replayed) -> None:
        nonlocal buffer
        signals = seen.scored.signals
        buffer.append(signals.row())
        labels.append(seen.label)
        for key, value in (("event_id", seen.event.event_id), ("timestamp", seen.event.timestamp),
                           ("action", seen.event.action), ("attack_class", seen.row.get("attack_class", "legit")),
                           ("history", signals.values["history_logins"]),
                           ("freeman", seen.scored.score.risk), ("decision", seen.scored.decision.decision)):
            meta[key].append(value)
        if len(buffer) >= chunk:
            blocks.append(np.asarray(buffer, dtype=np.float64))
            buffer = []
            if progress:
                progress(seen.n)

    replay_stream(engine, rows, each)
    if buffer:
        blocks.append(np.asarray(buffer, dtype=np.float64))
    X = np.concatenate(blocks) if blocks else np.empty((0, len(FEATURE_NAMES)))
    return Dataset(X, np.asarray(labels, dtype=np.int8), pd.DataFrame(meta))


def split_by_time(data: Dataset, eval_share: float = 0.25) -> tuple[Dataset, Dataset]:
    """Train on the earlier days, evaluate on the later ones (never a random split)."""
    ts = pd.to_datetime(data.meta["timestamp"], utc=True)
    cut = ts.min() + (ts.max() - ts.min()) * (1 - eval_share)
    later = (ts > cut).to_numpy()
    return data.window(~later), data.window(later)


@dataclass
class Report:
    """What the job measured, for the terminal and ``metadata.json``."""

    metrics: dict[str, Any]
    table: pd.DataFrame
    by_class: pd.DataFrame
    step_up: pd.DataFrame
    champion: dict[str, Any] | None = None
    promoted: bool = False
    version: str | None = None
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"model {self.version}: evaluated on {self.metrics['n_eval']} later events "
                 f"({self.metrics['eval_attacks']} attacks), trained on {self.metrics['n_train']}",
                 "", self.table.round(4).to_string(), "",
                 "catch rate per attacker class at 1% legitimate FPR:", self.by_class.round(4).to_string(), "",
                 "legitimate events stepped up by risk (risk >= policy's medium band), per action:",
                 self.step_up.round(4).to_string()]
        return "\n".join(lines + [""] + self.notes)


def evaluate(scores: dict[str, np.ndarray], data: Dataset, policy: Policy) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Side-by-side table, per-class catch at 1% FPR, and legit step-up rates at the policy's bands."""
    table = ranking.compare(data.y, scores, FPRS)
    classes = data.meta["attack_class"].astype(str).to_numpy()
    per_class = {}
    for name, s in scores.items():
        threshold = ranking.threshold_at_fpr(data.y, s, FPRS[0])
        rates = segments.catch_rate_by_class(data.y, s, classes, threshold)["caught_share"]
        per_class[name] = rates.drop("legit", errors="ignore")
    legit = data.y == 0
    actions = data.meta["action"].to_numpy()
    step_up = pd.DataFrame({name: pd.Series(s[legit] >= policy.medium_at).groupby(actions[legit]).mean()
                            for name, s in scores.items()})
    return table, pd.DataFrame(per_class), step_up


def default_model() -> RiskModel:
    """The model the retraining job and a fresh service fit: risk only rises with evidence
    (``FEATURES``' directions), and never below the label-free money anomaly (the user's own amount
    and payee, ``FLOOR_SIGNALS``); no stacked anomaly input (README: measured). The trees see at most
    ``MAX_LEGIT_ROWS`` legitimate rows, weighted up (bench/README.md: measured at 1M events)."""
    return RiskModel(monotonic_cst=MONOTONIC, anomaly_floor=ANOMALY_FLOOR, floor_signals=FLOOR_SIGNALS,
                     max_legit_rows=MAX_LEGIT_ROWS)


def fingerprint(data: Dataset) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(data.X).tobytes())
    digest.update(data.y.tobytes())
    return digest.hexdigest()


def windows_refused(data: Dataset, train_set: Dataset, eval_set: Dataset, source: str = "") -> str:
    """Why the time split cannot train: each window's dates and counts, and what to do about it.

    >>> stamps = pd.to_datetime(["2026-11-01", "2026-11-02", "2026-11-03", "2026-12-01"], utc=True)
    >>> data = Dataset(np.zeros((4, 1)), np.array([0, 1, 0, 0], dtype=np.int8), pd.DataFrame({"timestamp": stamps}))
    >>> print(windows_refused(data, *split_by_time(data)))  # doctest: +NORMALIZE_WHITESPACE
    training needs attacks and legitimate events in both the earlier and the later window; earlier window
    (the first 75% of the time range) 2026-11-01 .. 2026-11-03: 2 legitimate, 1 attacks; later window
    (the last 25%) 2026-12-01 .. 2026-12-01: 1 legitimate, 0 attacks. The later window holds only 1 of 4
    events: a few events long after the rest stretch the time range (the largest gap between events is
    28 days, 2026-11-03 .. 2026-12-01); train on data without them, or on a longer stretch of events
    with attacks after the cut
    """
    def window(name: str, part: Dataset) -> str:
        if not len(part.y):
            return f"{name}: no events"
        ts = pd.to_datetime(part.meta["timestamp"], utc=True)
        attacks = int(part.y.sum())
        return (f"{name} {ts.min():%Y-%m-%d} .. {ts.max():%Y-%m-%d}: {len(part.y) - attacks:,} legitimate, "
                f"{attacks:,} attacks")

    lines = ["training needs attacks and legitimate events in both the earlier and the later window; "
             + window("earlier window (the first 75% of the time range)", train_set) + "; "
             + window("later window (the last 25%)", eval_set) + "."]
    ts = pd.to_datetime(data.meta["timestamp"], utc=True).sort_values().reset_index(drop=True)
    gaps = ts.diff()
    if len(ts) > 1 and gaps.max() > (ts.iloc[-1] - ts.iloc[0]) * 0.25:      # a hole longer than the later window
        at = int(gaps.idxmax())
        lines.append(f" The later window holds only {len(eval_set.y):,} of {len(data.y):,} events: a few events "
                     f"long after the rest stretch the time range (the largest gap between events is "
                     f"{gaps[at].days} days, {ts[at - 1]:%Y-%m-%d} .. {ts[at]:%Y-%m-%d}); train on data without "
                     "them, or on a longer stretch of events with attacks after the cut")
    elif int(data.y.sum()) == 0:
        lines.append(" No event is labelled as an attack" + (
            ": post /feedback with confirmed_fraud or step_up_failed for the attacks the service saw"
            if source == "service" else ": check the label column (1 = attack)"))
    else:
        missing = [name for name, part in (("earlier", train_set), ("later", eval_set))
                   if len(np.unique(part.y)) < 2]
        lines.append(f" Label more outcomes in the {' and '.join(missing)} window" + (
            " (/feedback: confirmed_fraud, step_up_failed, confirmed_legit)" if source == "service" else "")
            + ", or train on a longer stretch of events")
    return "".join(lines)


def train(data: Dataset, registry: ModelRegistry, promote: bool = False, policy: Policy | None = None,
          model: RiskModel | None = None, source: str = "", force: bool = False) -> Report:
    """Fit on earlier weeks, evaluate on later ones next to the Freeman baseline, register; promote
    when asked and when the gate (``promotion.py``) passes, or ``force``s past unscored actions."""
    policy = policy or Policy()
    train_set, eval_set = split_by_time(data)
    kept = population.evaluated(population.of_dataset(eval_set))      # population.py: failed logins apart
    eval_set = eval_set.window(kept)
    if len(np.unique(train_set.y)) < 2 or len(np.unique(eval_set.y)) < 2:
        raise ValueError(windows_refused(data, train_set, eval_set, source))
    fitted = (model or default_model()).fit(train_set.X, train_set.y)
    candidate = TrainedScorer(fitted, "candidate")
    scores = {"model": candidate.predict(eval_set.X), "freeman": eval_set.meta["freeman"].to_numpy()}
    champion_entry: ModelVersion | None = None
    if (current := registry.champion_version()) is not None:
        champ_model, champion_entry = registry.load(current)
        scores["champion"] = TrainedScorer.loaded(champ_model, champion_entry).predict(eval_set.X)
    table, by_class, step_up = evaluate(scores, eval_set, policy)
    metrics = {"n_train": int(len(train_set.y)), "n_eval": int(len(eval_set.y)), "n_eval_apart": int((~kept).sum()),
               "eval_attacks": int(eval_set.y.sum()),
               "eval_window": [str(eval_set.meta["timestamp"].min()), str(eval_set.meta["timestamp"].max())],
               **{k: float(v) for k, v in table.loc["model"].items()},
               "freeman": {k: float(v) for k, v in table.loc["freeman"].items()},
               "catch_at_1pct": {k: float(v) for k, v in by_class["model"].items()},
               "legit_step_up": {k: float(v) for k, v in step_up["model"].items()}}
    actions = sorted(map(str, pd.unique(train_set.meta["action"])))
    verdict = None if champion_entry is None else promotion.judge(
        eval_set.y, scores["champion"], scores["model"], eval_set.meta["action"], eval_set.meta["attack_class"],
        population.of_dataset(eval_set), policy, names=(champion_entry.version, "new model"),
        window=tuple(metrics["eval_window"]), champion_actions=champion_entry.metadata.get("actions"),
        challenger_actions=actions, force=force)
    better = verdict is None or verdict.passed
    notes = [] if verdict is None else [verdict.text()]
    entry = registry.register(fitted, {"metrics": metrics, "data_fingerprint": fingerprint(data), "source": source,
                                       "params": fitted.get_params(), "actions": actions,
                                       **({"promotion": verdict.to_dict()} if verdict else {})})
    promoted = False
    if promote and better:
        registry.promote(entry.version)
        promoted = True
        notes.append(f"promoted {entry.version} to champion")
    elif promote:
        notes.append(f"{entry.version} not promoted (the gate failed): kept the current champion")
    return Report(metrics, table, by_class, step_up, dict(champion_entry.metadata) if champion_entry else None,
                  promoted, entry.version, notes)


def terminal_progress(total: int | None, label: str) -> Progress:
    """A plain progress bar on stderr (a count when the total is unknown): no dependency for one line."""
    ended = False

    def show(done: int, final: bool = False) -> None:
        """``final``: the last call, which ends the line (once) so the next output starts on its own."""
        nonlocal ended
        if ended:
            return
        share = 1.0 if total is None else min(done / max(total, 1), 1.0)
        ended = final or share >= 1 and total is not None
        shown = f": {done:,}" if total is None else f" [{'#' * int(share * 30):<30}] {done:,}/{total:,}"
        print(f"\r{label}{shown}", end="\n" if ended else "", file=sys.stderr, flush=True)
    return show


def load_frame(path: Path) -> pd.DataFrame:
    """Parquet or JSONL from ``riskengine generate``, or the public RBA CSV, whole (small files)."""
    return pd.concat(list(_frames(Path(path))), ignore_index=True)


def _frames(path: Path, chunk: int = 50_000) -> Iterator[pd.DataFrame]:
    from riskengine.lab import datafiles

    yield from datafiles.in_time_order(_read(path, chunk), path.name)


def _read(path: Path, chunk: int) -> Iterator[pd.DataFrame]:
    from riskengine.lab import datafiles

    if datafiles.kind(path) == "csv":
        from riskengine.datasets import rba

        yield from rba.iter_rba_events(path, chunksize=chunk)       # never the whole file
        return
    from riskengine.datasets import synth

    datafiles.require(path, synth.EVENT_COLUMNS)                    # a sentence, not a pyarrow schema dump
    frame = synth.read_events(path)                                 # columnar: ~25 MB a million events
    for start in range(0, len(frame), chunk):
        yield frame.iloc[start:start + chunk]


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """A data file as flat rows, a chunk at a time, so a large history never sits in memory as dicts."""
    from riskengine.lab.datafiles import records

    for frame in _frames(Path(path)):
        yield from records(frame)


def replay_file(path: Path, enricher: Enricher | None = None) -> Dataset:
    """``backfill`` over a data file, with a progress bar on stderr (``enricher``: the service's
    geo databases and named lists, so list signals such as ``anonymizer_network`` are learnt)."""
    path = Path(path)
    total = None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        total = pq.ParquetFile(path).metadata.num_rows
    show = terminal_progress(total, "replaying events")
    data = backfill(iter_rows(path), enricher=enricher, progress=show)
    show(len(data.y), final=True)
    return data


ATTACK_OUTCOMES = {"confirmed_fraud": 1, "step_up_failed": 1, "confirmed_legit": 0, "step_up_passed": 0}


def from_store(store) -> Dataset:
    """Production outcomes as training data: the features recorded at scoring time, labelled by feedback.

    Events without feedback count as legitimate (most are); ``step_up_failed`` counts as an attack.
    """
    from riskengine.features import Signals

    baseline = StatisticalScorer()
    rows, labels = [], []
    meta: dict[str, list] = {k: [] for k in ("event_id", "timestamp", "action", "attack_class", "history",
                                             "freeman", "decision")}
    for stored in store.labelled_events():
        values = {name: math.nan if (v := stored.features.get(name)) is None else float(v)   # null: NaN
                  for name in FEATURE_NAMES}
        label = ATTACK_OUTCOMES.get(stored.outcome or "", 0)
        rows.append([values[name] for name in FEATURE_NAMES])
        labels.append(label)
        for key, value in (("event_id", stored.event_id), ("timestamp", pd.Timestamp(stored.at, unit="s", tz="UTC")),
                           ("action", stored.request.get("action", "")),
                           ("attack_class", stored.outcome if label else "legit"),
                           ("history", values["history_logins"]),
                           ("freeman", baseline.score(Signals(values, {})).risk),
                           ("decision", stored.decision.get("decision", ""))):
            meta[key].append(value)
    X = np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))
    return Dataset(X, np.asarray(labels, dtype=np.int8), pd.DataFrame(meta))
