"""Synthetic, labelled login and action events in the /score request form (API.md).

`riskengine generate` writes them; `riskengine train` replays them through the same pipeline as
/score, so the signals here (places, devices, rhythms, amounts, attacks) are what the model learns.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from riskengine.datasets.synth import useragents
from riskengine.events import row_to_request
from riskengine.datasets.synth.attacks import ATTACK_CLASSES
from riskengine.datasets.synth.fraud import attack_rows
from riskengine.datasets.synth.places import format_ips, load_pools
from riskengine.datasets.synth.legit import ACTIONS, Clock, Rows, concat_rows, legit_rows, take
from riskengine.datasets.synth.users import Population, draw_population, draw_trips

__all__ = ["ACTIONS", "ATTACK_CLASSES", "DEFAULT_START", "EVENT_COLUMNS", "SCHEMA",
           "generate_events", "read_events", "to_request", "write_events"]

DEFAULT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
SCHEMA = pa.schema([
    ("event_id", pa.string()), ("user_id", pa.string()), ("action", pa.string()),
    ("timestamp", pa.string()), ("ip", pa.string()), ("user_agent", pa.string()),
    ("device_id", pa.string()), ("success", pa.bool_()), ("amount", pa.float64()),
    ("currency", pa.string()), ("payee_id", pa.string()), ("session_acr", pa.string()),
    ("session_auth_time", pa.string()), ("label", pa.int8()), ("attack_class", pa.string()),
    ("session_id", pa.string()),
])
EVENT_COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
_RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


def generate_events(users: int = 500, days: int = 30, seed: int = 42,
                    start: datetime | None = None) -> pd.DataFrame:
    """A labelled event stream in EVENT_COLUMNS form, sorted by time; the same seed (and start)
    always gives the same frame. A naive `start` is taken as UTC."""
    if users < 1 or days < 1:
        raise ValueError(f"generate_events needs users >= 1 and days >= 1; got {users=}, {days=}")
    start = DEFAULT_START if start is None else start
    start = start.replace(tzinfo=timezone.utc) if start.tzinfo is None else start
    start = start.astimezone(timezone.utc)
    rng = np.random.default_rng(seed)
    pools = load_pools()
    clock = Clock.at(start, days, pools)
    pop = draw_population(users, days, pools, rng)
    legit, successes, places = legit_rows(pop, draw_trips(pop, days, pools, rng), pools, clock, rng)
    rows = concat_rows([legit, attack_rows(pop, pools, clock, successes, places, rng)])
    inside = (rows["ts"] >= clock.start) & (rows["ts"] < clock.end)
    order = np.flatnonzero(inside)[np.argsort(rows["ts"][inside], kind="stable")]
    return _frame(take(rows, order), pop, seed)


def _strings(values: np.ndarray, present: np.ndarray | None = None) -> pa.Array:
    return pa.array(values, type=pa.string(), mask=None if present is None else ~present)


def _times(seconds: np.ndarray, present: np.ndarray | None = None) -> pa.Array:
    stamps = pa.array(seconds, type=pa.timestamp("s", tz="UTC"),
                      mask=None if present is None else ~present)
    return pc.strftime(stamps, format=_RFC3339)


def _hex_ids(keys: np.ndarray, prefix: str, width: int) -> pa.Array:
    unique, inverse = np.unique(keys, return_inverse=True)
    names = np.array([f"{prefix}{k:0{width}x}" for k in unique], dtype=object)
    return _strings(names[inverse], keys >= 0)


def _frame(rows: Rows, pop: Population, seed: int) -> pd.DataFrame:
    """Integer-coded rows to the public string columns (each distinct value formatted once)."""
    n = len(rows["ts"])
    money = ~np.isnan(rows["amount"])
    in_session = rows["auth_ts"] >= 0
    numbers = pc.cast(pa.array(np.arange(n)), pa.string())
    columns = {
        "event_id": pc.binary_join_element_wise(f"ev{seed}-", pc.utf8_lpad(numbers, 8, "0"), ""),
        "user_id": pc.binary_join_element_wise(
            "u", pc.utf8_lpad(pc.cast(pa.array(rows["user"]), pa.string()), 6, "0"), ""),
        "action": _strings(np.array(ACTIONS, dtype=object)[rows["action"]]),
        "timestamp": _times(rows["ts"]),
        "ip": _strings(format_ips(rows["ip"])),
        "user_agent": _strings(useragents.render(rows["ua"])),
        "device_id": _hex_ids(rows["device"], "", 16),
        "success": pa.array(rows["success"]),
        "amount": pa.array(rows["amount"], mask=~money),
        "currency": _strings(pop.currency[rows["user"]], money),
        "payee_id": _hex_ids(rows["payee"], "payee-", 12),
        "session_acr": _strings(np.full(n, "aal1", dtype=object), in_session),
        "session_auth_time": _times(rows["auth_ts"], in_session),
        "label": pa.array((rows["attack"] > 0).astype(np.int8)),
        "attack_class": _strings(np.array(ATTACK_CLASSES, dtype=object)[rows["attack"]]),
        "session_id": _hex_ids(rows["session"], "sess-", 16),
    }
    return _to_pandas(pa.table(columns, schema=SCHEMA))


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    """One conversion for generated and read-back frames, so a round trip compares equal."""
    return table.cast(SCHEMA).to_pandas(ignore_metadata=True)


def _file_type(path: Path) -> str:
    if path.suffix not in (".parquet", ".jsonl"):
        raise ValueError(f"unknown event file type {path.suffix!r} for {path.name}; "
                         "use .parquet or .jsonl")
    return path.suffix


def write_events(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a stream as Parquet (.parquet) or JSON Lines (.jsonl), chosen by the file suffix."""
    path = Path(path)
    events = df[list(EVENT_COLUMNS)]
    if _file_type(path) == ".parquet":
        table = pa.Table.from_pandas(events, schema=SCHEMA, preserve_index=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        events.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def read_events(path: str | Path) -> pd.DataFrame:
    """Read what write_events wrote, with the same column types as generate_events."""
    path = Path(path)
    if _file_type(path) == ".parquet":
        return _to_pandas(pq.read_table(path, columns=list(EVENT_COLUMNS)))
    options = pa_json.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore")
    return _to_pandas(pa_json.read_json(path, parse_options=options))


def to_request(row: Mapping) -> dict:
    """One stream row as a POST /score body: absent fields dropped, the session nested, and the
    label left out (the engine must never see it).

    >>> to_request({"user_id": "u000001", "action": "payment", "ip": "192.0.2.7", "success": True,
    ...             "amount": 12.5, "device_id": float("nan"), "session_acr": "aal1",
    ...             "session_auth_time": "2026-01-03T08:15:02Z", "label": 0})
    {'user_id': 'u000001', 'action': 'payment', 'ip': '192.0.2.7', 'success': True, 'amount': 12.5, 'session': {'acr': 'aal1', 'auth_time': '2026-01-03T08:15:02Z'}}
    """
    return row_to_request(row)
