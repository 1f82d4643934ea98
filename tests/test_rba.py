import csv
import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from riskengine.datasets.rba import EVENT_COLUMNS, iter_rba_events, load_rba, to_request

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "rba-dataset-sample.csv"
EXTRA = DATA / "rba-extra.csv"

# Top-level /score request fields and their kinds, from API.md.
API_FIELDS = {"event_id": str, "user_id": str, "action": str, "timestamp": str, "ip": str,
              "user_agent": str, "device_id": str, "success": bool, "amount": (int, float),
              "currency": str, "payee_id": str, "session": dict, "attributes": dict}


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_rba(SAMPLE)


@pytest.fixture(scope="module")
def extra() -> pd.DataFrame:
    return load_rba(EXTRA).set_index("event_id", drop=False)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_columns_in_event_order(sample):
    assert list(sample.columns) == list(EVENT_COLUMNS)
    assert list(sample.columns[:15]) == [
        "event_id", "user_id", "action", "timestamp", "ip", "user_agent", "device_id", "success",
        "amount", "currency", "payee_id", "session_acr", "session_auth_time", "label",
        "attack_class"]
    assert len(sample) == 19


def test_row_0_unquoted_user_agent_and_unknown_place(sample):
    row = sample.iloc[0]
    assert row["event_id"] == "rba-0"
    assert row["user_id"] == "-4324475583306591935"
    assert row["action"] == "login"
    assert row["timestamp"] == "2020-02-03T12:43:30.772Z"
    assert row["ip"] == "10.0.65.171"
    assert row["user_agent"] == ("Mozilla/5.0  (iPhone; CPU iPhone OS 13_4 like Mac OS X) "
                                 "Gecko/20150101 Firefox/20.0.0.1618 (Chrome variation/248113")
    assert row["success"] is np.False_
    assert row["geo_country"] == "NO"
    assert row["geo_region"] is None and row["geo_city"] is None
    assert row["geo_asn"] == 29695
    assert math.isnan(row["rtt_ms"])
    assert row["device_id"] is None and row["payee_id"] is None and row["session_auth_time"] is None
    assert row["label"] == 0 and row["attack_class"] == "legit" and not row["is_attack_ip"]


def test_quoted_user_agent_with_commas_and_known_place(sample):
    row = sample.iloc[2]
    assert row["user_agent"] == (
        "Mozilla/5.0  (iPad; CPU OS 7_1 like Mac OS X) AppleWebKit/533.1 "
        "(KHTML, like Gecko Version/4.0 Mobile Safari/533.1 variation/277457")
    assert bool(row["success"]) is True
    assert (row["geo_region"], row["geo_city"], row["geo_asn"]) == ("Vestland", "Urangsvag", 29695)
    assert row["user_id"] == "-3284137479262433373"


def test_attack_ip_rows_are_not_takeovers(sample):
    flagged = sample[sample["is_attack_ip"]]
    assert flagged["event_id"].tolist() == ["rba-4", "rba-5"]
    assert flagged["attack_class"].tolist() == ["attack_ip", "attack_ip"]
    assert flagged["label"].tolist() == [0, 0]
    assert sample.loc[4, "geo_city"] == "Ashburn" and sample.loc[4, "geo_asn"] == 398986


def test_rtt_and_positive_user_id(sample):
    assert sample.loc[15, "rtt_ms"] == 1123.0
    assert sample["rtt_ms"].isna().sum() == 18
    assert sample.loc[6, "user_id"] == "7246533443898239661"
    assert sample.loc[14, "geo_region"] == "Troms og Finnmark"


def test_dtypes(sample):
    assert sample["success"].dtype == bool and sample["is_attack_ip"].dtype == bool
    assert sample["label"].dtype.kind == "i"
    assert sample["rtt_ms"].dtype == float
    assert all(isinstance(u, str) for u in sample["user_id"])
    assert sample["success"].sum() == 7  # True in rows 2, 6, 9, 10, 11, 15, 16


def test_every_sample_row_matches_the_csv_text(sample):
    rows = csv_rows(SAMPLE)
    assert len(rows) == len(sample)
    for raw, (_, ev) in zip(rows, sample.iterrows()):
        assert ev["event_id"] == "rba-" + raw["index"]
        assert ev["user_id"] == raw["User ID"]
        assert ev["ip"] == raw["IP Address"]
        assert ev["user_agent"] == raw["User Agent String"]
        assert bool(ev["success"]) == (raw["Login Successful"] == "True")
        assert ev["timestamp"] == raw["Login Timestamp"].replace(" ", "T") + "Z"
        parsed = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00"))
        assert parsed.utcoffset() == timedelta(0)
        assert parsed.microsecond == int(raw["Login Timestamp"][-3:]) * 1000
        assert ev["geo_city"] == (None if raw["City"] == "-" else raw["City"])


def test_takeovers_ipv6_and_rtt(extra):
    both = extra.loc["rba-1000"]
    assert (both["label"], both["attack_class"], bool(both["is_attack_ip"])) == (
        1, "account_takeover", True)
    assert both["rtt_ms"] == 612.0
    ato = extra.loc["rba-1001"]
    assert (ato["label"], ato["attack_class"], bool(ato["is_attack_ip"])) == (
        1, "account_takeover", False)
    assert ato["ip"] == "2a02:fe1:e04f:1d00::2"
    ip_only = extra.loc["rba-1002"]
    assert (ip_only["label"], ip_only["attack_class"], bool(ip_only["success"])) == (
        0, "attack_ip", False)
    assert extra["label"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]


def test_namibia_empty_cells_and_milliseconds(extra):
    row = extra.loc["rba-1004"]
    assert row["geo_country"] == "NA"  # Namibia, not a missing value
    assert row["geo_region"] is None and row["geo_city"] is None
    assert row["rtt_ms"] == 540.5
    assert extra.loc["rba-1005", "timestamp"] == "2020-02-04T08:18:03.005Z"
    assert extra.loc["rba-1002", "timestamp"] == "2020-02-04T08:16:00.000Z"
    assert extra.loc["rba-1007", "user_agent"] is None


def test_long_user_agent_is_cut_to_the_api_limit(extra):
    raw = {r["index"]: r for r in csv_rows(EXTRA)}["1003"]["User Agent String"]
    assert len(raw) > 1024
    assert extra.loc["rba-1003", "user_agent"] == raw[:1024]
    assert extra["user_agent"].dropna().str.len().max() == 1024


@pytest.mark.parametrize("chunksize", [1, 4, 7, 100_000])
def test_chunks_match_one_frame(chunksize):
    whole = next(iter_rba_events(SAMPLE, chunksize=100_000))
    chunks = list(iter_rba_events(SAMPLE, chunksize=chunksize))
    assert len(chunks) == math.ceil(19 / chunksize)
    assert all(len(c) <= chunksize for c in chunks)
    joined = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_frame_equal(joined, whole.reset_index(drop=True))


def test_limit_reads_only_the_first_rows():
    assert load_rba(SAMPLE, limit=5)["event_id"].tolist() == [f"rba-{i}" for i in range(5)]


def test_wrong_file_is_refused(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_rba(path)
    bad = SAMPLE.read_text().replace(",False,False,False\n", ",False,False,maybe\n", 1)
    (tmp_path / "bad.csv").write_text(bad)
    with pytest.raises(ValueError, match="Is Account Takeover.*'maybe'"):
        load_rba(tmp_path / "bad.csv")


def check_request(body: dict) -> None:
    assert set(body) <= set(API_FIELDS)
    assert {"user_id", "action", "ip"} <= set(body)
    for key, value in body.items():
        assert isinstance(value, API_FIELDS[key]), (key, value)
    attributes = body.get("attributes", {})
    assert len(attributes) <= 32
    for key, value in attributes.items():
        assert isinstance(key, str)
        assert type(value) in (str, int, float, bool), (key, value)
        assert not (isinstance(value, float) and math.isnan(value))
    assert "label" not in json.dumps(body) and "is_attack_ip" not in attributes
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).tzinfo is not None


def test_to_request_row_0(sample):
    body = to_request(sample.iloc[0])
    assert body == {
        "event_id": "rba-0",
        "user_id": "-4324475583306591935",
        "action": "login",
        "timestamp": "2020-02-03T12:43:30.772Z",
        "ip": "10.0.65.171",
        "user_agent": ("Mozilla/5.0  (iPhone; CPU iPhone OS 13_4 like Mac OS X) "
                       "Gecko/20150101 Firefox/20.0.0.1618 (Chrome variation/248113"),
        "success": False,
        "attributes": {"geo_country": "NO", "geo_asn": 29695},
    }
    assert type(body["success"]) is bool and type(body["attributes"]["geo_asn"]) is int


def test_to_request_every_row_is_api_shaped(sample, extra):
    for frame in (sample, extra):
        for record in frame.to_dict("records"):
            check_request(to_request(record))
        for _, row in frame.iterrows():
            check_request(to_request(row))
    body = to_request(extra.loc["rba-1000"])
    assert body["attributes"] == {"geo_country": "NO", "geo_region": "Oslo County",
                                  "geo_city": "Oslo", "geo_asn": 29695, "rtt_ms": 612.0}
    assert "user_agent" not in to_request(extra.loc["rba-1007"])
    json.dumps(body)  # plain JSON types, no numpy scalars


def test_to_request_passes_the_wire_schema(sample, extra):
    from riskengine.api.schemas import ScoreRequest

    for frame in (sample, extra):
        for _, row in frame.iterrows():
            body = to_request(row)
            parsed = ScoreRequest.model_validate_json(json.dumps(body))
            assert parsed.user_id == body["user_id"] and parsed.success == body["success"]
