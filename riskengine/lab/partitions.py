"""Training's backfill at scale: the stream partitioned by user across processes (joblib, or a Dask
cluster through joblib's ``dask`` backend), each partition replayed by ``training.backfill`` through
the serving ``Engine``, exactly as the serial backfill replays the whole stream.

A user's own history depends only on their events; per-IP windows and population counts cross users.
A partition's store answers those reads from a plan worked out over the whole stream, point in time,
with the memory store's own counters (stores/counters.py), from what the engines read and committed.
Population counts count only *learned* values, and what is learned depends on the decisions they
feed, so the plan is a fixed point: round 1 answers from each partition's own counters, each later
round from what the round before read and learned. A round that learned exactly what its plan
assumed saw at every event what the serial replay sees there (by induction over the stream), so its
features are the serial replay's; tests/test_partitions.py compares them feature by feature.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed, parallel_config

from riskengine.enrich import Enricher
from riskengine.features import FEATURE_NAMES, GlobalCount, IpActivity
from riskengine.lab import training
from riskengine.lab.datafiles import records
from riskengine.lab.training import Dataset, backfill
from riskengine.policy.decide import Policy
from riskengine.profiles import FREEMAN_ATTRIBUTES, UserProfile
from riskengine.stores import OFFLINE_KEYS, Batched, MemoryStore
from riskengine.stores.base import Commit, ContextRead
from riskengine.stores.counters import IpWindows

log = logging.getLogger("riskengine.lab")
ATTRIBUTE = {name: i for i, name in enumerate(FREEMAN_ATTRIBUTES)}
MAX_ROUNDS = 6
ROWS_AT_ONCE = 50_000          # rows turned into dicts at a time, so a partition never holds them all as dicts


def _key_id(keyed: str) -> int:
    """A keyed hash (batching.py: 128 bits in hex) as a number: its first 64 bits. Two values share
    one only by chance (about 3 in a million for ten million distinct values)."""
    return int(keyed[:16], 16)


def _user_id(user_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


@dataclass
class Facts:
    """What the engines read and counted, per event: the plan's input, and the fixed point's test."""

    ip: np.ndarray            # uint64: the keyed IP the event's context read and commit named
    at: np.ndarray            # float64: the event's time
    user: np.ndarray          # uint64: whose (per-IP distinct users)
    ok: np.ndarray            # bool: a success, as the per-IP window counts it
    values: np.ndarray        # (n, attributes) uint64: the keyed Freeman values the event read
    present: np.ndarray       # (n, attributes) bool
    counted: np.ndarray       # (n, attributes) bool: learned into the population counts

    @classmethod
    def empty(cls, n: int) -> "Facts":
        a = len(FREEMAN_ATTRIBUTES)
        return cls(np.zeros(n, np.uint64), np.zeros(n), np.zeros(n, np.uint64), np.zeros(n, bool),
                   np.zeros((n, a), np.uint64), np.zeros((n, a), bool), np.zeros((n, a), bool))

    @classmethod
    def merged(cls, parts: Sequence["Facts"], groups: Sequence[np.ndarray], n: int) -> "Facts":
        """The partitions' facts in stream order (``groups``: each partition's stream positions)."""
        whole = cls.empty(n)
        for part, positions in zip(parts, groups):
            for name in (f.name for f in fields(cls)):
                getattr(whole, name)[positions] = getattr(part, name)
        return whole

    def differing(self, other: "Facts") -> int:
        """Events whose facts differ (a learned value, mostly)."""
        rows = np.zeros(len(self.at), bool)
        for name in (f.name for f in fields(self)):
            mine, theirs = getattr(self, name), getattr(other, name)
            rows |= (mine != theirs).reshape(len(rows), -1).any(axis=1)
        return int(rows.sum())


@dataclass
class Plan:
    """Per event, the per-IP activity and population counts the serial replay reads there."""

    ip: np.ndarray            # (n, 2) int32: failures, distinct users
    population: np.ndarray    # (n, attributes, 3) int32: count, total, distinct (for the values read)

    def take(self, positions: np.ndarray) -> "Plan":
        return Plan(self.ip[positions], self.population[positions])


def point_in_time(facts: Facts) -> Plan:
    """Walk the stream in order: each event reads, then commits (its IP sign-in), then counts what it
    learned, as in the serial replay. Per-IP windows with the memory store's own ``IpWindows``;
    population counts with numpy (``population_counts``: ``PopulationCounts``' arithmetic, tested so)."""
    n = len(facts.at)
    ips = IpWindows()
    ip_rows: list[tuple[int, int]] = []
    for ip, at, user, ok in zip(facts.ip.tolist(), facts.at.tolist(), facts.user.tolist(), facts.ok.tolist()):
        activity = ips.activity(ip, at)
        ip_rows.append((activity.failures, activity.distinct_users))
        ips.add(ip, at, user, ok)
    return Plan(np.asarray(ip_rows, np.int32).reshape(n, 2), population_counts(facts))


def population_counts(facts: Facts) -> np.ndarray:
    """(n, attributes, 3): for each event and attribute it read, ``PopulationCounts.read``'s count of
    its value, total and distinct values over the values learned by the events before it."""
    n, width = facts.values.shape
    if n >= 2**31:
        raise ValueError(f"{n:,} events: the plan counts in 32 bits; backfill fewer than 2**31 events at once")
    out = np.zeros((n, width, 3), np.int32)                              # every count is at most n
    for a in range(width):
        counted = facts.counted[:, a].astype(np.int64)
        learnt_before = np.cumsum(counted) - counted                      # total: learned before this event
        read = np.flatnonzero(facts.present[:, a] | facts.counted[:, a])
        _, value = np.unique(facts.values[read, a], return_inverse=True)
        order = np.lexsort((read, value))                                  # by value, then stream order
        rows, groups, hits = read[order], value[order], counted[read[order]]
        before = np.cumsum(hits) - hits
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        same_before = before - np.repeat(before[starts], np.diff(np.r_[starts, len(rows)]))
        first = np.zeros(n, np.int64)                                      # a value's first learning adds one
        learnt_rows = rows[hits == 1]
        learnt_groups = groups[hits == 1]
        if len(learnt_rows):
            firsts = learnt_rows[np.r_[True, learnt_groups[1:] != learnt_groups[:-1]]]
            first[firsts] = 1
        out[rows, a, 0] = same_before
        out[:, a, 1] = learnt_before
        out[:, a, 2] = np.cumsum(first) - first
    return out


class PlannedBackend:
    """A partition's memory backend: per-IP and population reads answered from the plan (or, with
    none, from its own counters), and what each event read and counted noted down (``facts``).
    Events come one at a time in the partition's stream order: each reads its context once, then commits."""

    def __init__(self, n: int, plan: Plan | None) -> None:
        self.backend = MemoryStore(keep_events=False, keep_audit=False)
        self.plan, self.facts, self.n = plan, Facts.empty(n), n
        self._at, self._commits = -1, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def read_contexts(self, reads: list[ContextRead]) -> list[tuple[IpActivity, dict[str, GlobalCount]]]:
        answers = []
        for ip, at, values in reads:
            self._at += 1
            i, facts = self._at, self.facts
            for attribute, value in values.items():
                facts.values[i, ATTRIBUTE[attribute]] = _key_id(value)
                facts.present[i, ATTRIBUTE[attribute]] = True
            if self.plan is None:
                answers.extend(self.backend.read_contexts([(ip, at, values)]))
                continue
            failures, users = self.plan.ip[i].tolist()
            counts = self.plan.population[i].tolist()
            answers.append((IpActivity(failures, users),
                            {a: GlobalCount(*map(float, counts[ATTRIBUTE[a]])) for a in values}))
        return answers

    def commit_group(self, changes: list[Commit]) -> list[BaseException | None]:
        for change in changes:
            i, facts = self._at, self.facts
            facts.ip[i], facts.at[i], facts.ok[i] = _key_id(change.ip), change.at, change.success
            facts.user[i] = _user_id(change.user_id)
            self._counted(change.learned_values)
            self._commits += 1
        return self.backend.commit_group(changes)

    def update_profile(self, user_id: str, expected_version: int, profile: UserProfile,
                       learned_values: dict[str, str], audit: dict[str, Any] | None) -> None:
        self._counted(learned_values)
        self.backend.update_profile(user_id, expected_version, profile, learned_values, audit)

    def _counted(self, values: dict[str, str]) -> None:
        i = self._at
        for attribute, value in values.items():
            a = ATTRIBUTE[attribute]
            if not self.facts.present[i, a] or int(self.facts.values[i, a]) != _key_id(value):
                raise RuntimeError(f"event {i} of a partition learned a {attribute} it did not read: the "
                                   "partitioned backfill cannot plan for it; run the serial backfill")
            self.facts.counted[i, a] = True

    def check(self) -> None:
        """One context read and one commit per event, or the facts are not the events'."""
        if self._at + 1 != self.n or self._commits != self.n:
            raise RuntimeError(f"a partition of {self.n} events read {self._at + 1} contexts and made "
                               f"{self._commits} commits: its facts do not line up with its events")


def replay_partition(frame: pd.DataFrame, plan: Plan | None, enricher: Callable[[], Enricher],
                     policy: Policy | None) -> tuple[Dataset, Facts]:
    """One partition's users, in stream order, through ``training.backfill`` over a planned store."""
    backend = PlannedBackend(len(frame), plan)
    data = backfill(records(frame, ROWS_AT_ONCE), enricher(), policy,
                    store=Batched(backend, None, threads=False, remember=OFFLINE_KEYS))
    backend.check()
    return data, backend.facts


def partition(users: pd.Series, parts: int) -> list[np.ndarray]:
    """Stream positions of each partition: a user's events all in one, by a stable hash of the id."""
    home = pd.util.hash_pandas_object(users, index=False).to_numpy() % np.uint64(parts)
    return [np.flatnonzero(home == p) for p in range(parts)]


def merged(datasets: Sequence[Dataset], groups: Sequence[np.ndarray], n: int) -> Dataset:
    """The partitions' rows back in stream order."""
    order = np.argsort(np.concatenate(groups), kind="stable")
    X = np.concatenate([d.X for d in datasets]) if datasets else np.empty((0, len(FEATURE_NAMES)))
    y = np.concatenate([d.y for d in datasets]) if datasets else np.empty(0, np.int8)
    meta = pd.concat([d.meta for d in datasets], ignore_index=True)
    return Dataset(X[order], y[order], meta.iloc[order].reset_index(drop=True))


@dataclass
class Rounds:
    """How the fixed point went: each round's replay and planning seconds, and the events whose
    facts differed from the plan's (0 in the last round: converged)."""

    replay_s: list[float]
    plan_s: list[float]
    changed: list[int]
    parts: int
    converged: bool = False

    def text(self) -> str:
        rounds = ", ".join(f"round {k + 1}: replay {r:.1f} s" + (f", {c:,} events differed from the plan"
                                                                 if c >= 0 else "")
                           for k, (r, c) in enumerate(zip(self.replay_s, self.changed)))
        return (f"{self.parts} partitions, {len(self.replay_s)} rounds ({rounds}); planning {sum(self.plan_s):.1f} s; "
                + ("converged: the serial replay's features" if self.converged else "did not converge"))


def backfill_partitioned(frame: pd.DataFrame, n_jobs: int, parts: int | None = None,
                         enricher: Callable[[], Enricher] = Enricher, policy: Policy | None = None,
                         max_rounds: int = MAX_ROUNDS, progress: Callable[[str], None] | None = None,
                         ) -> tuple[Dataset, Rounds]:
    """``training.backfill`` over ``frame`` (in stream order), partitioned by user over ``n_jobs``
    joblib workers (the active ``joblib.parallel_config`` backend: loky, or ``dask`` for a cluster).
    ``enricher`` builds each partition's (picklable: a class or ``functools.partial``). With no fixed
    point after ``max_rounds``, the serial backfill runs instead: the answer is the same either way."""
    frame = frame.reset_index(drop=True)
    parts = parts or max(n_jobs, 1)
    groups = partition(frame["user_id"], parts)
    rounds = Rounds([], [], [], parts)
    plan: Plan | None = None
    before: Facts | None = None
    for k in range(1, max_rounds + 1):
        started = time.perf_counter()
        results = Parallel(n_jobs=n_jobs)(delayed(replay_partition)(frame.iloc[positions], plan and plan.take(positions),
                                                                    enricher, policy) for positions in groups)
        facts = Facts.merged([f for _, f in results], groups, len(frame))
        rounds.replay_s.append(time.perf_counter() - started)
        rounds.changed.append(-1 if before is None else facts.differing(before))
        if progress:
            progress(f"round {k}: {len(frame):,} events replayed in {rounds.replay_s[-1]:.1f} s"
                     + ("" if before is None else f"; {rounds.changed[-1]:,} differed from the plan"))
        if before is not None and rounds.changed[-1] == 0:
            rounds.converged = True
            return merged([d for d, _ in results], groups, len(frame)), rounds
        del results
        started = time.perf_counter()
        plan, before = point_in_time(facts), facts
        rounds.plan_s.append(time.perf_counter() - started)
    log.warning("partitioned backfill: no fixed point after %d rounds; replaying serially", max_rounds)
    return backfill(records(frame, ROWS_AT_ONCE), enricher(), policy), rounds


def replay_file_partitioned(path: Path, jobs: int, dask: str | None = None,
                            enricher: Callable[[], Enricher] = Enricher) -> Dataset:
    """``training.replay_file``, partitioned: over ``jobs`` local processes, or with ``dask`` (a
    scheduler address) over that cluster's workers, one partition per worker thread. The file is
    read whole (columnar: about 25 MB a million generated events); rounds are reported on stderr."""
    frame = training.load_frame(Path(path))
    say = lambda line: print(f"partitioned backfill: {line}", file=sys.stderr, flush=True)  # noqa: E731
    if dask is None:
        data, rounds = backfill_partitioned(frame, jobs, enricher=enricher, progress=say)
    else:
        from distributed import Client

        with Client(dask) as client, parallel_config(backend="dask"):
            threads = sum(client.nthreads().values())
            say(f"Dask scheduler {dask}: {len(client.nthreads())} workers, {threads} threads")
            data, rounds = backfill_partitioned(frame, -1, parts=max(threads, 1), enricher=enricher, progress=say)
    say(rounds.text())
    return data
