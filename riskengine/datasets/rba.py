"""Input adapter for the public RBA login dataset (Wiefling et al., ACM TOPS 2022, CC BY 4.0).

Streams ``rba-dataset.csv`` (33M rows) into the flat event form that training, evaluation and
replays share, and turns one event row into a ``/score`` request body (API.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from os import PathLike
from typing import Any

import numpy as np
import pandas as pd

from riskengine.events import row_to_request

USER_AGENT_MAX = 1024  # API.md limit on ``user_agent``
CSV_COLUMNS = (
    "index", "Login Timestamp", "User ID", "Round-Trip Time [ms]", "IP Address", "Country",
    "Region", "City", "ASN", "User Agent String", "Browser Name and Version",
    "OS Name and Version", "Device Type", "Login Successful", "Is Attack IP", "Is Account Takeover",
)
EVENT_COLUMNS = (
    "event_id", "user_id", "action", "timestamp", "ip", "user_agent", "device_id", "success",
    "amount", "currency", "payee_id", "session_acr", "session_auth_time", "label", "attack_class",
    "geo_country", "geo_region", "geo_city", "geo_asn", "is_attack_ip", "rtt_ms",
)

PathArg = str | PathLike[str]


def iter_rba_events(path: PathArg, chunksize: int = 100_000, limit: int | None = None
                    ) -> Iterator[pd.DataFrame]:
    """Yield the file as event frames of ``chunksize`` rows, never holding it whole.

    ``path`` may be compressed (``.gz``, ``.zip``...: pandas infers it); ``limit`` stops after
    that many rows. User-Agents longer than 1024 characters are cut to 1024 (the API limit).
    """
    reader = pd.read_csv(path, chunksize=chunksize, nrows=limit, dtype=str,
                         keep_default_na=False, na_filter=False)  # "NA" is Namibia, not missing
    with reader:
        for chunk in reader:
            yield to_events(chunk)


def load_rba(path: PathArg, limit: int | None = None) -> pd.DataFrame:
    """The whole file (or its first ``limit`` rows) as one event frame: for small files only."""
    frames = list(iter_rba_events(path, limit=limit))
    if not frames:
        return to_events(pd.DataFrame({c: pd.Series(dtype=str) for c in CSV_COLUMNS}))
    return pd.concat(frames, ignore_index=True)


def to_events(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw RBA rows (all columns read as text) -> event rows, one per login.

    >>> raw = pd.DataFrame([["7", "2020-02-03 12:43:30.772", "-43", "", "10.0.65.171", "NO", "-",
    ...     "-", "29695", "Mozilla/5.0", "", "", "mobile", "False", "True", "False"]],
    ...     columns=CSV_COLUMNS)
    >>> row = to_events(raw).iloc[0]
    >>> row["event_id"], row["user_id"], row["timestamp"], row["attack_class"], row["geo_city"]
    ('rba-7', '-43', '2020-02-03T12:43:30.772Z', 'attack_ip', None)
    """
    missing = [c for c in CSV_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"not an RBA dataset file: missing columns {missing}; "
                         f"expected the header {','.join(CSV_COLUMNS)}")
    index = raw["index"].astype(str).str.strip()
    takeover = _flag(raw["Is Account Takeover"], "Is Account Takeover", index)
    attack_ip = _flag(raw["Is Attack IP"], "Is Attack IP", index)
    when = pd.to_datetime(raw["Login Timestamp"].astype(str), format="ISO8601")
    if when.dt.tz is not None:
        when = when.dt.tz_convert("UTC").dt.tz_localize(None)
    stamps = np.datetime_as_string(when.to_numpy(dtype="datetime64[ms]"), unit="ms")
    user_agent = raw["User Agent String"].astype(str).str.slice(0, USER_AGENT_MAX)
    asn = _unknown(raw["ASN"])
    none = pd.Series([None] * len(raw), index=raw.index, dtype=object)
    events = pd.DataFrame({
        "event_id": "rba-" + index,
        "user_id": raw["User ID"].astype(str).str.strip(),
        "action": "login",
        "timestamp": pd.Series(stamps, index=raw.index, dtype=str) + "Z",
        "ip": raw["IP Address"].astype(str).str.strip(),
        "user_agent": user_agent.astype(object).where(user_agent != "", None),
        "device_id": none,
        "success": _flag(raw["Login Successful"], "Login Successful", index),
        "amount": np.nan,
        "currency": none,
        "payee_id": none,
        "session_acr": none,
        "session_auth_time": none,
        "label": takeover.astype(int),
        "attack_class": pd.Series(
            np.where(takeover, "account_takeover", np.where(attack_ip, "attack_ip", "legit")),
            index=raw.index, dtype=str),
        "geo_country": _unknown(raw["Country"]),
        "geo_region": _unknown(raw["Region"]),
        "geo_city": _unknown(raw["City"]),
        "geo_asn": pd.to_numeric(asn, errors="coerce").astype("Int64"),
        "is_attack_ip": attack_ip,
        "rtt_ms": pd.to_numeric(raw["Round-Trip Time [ms]"].astype(str).str.strip()
                                .replace("", np.nan), errors="coerce").astype(float),
    }, index=raw.index)
    return events[list(EVENT_COLUMNS)]


def to_request(row: Mapping[str, Any] | pd.Series) -> dict[str, Any]:
    """One event row -> a ``POST /score`` body: API.md fields only, absent values left out.

    Geo/ASN/RTT hints go into ``attributes``; the labels never leave the row.

    >>> to_request({"event_id": "rba-0", "user_id": "-43", "action": "login", "ip": "10.0.0.1",
    ...             "success": False, "device_id": None, "geo_country": "NO", "geo_asn": 29695,
    ...             "rtt_ms": float("nan"), "label": 0})
    {'event_id': 'rba-0', 'user_id': '-43', 'action': 'login', 'ip': '10.0.0.1', 'success': False, \
'attributes': {'geo_country': 'NO', 'geo_asn': 29695}}
    """
    return row_to_request(row)


def _flag(column: pd.Series, name: str, index: pd.Series) -> pd.Series:
    """The dataset's ``True``/``False`` text as bools; anything else is a broken file."""
    text = column.astype(str).str.strip()
    known = text.isin(["True", "False"])
    if not known.all():
        at = known.to_numpy().argmin()
        raise ValueError(f"{name}: expected True or False, got {text.iloc[at]!r} (row index "
                         f"{index.iloc[at]}); is this the RBA dataset CSV?")
    return (text == "True").astype(bool)


def _unknown(column: pd.Series) -> pd.Series:
    """Text with the dataset's ``-`` and empty cells as None."""
    text = column.astype(str).str.strip()
    return text.astype(object).where(~text.isin(["-", ""]), None)


