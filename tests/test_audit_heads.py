"""Anchors kept outside the store: `riskengine audit head` writes a head an auditor keeps, signed with
Ed25519 (`audit keygen`) or keyed with the audit key; `audit verify --head` fails when the trail was
emptied, truncated or rewritten since, even by someone holding the audit key; `--public-key` lets an
auditor check without any key that could forge. Offline tools never create keys."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from riskengine.audit.chain import GENESIS, HEAD, Anchor, canonical, seal
from riskengine.cli import main
from riskengine.settings import Settings
from riskengine.stores.redis import RedisStore
from tests.conftest import REDIS_URL
from tests.test_audit import _close_connections, _db, _trail  # noqa: F401 - _close_connections: autouse here too


@pytest.fixture
def home(settings, monkeypatch) -> Settings:
    monkeypatch.setenv("RISKENGINE_HOME", str(settings.home))
    _trail(settings)
    return settings


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _signed_head(home: Settings, capsys, tmp_path: Path) -> tuple[Path, Path]:
    code, out, _ = _run(capsys, "audit", "keygen", "--public-out", str(tmp_path / "auditor.pub"))
    assert code == 0 and "signing key" in out
    head = tmp_path / "head.json"
    code, out, _ = _run(capsys, "audit", "head", "--out", str(head))
    assert code == 0 and "9 records in 1 chain(s)), signed by Ed25519 key" in out, out
    return head, tmp_path / "auditor.pub"


def _rewrite_with_the_key(home: Settings, keep: int, edit: dict | None = None) -> None:
    """An insider holding the audit key rewrites the chain: keeps its first ``keep`` records,
    optionally edits record 2, re-seals everything and moves the store's head anchor."""
    key = (home.var / "audit.key").read_bytes()
    db = _db(home)
    rows = db.execute("SELECT seq, body FROM audit WHERE chain='main' ORDER BY seq").fetchall()
    db.execute("DELETE FROM audit WHERE seq > ?", (keep,))
    prev = GENESIS
    for seq, body in rows[:keep]:
        record = json.loads(body)
        if seq == 2 and edit:
            record.update(edit)
        digest = seal(prev, record, key)
        db.execute("UPDATE audit SET body=?, prev_hash=?, hash=? WHERE seq=?", (canonical(record), prev, digest, seq))
        prev = digest
    forged = Anchor.make(HEAD, "main", keep, prev, key)
    db.execute("UPDATE audit_anchors SET seq=?, hash=?, mac=? WHERE kind='head'", (keep, prev, forged.mac))


def test_a_head_verifies_while_the_trail_reaches_it(home, capsys, tmp_path):
    head, public = _signed_head(home, capsys, tmp_path)
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head))
    assert code == 0 and f"{head}: the trail reaches the head taken" in out and "audit trail OK: 9 records" in out
    _trail(home, days=1)                                          # the trail grows past the head: still fine
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(public))
    assert code == 0 and "audit trail OK: 11 records" in out, out


def test_an_emptied_trail_fails_against_the_head_file(home, capsys, tmp_path):
    head, public = _signed_head(home, capsys, tmp_path)
    _db(home).execute("DELETE FROM audit")
    _db(home).execute("DELETE FROM audit_anchors")
    code, out, _ = _run(capsys, "audit", "verify")
    assert code == 0 and "audit trail OK: 0 records" in out         # the store alone cannot tell
    for extra in ((), ("--public-key", str(public))):
        code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), *extra)
        assert code == 1, out
        assert (f"FAIL {head}: chain main: records 1..9 the head names are all missing "
                "(the trail was deleted or emptied)") in out


def test_a_truncated_trail_fails_even_when_the_store_anchor_was_moved_with_the_key(home, capsys, tmp_path):
    head, public = _signed_head(home, capsys, tmp_path)
    _rewrite_with_the_key(home, keep=7)
    code, out, _ = _run(capsys, "audit", "verify")
    assert code == 0 and "audit trail OK: 7 records" in out         # consistent: the key holder re-anchored it
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(public))
    assert code == 1 and (f"FAIL {head}: chain main: ends at record 7, short of record 9 the head names "
                          "(records 8..9 deleted: the trail has fewer records than the head)") in out, out


def test_a_record_rewritten_with_the_key_differs_from_the_head(home, capsys, tmp_path):
    head, public = _signed_head(home, capsys, tmp_path)
    _rewrite_with_the_key(home, keep=9, edit={"decision": "deny"})
    code, out, _ = _run(capsys, "audit", "verify")
    assert code == 0                                                # every seal is valid: re-made with the key
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(public))
    assert code == 1
    assert f"FAIL {head}: chain main: record 9 is not the one the head sealed (replaced)" in out
    assert f"FAIL {head}: chain main: records 1..9 differ from what the head sealed (edited)" in out


def test_a_tampered_signed_head_fails(home, capsys, tmp_path):
    head, public = _signed_head(home, capsys, tmp_path)
    document = json.loads(head.read_text())
    document["chains"]["main"]["seq"] = 7                       # claim a shorter trail, to hide a truncation
    head.write_text(json.dumps(document))
    for extra in ((), ("--public-key", str(public))):
        code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), *extra)
        assert code == 1 and f"FAIL {head}: the head's Ed25519 signature is not valid for public key" in out, out


def test_a_head_forged_without_the_private_key_fails(home, capsys, tmp_path, monkeypatch):
    """The attacker has the public key (and even the audit key), empties the trail and makes a new head."""
    head, public = _signed_head(home, capsys, tmp_path)
    genuine = json.loads(head.read_text())
    _db(home).execute("DELETE FROM audit")
    _db(home).execute("DELETE FROM audit_anchors")
    attacker_key = tmp_path / "attacker.key"
    monkeypatch.setenv("RISKENGINE_AUDIT_SIGNING_KEY_FILE", str(attacker_key))
    assert main(["audit", "keygen"]) == 0
    assert main(["audit", "head", "--out", str(head)]) == 0
    forged = json.loads(head.read_text())
    forged["signature"]["key_id"] = genuine["signature"]["key_id"]              # claim to be the real signer
    head.write_text(json.dumps(forged))
    attacker_key.unlink()
    hmac_head = tmp_path / "hmac-head.json"
    assert main(["audit", "head", "--out", str(hmac_head)]) == 0               # keyed with the audit key only
    capsys.readouterr()
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(public))
    assert code == 1 and "the head's Ed25519 signature is not valid for public key" in out, out
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(hmac_head), "--public-key", str(public))
    assert code == 1 and "the head is not signed with Ed25519 (hmac-sha256)" in out, out


def test_an_auditor_verifies_with_the_public_key_alone(home, capsys, tmp_path, monkeypatch):
    head, public = _signed_head(home, capsys, tmp_path)
    copy = tmp_path / "auditor-home"
    (copy / "var").mkdir(parents=True)
    shutil.copy(home.var / "profiles.db", copy / "var" / "profiles.db")           # the data, none of the keys
    monkeypatch.setenv("RISKENGINE_HOME", str(copy))
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(public))
    assert code == 0 and "seals not checked (no audit key)" in out and "audit trail OK: 9 records" in out, out
    assert sorted(p.name for p in (copy / "var").iterdir() if p.suffix in (".key", ".pub")) == []
    _db(Settings(home=copy)).execute("UPDATE audit SET body=replace(body, '\"allow\"', '\"deny\"') WHERE seq=3")
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(public))
    assert code == 1 and "records 1..9 differ from what the head sealed (edited)" in out, out
    code, _, err = _run(capsys, "audit", "verify", "--public-key", str(public))
    assert code == 2 and "give --head FILE too" in err


def test_a_head_keyed_with_the_audit_key_when_there_is_no_signing_key(home, capsys, tmp_path):
    head = tmp_path / "head.json"
    code, out, _ = _run(capsys, "audit", "head", "--out", str(head))
    assert code == 0 and "signed by the audit key" in out
    assert _run(capsys, "audit", "verify", "--head", str(head))[0] == 0
    _db(home).execute("DELETE FROM audit WHERE seq >= 8")
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head))
    assert code == 1 and f"FAIL {head}: chain main: ends at record 7" in out


@pytest.mark.parametrize("command", [["verify"], ["export"], ["prune", "--days", "30"], ["head", "--out", "h.json"]])
def test_a_missing_audit_key_is_an_error_and_no_key_is_made(home, capsys, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (home.var / "audit.key").unlink()
    code, out, err = _run(capsys, "audit", *command)
    assert code == 2 and "no key at" in err and "audit.key" in err and "never create keys" in err, (out, err)
    assert not (home.var / "audit.key").exists() and not (tmp_path / "h.json").exists()


def test_an_offline_tool_on_an_empty_home_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path / "nowhere"))
    code, _, err = _run(capsys, "audit", "verify")
    assert code == 2 and "no key at" in err
    assert not (tmp_path / "nowhere").exists()


def test_keygen_never_overwrites_and_bad_key_files_are_named(home, capsys, tmp_path):
    head, public = _signed_head(home, capsys, tmp_path)
    private = home.var / "audit-signing.key"
    assert private.stat().st_mode & 0o777 == 0o600
    before = private.read_bytes()
    code, _, err = _run(capsys, "audit", "keygen")
    assert code == 1 and "already exists" in err and private.read_bytes() == before
    not_a_key = tmp_path / "not-a-key.pub"
    not_a_key.write_text("ssh-ed25519 AAAA... someone@host\n")
    code, _, err = _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(not_a_key))
    assert code == 2 and f"{not_a_key}: not an Ed25519 public key in PEM" in err
    head.write_text('{"format": "riskengine-audit-head/1", "records": "nine"}')
    code, _, err = _run(capsys, "audit", "verify", "--head", str(head))
    assert code == 2 and f"{head}: not a riskengine audit head file" in err and "Traceback" not in err


def test_a_head_taken_before_retention_still_verifies(home, capsys, tmp_path):
    from datetime import datetime, timedelta, timezone

    from riskengine.home import open_for_audit

    head, public = _signed_head(home, capsys, tmp_path)
    with open_for_audit(home) as engine:
        assert engine.prune_audit(30, now=datetime.now(timezone.utc) + timedelta(days=31)) == 8
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(public))
    assert code == 0 and "audit trail OK: 2 records" in out, out


def test_an_emptied_redis_trail_fails_against_the_head_file(settings, capsys, tmp_path, monkeypatch):
    prefix = f"test-heads-{uuid.uuid4().hex[:12]}:"
    redis_home = settings.model_copy(update={"store": REDIS_URL, "redis_prefix": prefix})
    for name, value in (("RISKENGINE_HOME", settings.home), ("RISKENGINE_STORE", REDIS_URL),
                        ("RISKENGINE_REDIS_PREFIX", prefix)):
        monkeypatch.setenv(name, str(value))
    store = RedisStore(REDIS_URL, prefix=prefix)
    try:
        _trail(redis_home)
        head, public = _signed_head(redis_home, capsys, tmp_path)
        assert _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(public))[0] == 0
        store.clear()                                               # every audit record and anchor of the prefix
        code, out, _ = _run(capsys, "audit", "verify")
        assert code == 0 and "audit trail OK: 0 records" in out
        code, out, _ = _run(capsys, "audit", "verify", "--head", str(head), "--public-key", str(public))
        assert code == 1 and f"FAIL {head}: chain " in out and "are all missing (the trail was deleted or emptied)" \
            in out, out
    finally:
        store.clear()
        store.close()


def test_a_signed_head_without_a_key_to_check_it_asks_for_the_public_key(home, capsys, tmp_path):
    head, _ = _signed_head(home, capsys, tmp_path)
    (home.var / "audit-signing.key").unlink()                     # checked on another machine than it was made
    code, out, _ = _run(capsys, "audit", "verify", "--head", str(head))
    assert code == 1 and f"FAIL {head}: the head is signed with Ed25519: give --public-key" in out, out
