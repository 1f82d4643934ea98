"""The audit trail on a real SQLite file: every kind of edit is found by `riskengine audit verify`,
which names the chain and record; export by time range; retention that keeps the chain verifiable;
several writer chains verified together."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from riskengine.audit import trail
from riskengine.api import create_app
from riskengine.audit.chain import GENESIS, HEAD, Anchor, AuditRow, canonical, seal, verify
from riskengine.cli import main
from riskengine.home import open_for_audit
from riskengine.settings import Settings
from riskengine.stores import SQLiteStore
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, T0, iso


def _trail(settings: Settings, days: int = 3, policy: str | None = None) -> None:
    """A policy load, one login a day for alice and bob, a feedback and an erasure."""
    app = create_app(settings.model_copy(update={"policy": policy}) if policy else settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        for day in range(days):
            for user in ("alice", "bob"):
                response = client.post("/score", json={
                    "event_id": f"{user}-{day}", "user_id": user, "action": "login", "ip": OSLO_IP,
                    "user_agent": CHROME_WIN, "device_id": "laptop-1", "timestamp": iso(T0 + timedelta(days=day))})
                assert response.status_code == 200
        assert client.post("/feedback", json={"event_id": "bob-0", "outcome": "confirmed_legit"}).status_code == 200
        assert client.delete("/users/carol").status_code == 404     # unknown here: nothing erased, request audited


@pytest.fixture
def home(settings, monkeypatch) -> Settings:
    monkeypatch.setenv("RISKENGINE_HOME", str(settings.home))      # the CLI reads Settings() from the env
    _trail(settings)
    return settings


_OPEN: list[sqlite3.Connection] = []


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    """Each test's direct connections closed after it (Python 3.13 warns of one left open)."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def _db(settings: Settings) -> sqlite3.Connection:
    _OPEN.append(sqlite3.connect(settings.var / "profiles.db", isolation_level=None))
    return _OPEN[-1]


def _rows(settings: Settings) -> list[tuple[int, str, str, str]]:
    return _db(settings).execute("SELECT seq, body, prev_hash, hash FROM audit ORDER BY seq").fetchall()


def _verify(capsys) -> tuple[int, str]:
    code = main(["audit", "verify"])
    return code, capsys.readouterr().out


def test_an_untouched_trail_verifies_and_holds_every_kind_of_record(home, capsys):
    code, out = _verify(capsys)
    assert code == 0 and out.startswith("audit trail OK: 9 records in 1 chain(s)"), out
    kinds = [json.loads(body)["kind"] for _, body, _, _ in _rows(home)]
    assert kinds == ["policy"] + ["score"] * 6 + ["feedback", "erasure"]
    score = json.loads(_rows(home)[1][1])
    assert {"at", "recorded_at", "client", "subject", "event_ref", "action", "risk_score", "reasons", "decision",
            "required_acr", "exemption", "model_version", "policy_version", "amr", "shadowed"} <= set(score)
    assert score["client"] == "tests" and score["policy_version"] == "default@2" and score["at"].startswith("2026-03-02")


# -- tampering, each kind on the real file, each found and named --------------------------------------------

def _edit_byte(db, rows):
    seq, body = rows[3][0], rows[3][1]
    at = body.index('"risk_score":') + len('"risk_score":')
    db.execute("UPDATE audit SET body=? WHERE seq=?", (body[:at] + ("9" if body[at] != "9" else "8") + body[at + 1:], seq))
    return [(4, "content does not match its seal")]


def _edit_decision(db, rows):
    db.execute("UPDATE audit SET body=replace(body, '\"decision\":\"allow\"', '\"decision\":\"deny\"') WHERE seq=5")
    return [(5, "content does not match its seal")]


def _edit_hash_column(db, rows):
    db.execute("UPDATE audit SET hash=? WHERE seq=6", ("f" * 64,))
    return [(6, "content does not match its seal"), (7, "does not link to the record before it")]


def _delete_middle(db, rows):
    db.execute("DELETE FROM audit WHERE seq=4")
    return [(5, "records 4..4 are missing (deleted)"), (5, "does not link to the record before it")]


def _delete_last(db, rows):
    db.execute("DELETE FROM audit WHERE seq=9")
    return [(9, "records 9..9 at the end of the chain are missing (deleted)")]


def _delete_last_and_forge_head(db, rows):
    db.execute("DELETE FROM audit WHERE seq=9")
    seq, _, _, digest = rows[7]
    forged = Anchor.make(HEAD, "main", seq, digest, None)                # without the audit key
    db.execute("UPDATE audit_anchors SET seq=?, hash=?, mac=? WHERE kind='head'", (seq, digest, forged.mac))
    return [(8, "the chain's head anchor is not sealed with the audit key (forged or edited)")]


def _insert_forged_at_end(db, rows):
    seq, _, _, prev = rows[-1]
    body = {**json.loads(rows[1][1]), "seq": seq + 1, "decision": "allow", "subject": "0" * 32}
    db.execute("INSERT INTO audit VALUES ('main', ?, ?, ?, ?)", (seq + 1, canonical(body), prev, seal(prev, body)))
    return [(10, "content does not match its seal"), (10, "come after the chain's head (inserted)")]


def _insert_forged_in_the_middle(db, rows):
    for seq in range(len(rows), 4, -1):                                  # make room at 5 by shifting 5.. up by one
        db.execute("UPDATE audit SET seq=seq+1 WHERE seq=?", (seq,))
    prev = rows[3][3]
    body = {**json.loads(rows[4][1]), "seq": 5, "action": "export_data"}
    db.execute("INSERT INTO audit VALUES ('main', 5, ?, ?, ?)", (canonical(body), prev, seal(prev, body)))
    return [(5, "content does not match its seal"), (6, "position inside the record does not match"),
            (6, "does not link to the record before it")]


def _swap_bodies(db, rows):
    (a, body_a, _, _), (b, body_b, _, _) = rows[2], rows[5]
    db.execute("UPDATE audit SET body=? WHERE seq=?", (body_b, a))
    db.execute("UPDATE audit SET body=? WHERE seq=?", (body_a, b))
    return [(3, "moved or swapped"), (3, "content does not match its seal"), (6, "moved or swapped"),
            (6, "content does not match its seal")]


def _swap_rows_renumbered(db, rows):
    """Swap two records completely (body, seals) and fix the seq inside each body: the links break."""
    (a, body_a, prev_a, hash_a), (b, body_b, prev_b, hash_b) = rows[2], rows[3]
    fixed_a = canonical({**json.loads(body_b), "seq": a})
    fixed_b = canonical({**json.loads(body_a), "seq": b})
    db.execute("UPDATE audit SET body=?, prev_hash=?, hash=? WHERE seq=?", (fixed_a, prev_b, hash_b, a))
    db.execute("UPDATE audit SET body=?, prev_hash=?, hash=? WHERE seq=?", (fixed_b, prev_a, hash_a, b))
    return [(3, "does not link to the record before it"), (3, "content does not match its seal"),
            (4, "does not link to the record before it")]


TAMPERING = [_edit_byte, _edit_decision, _edit_hash_column, _delete_middle, _delete_last,
             _delete_last_and_forge_head, _insert_forged_at_end, _insert_forged_in_the_middle, _swap_bodies,
             _swap_rows_renumbered]


@pytest.mark.parametrize("tamper", TAMPERING, ids=[t.__name__.strip("_") for t in TAMPERING])
def test_verify_finds_each_kind_of_edit_and_names_where(home, capsys, tamper):
    expected = tamper(_db(home), _rows(home))
    code, out = _verify(capsys)
    assert code == 1, out
    assert "audit trail INVALID" in out
    for seq, what in expected:
        assert any(line.startswith(f"FAIL chain main record {seq}: ") and what in line
                   for line in out.splitlines()), (seq, what, out)


def test_verify_as_a_separate_process(home):
    env = {**os.environ, "RISKENGINE_HOME": str(home.home)}
    ok = subprocess.run([sys.executable, "-m", "riskengine", "audit", "verify"], env=env, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and "audit trail OK: 9 records" in ok.stdout, ok.stdout + ok.stderr
    _db(home).execute("UPDATE audit SET body=replace(body, '\"client\":\"tests\"', '\"client\":\"other\"') "
                      "WHERE seq=2")
    bad = subprocess.run([sys.executable, "-m", "riskengine", "audit", "verify"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and "FAIL chain main record 2: content does not match its seal" in bad.stdout


def test_another_key_fails_every_seal_and_says_so(home, capsys, tmp_path, monkeypatch):
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    monkeypatch.setenv("RISKENGINE_AUDIT_KEY_FILE", str(other))
    code, out = _verify(capsys)
    assert code == 1 and "is the audit key" in out


def test_several_writer_chains_verify_together(tmp_path):
    key = os.urandom(32)
    writers = [SQLiteStore(tmp_path / "shared.db", synchronous="NORMAL", chain=name, audit_key=key)
               for name in ("host-a", "host-b")]
    for n in range(6):
        writers[n % 2].append_audit({"kind": "test", "at": iso(T0), "n": n})
    rows = list(writers[0].audit_rows())
    assert sorted({(r.chain, r.seq) for r in rows}) == [(c, s) for c in ("host-a", "host-b") for s in (1, 2, 3)]
    assert verify(rows, key, writers[0].audit_anchors()) == []
    with closing(sqlite3.connect(tmp_path / "shared.db", isolation_level=None)) as db:
        db.execute("DELETE FROM audit WHERE chain='host-b' AND seq=2")
    problems = verify(writers[0].audit_rows(), key, writers[0].audit_anchors())
    assert [str(p) for p in problems] == ["chain host-b record 3: records 2..2 are missing (deleted)",
                                          "chain host-b record 3: does not link to the record before it "
                                          "(a record was deleted, inserted or reordered)"]
    for writer in writers:
        writer.close()


def test_a_store_without_a_key_is_not_accepted_by_a_keyed_verify(tmp_path):
    plain = SQLiteStore(tmp_path / "plain.db", synchronous="NORMAL")
    plain.append_audit({"kind": "test", "at": iso(T0)})
    assert verify(plain.audit_rows(), None, plain.audit_anchors()) == []
    problems = [str(p) for p in verify(plain.audit_rows(), b"k" * 32, plain.audit_anchors())]
    assert problems == ["chain main record 1: the chain's head anchor is not sealed with the audit key (forged or edited)",
                        "chain main record 1: content does not match its seal (edited, or forged without the audit key)"]
    plain.close()


# -- export ---------------------------------------------------------------------------------------------------

def test_export_jsonl_by_event_time(home, capsys, tmp_path):
    out = tmp_path / "day1.jsonl"
    assert main(["audit", "export", "--since", "2026-03-03", "--until", "2026-03-04T00:00:00Z",
                 "--format", "jsonl", "--out", str(out)]) == 0
    assert "exported 2 of 9 records (verified)" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["kind"], r["event_id"], r["at"][:10]) for r in records] == [
        ("score", "alice-1", "2026-03-03"), ("score", "bob-1", "2026-03-03")]
    assert all(r["chain"] == "main" and len(r["hash"]) == 64 for r in records)


def test_export_csv_to_stdout(home, capsys):
    assert main(["audit", "export", "--until", "2026-03-03", "--format", "csv"]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == trail.COLUMNS
    assert [(r["kind"], r["event_id"], r["decision"], r["amr"]) for r in rows] == [
        ("score", "alice-0", "allow", '["rba"]'), ("score", "bob-0", "allow", '["rba"]')]
    assert main(["audit", "export", "--since", "yesterday"]) == 2


def test_export_says_when_the_trail_does_not_verify(home, capsys):
    _db(home).execute("DELETE FROM audit WHERE seq=3")
    assert main(["audit", "export", "--format", "jsonl"]) == 1
    assert "NOT verified" in capsys.readouterr().err


# -- retention -----------------------------------------------------------------------------------------------

def test_retention_keeps_the_chain_verifiable(home, capsys):
    now = datetime.now(timezone.utc)
    with open_for_audit(home) as engine:
        assert engine.prune_audit(30, now=now + timedelta(days=10)) == 0           # nothing that old yet
        assert engine.prune_audit(30, now=now + timedelta(days=31)) == 8           # all but the last record
    code, out = _verify(capsys)
    assert code == 0 and "audit trail OK: 2 records" in out, out
    rows = _rows(home)
    assert [json.loads(b)["kind"] for _, b, _, _ in rows] == ["erasure", "retention"]
    retention = json.loads(rows[1][1])
    assert (retention["pruned_chain"], retention["pruned_through_seq"], retention["retention_days"]) == ("main", 8, 30)
    start = _db(home).execute("SELECT seq, hash FROM audit_anchors WHERE kind='start'").fetchone()
    assert start == (9, rows[0][2])                       # the first kept record links to the anchored seal


def test_retention_anchor_cannot_be_moved_or_dropped(home, capsys):
    with open_for_audit(home) as engine:
        engine.prune_audit(30, now=datetime.now(timezone.utc) + timedelta(days=31))
    db = _db(home)
    db.execute("DELETE FROM audit WHERE seq=9")                        # drop one more old record ...
    seq, prev = db.execute("SELECT seq, prev_hash FROM audit WHERE seq=10").fetchone()
    forged = Anchor.make("start", "main", seq, prev, None)             # ... and move the anchor without the key
    db.execute("UPDATE audit_anchors SET seq=?, hash=?, mac=? WHERE kind='start'", (seq, prev, forged.mac))
    code, out = _verify(capsys)
    assert code == 1 and "FAIL chain main record 10: the chain's start anchor is not sealed" in out
    db.execute("DELETE FROM audit_anchors WHERE kind='start'")
    code, out = _verify(capsys)
    assert code == 1 and "FAIL chain main record 10: records 1..9 are missing (deleted)" in out


def _old_records(settings: Settings, n: int, days_ago: float) -> None:
    """``n`` records whose event time ``at`` is ``days_ago`` days back though written now (a replay)."""
    provision_keys(settings)
    at = iso(datetime.now(timezone.utc) - timedelta(days=days_ago))
    with open_for_audit(settings) as engine:
        for k in range(n):
            engine.store.append_audit({"kind": "test", "at": at, "recorded_at": iso(datetime.now(timezone.utc)),
                                       "n": k})


def provision_keys(settings: Settings) -> None:
    """The audit and pseudonym keys an operator provisions (offline tools never create them)."""
    settings.var.mkdir(parents=True, exist_ok=True)
    for name in ("audit.key", "pseudonym.key"):
        if not (settings.var / name).exists():
            fd = os.open(settings.var / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, os.urandom(32))
            os.close(fd)


def test_prune_command_honours_the_policys_minimum(settings, monkeypatch, capsys):
    monkeypatch.setenv("RISKENGINE_HOME", str(settings.home))
    _old_records(settings, 3, days_ago=400)
    _trail(settings, policy="hipaa")
    monkeypatch.setenv("RISKENGINE_POLICY", "hipaa")
    assert main(["audit", "prune", "--days", "365"]) == 0
    assert "pruned 0 audit records whose time (`at`) is more than 2190 days ago (the policy keeps at least 2190)" \
        in capsys.readouterr().out
    monkeypatch.setenv("RISKENGINE_POLICY", "default")
    assert main(["audit", "prune", "--days", "365"]) == 0
    assert "pruned 3 audit records" in capsys.readouterr().out
    code, out = _verify(capsys)
    assert code == 0 and "10 records" in out, out                    # 9 of the trail + the retention record
    monkeypatch.delenv("RISKENGINE_POLICY")
    assert main(["audit", "prune"]) == 2                              # no --days and no retention configured


@pytest.mark.parametrize("days", ["-5", "0", "nan", "inf", "soon"])
def test_prune_refuses_a_retention_that_is_not_a_positive_number_of_days(home, capsys, days):
    before = _rows(home)
    with pytest.raises(SystemExit) as refused:
        main(["audit", "prune", "--days", days])
    assert refused.value.code == 2
    assert f"argument --days: retention must be a positive number of days, got '{days}'" in capsys.readouterr().err
    assert _rows(home) == before


def test_a_negative_retention_setting_is_refused_too(home, capsys, monkeypatch):
    monkeypatch.setenv("RISKENGINE_AUDIT_RETENTION_DAYS", "-5")
    before = _rows(home)
    assert main(["audit", "prune"]) == 2
    assert "retention must be a positive number of days, got -5.0" in capsys.readouterr().err
    assert _rows(home) == before


def test_prune_and_export_count_by_the_same_time(settings, monkeypatch, capsys, tmp_path):
    """A replayed event written today but dated 400 days ago is both exported as old and pruned as old."""
    monkeypatch.setenv("RISKENGINE_HOME", str(settings.home))
    _old_records(settings, 3, days_ago=400)
    _trail(settings)
    cutoff = datetime.now(timezone.utc) - timedelta(days=365)
    out = tmp_path / "old.jsonl"
    assert main(["audit", "export", "--until", iso(cutoff), "--out", str(out)]) == 0
    exported = [(r["chain"], r["seq"]) for r in map(json.loads, out.read_text().splitlines())]
    assert exported == [("main", 1), ("main", 2), ("main", 3)]
    assert main(["audit", "prune", "--days", "365"]) == 0
    assert "pruned 3 audit records" in capsys.readouterr().out
    assert [seq for seq, *_ in _rows(settings)][:1] == [4]           # exactly the exported ones went
    assert main(["audit", "export", "--until", iso(cutoff), "--out", str(out)]) == 0
    assert out.read_text() == ""


def test_export_into_a_closed_pipe_ends_quietly(home):
    """`riskengine audit export | head -1`: the reader goes away early; no BrokenPipe traceback."""
    _old_records(home, 400, days_ago=1)                  # ~200 KB of JSON lines: more than a pipe holds
    env = {**os.environ, "RISKENGINE_HOME": str(home.home)}
    process = subprocess.Popen([sys.executable, "-m", "riskengine", "audit", "export"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()                                # what `head -1` does after its line
    err = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=120) == 1
    assert json.loads(first)["kind"] == "policy"
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_retention_plan_keeps_a_contiguous_tail():
    def row(seq, written):
        body = {"chain": "c", "seq": seq, "at": iso(T0 + timedelta(days=written))}
        return AuditRow("c", seq, canonical(body), GENESIS, hashlib.sha256(b"x").hexdigest())

    rows = [row(1, 0), row(2, 1), row(3, 9), row(4, 2), row(5, 3)]    # a late-clocked writer at 3
    assert trail.retention_plan(rows, T0 + timedelta(days=5)) == {"c": 2}
    assert trail.retention_plan(rows[:2], T0 + timedelta(days=5)) == {"c": 1}       # never the last one


def test_the_service_prunes_on_start_when_retention_is_configured(settings):
    _old_records(settings, 3, days_ago=400)
    with TestClient(create_app(settings.model_copy(update={"audit_retention_days": 365.0}))):
        pass
    kinds = [json.loads(b)["kind"] for _, b, _, _ in _rows(settings)]
    assert kinds == ["policy", "retention"]                          # the 3 old records went, the start stayed
    with open_for_audit(settings) as engine:
        assert engine.verify_audit() == (2, 1, [])


def test_the_service_creates_its_keys_readable_only_by_its_owner(settings):
    with TestClient(create_app(settings)):
        pass
    for name in ("audit.key", "pseudonym.key"):
        assert Path(settings.var / name).stat().st_mode & 0o777 == 0o600


def test_canonical_is_json_dumps_with_sorted_keys_and_no_spaces():
    """The encoder built once writes what ``json.dumps`` with the same options writes, so every
    trail sealed before it still verifies."""
    import random

    leaves = [None, True, False, 0, -1, 2**70, 1.5, 1e300, float("nan"), float("inf"), -0.0, "",
              "a\x00\x1f\u2028é\ud800", '"\\/', [], {}, [1, "x"], {"b": 1, "a": {"z": [1.25, None]}}]
    rnd = random.Random(7)

    def body(depth: int = 0) -> dict:
        return {rnd.choice("abcdeé\x01"): rnd.choice(leaves) if depth > 2 or rnd.random() < .6 else body(depth + 1)
                for _ in range(rnd.randint(0, 6))}

    for _ in range(2000):
        sample = body()
        assert canonical(sample) == json.dumps(sample, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
