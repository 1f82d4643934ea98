"""Realistic workloads for the benchmarks: generated users, a trained model, a store warmed with history.

Every benchmark starts from the same recipe so the figures compare: ``riskengine.datasets.synth`` events for
many users, the earlier days replayed (history: known devices, places, amounts), a model trained on
them and registered as champion, and the later days left over as the traffic to measure.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:                 # `python bench/run.py` from anywhere
    sys.path.insert(0, str(ROOT))

from riskengine.datasets import synth  # noqa: E402
from riskengine.lab import training  # noqa: E402
from riskengine.lab.datafiles import records  # noqa: E402
from riskengine.engine import Engine  # noqa: E402
from riskengine.events import event_from_request, row_to_request  # noqa: E402
from riskengine.scoring.registry import ModelRegistry  # noqa: E402
from riskengine.lab.replay import run  # noqa: E402


@dataclass
class Stream:
    """A generated stream cut in time: ``history`` to warm stores and train on, ``traffic`` to measure."""

    history: pd.DataFrame
    traffic: pd.DataFrame


def make_stream(users: int, days: int, history_share: float = 0.75, seed: int = 7) -> Stream:
    frame = synth.generate_events(users=users, days=days, seed=seed)
    cut = int(len(frame) * history_share)
    return Stream(frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True))


def train_champion(history: pd.DataFrame, home: Path) -> str:
    """Backfill + fit on the history, registered and promoted under ``home/models``: what serve loads."""
    dataset = training.backfill(records(history))
    report = training.train(dataset, ModelRegistry(home / "models"), promote=True, source="bench")
    assert report.promoted and report.version
    return report.version


def warm(engine: Engine, history: pd.DataFrame) -> float:
    """Replay the history through ``engine`` (the serving code, recording everything); returns seconds."""
    started = time.perf_counter()

    async def record_all() -> None:
        for row in records(history):
            await engine.record(event_from_request(row_to_request(row)))
    run(record_all())
    return time.perf_counter() - started


def request_bodies(traffic: pd.DataFrame) -> list[dict]:
    """The ``/score`` bodies, in time order, without event ids (the load generator makes them unique)."""
    bodies = []
    for row in records(traffic):
        body = row_to_request(row)
        body.pop("event_id", None)
        bodies.append(body)
    return bodies


def users_apart(bodies: list[dict], apart: int) -> list[dict]:
    """The same bodies, each user's in their own order, and none sent within ``apart`` bodies of that
    user's last; otherwise as early as the time order allows (a deferred body goes as soon as it may).

    Sent in plain time order, a generated session's events (a login, then its page views and payments,
    seconds apart in the data) leave one after another, so at 16 connections about 60% of bodies share
    their user with a body still in flight: what people do seconds apart, the replay sends in the same
    millisecond. One worker queues those in turn; several workers decide them at once and all but one
    decide again (``Conflict``). With ``apart`` above the connections, a user's next event goes after
    their last was answered, as with real people behind a service of this size.
    """
    out: list[dict] = []
    last: dict[str, int] = {}                  # user -> position of their last body in ``out``
    deferred: list[dict] = []                  # bodies held back, in time order
    held: Counter[str] = Counter()             # user -> bodies held back (their later ones wait behind them)

    def free(user: str) -> bool:
        return len(out) - last.get(user, -apart) >= apart

    def send(body: dict) -> None:
        last[body["user_id"]] = len(out)
        out.append(body)

    def send_deferred() -> bool:
        """The earliest held-back body whose user may go now (never past that user's earlier one)."""
        passed: set[str] = set()
        for i, body in enumerate(deferred):
            user = body["user_id"]
            if user not in passed and free(user):
                held[user] -= 1
                send(deferred.pop(i))
                return True
            passed.add(user)
        return False

    for body in bodies:
        while send_deferred():
            pass
        if held[body["user_id"]] or not free(body["user_id"]):
            deferred.append(body)
            held[body["user_id"]] += 1
        else:
            send(body)
    while deferred:                            # only held-back bodies are left: closer than ``apart`` if need be
        if not send_deferred():
            held[deferred[0]["user_id"]] -= 1
            send(deferred.pop(0))
    return out


def write_lua_bodies(bodies: list[dict], path: Path) -> Path:
    """A Lua table of JSON bodies split at the event id: ``{head, tail}`` with ``head .. id .. tail``.

    Every request gets a fresh ``event_id`` (a repeated one would be answered from the stored
    decision, which measures idempotency, not scoring).
    """
    lines = ["local all = {}", "local function add(part) for i = 1, #part do all[#all + 1] = part[i] end end"]
    for start in range(0, len(bodies), LUA_CHUNK):      # a Lua function holds at most 65,536 constants
        lines.append("add((function() return {")
        for body in bodies[start:start + LUA_CHUNK]:
            text = json.dumps({"event_id": "\0", **body}, separators=(",", ":"))
            head, tail = text.split("\\u0000")
            lines.append(f"{{{_lua_string(head)},{_lua_string(tail)}}},")
        lines.append("} end)())")
    lines.append("return all")
    path.write_text("\n".join(lines) + "\n")
    return path


LUA_CHUNK = 20_000           # bodies per Lua function: two string constants each


def _lua_string(text: str) -> str:
    """A Lua long-bracket-free quoted string (JSON already escapes control characters)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
