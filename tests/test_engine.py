"""The engine's one path: the service, training and what-if decide through ``Engine.record`` (that
training sees what the service recorded: test_model.py's ``test_backfill_equals_serving``); a
user's events are decided in turn; a writer elsewhere means deciding again; a repeated id is
answered from the record; nothing public on the engine is left without a caller."""

from __future__ import annotations

import ast
import asyncio
from datetime import timedelta
from pathlib import Path

import uuid
from dataclasses import replace

import pytest

from riskengine.engine import Engine, EventIdTaken
from riskengine.enrich import Enricher
from riskengine.events import SessionInfo
from riskengine.stores import SQLiteStore, memory_store, open_store
from riskengine.stores.batching import Batched
from riskengine.stores.cached import CachedStore
from tests.conftest import REDIS_URL, T0, event

ROOT = Path(__file__).resolve().parents[1] / "riskengine"


def test_a_users_events_sent_at_once_are_decided_in_turn(enricher):
    """Twenty logins of one user in flight together: each is decided on the profile the one before left."""
    engine = Engine(memory_store(), enricher)

    async def burst():
        return await asyncio.gather(*(engine.record(event(n, at=T0 + timedelta(minutes=n))) for n in range(20)))

    scored = asyncio.run(burst())
    assert [s.signals.values["history_logins"] for s in scored] == list(range(20))
    assert engine.store.get("alice").events == 20


def test_a_user_moved_on_by_another_process_is_decided_again_on_the_fresh_profile(tmp_path):
    """Two engines over one SQLite file, each with its own cache (two processes): the stale one's
    commit conflicts, and its retry decides on the profile the other wrote."""
    path = tmp_path / "profiles.db"
    here, there = (Engine(CachedStore(Batched(SQLiteStore(path), None)), Enricher(), pseudonym_key=b"k" * 32)
                   for _ in range(2))                     # their own enrichers: closing an engine closes its own
    decided: list[int] = []
    decide = here._decide
    here._decide = lambda *args: decided.append(1) or decide(*args)          # type: ignore[method-assign]
    asyncio.run(here.record(event(0, at=T0)))                # here caches alice at version 1
    asyncio.run(there.record(event(1, at=T0 + timedelta(minutes=1))))
    scored = asyncio.run(here.record(event(2, at=T0 + timedelta(minutes=2))))
    assert len(decided) == 3                                  # event 2 was decided twice: stale, then fresh
    assert scored.signals.values["history_logins"] == 2       # on the profile holding both earlier events
    assert there.store.inner.get("alice").events == 3
    here.close(), there.close()


def test_a_repeated_event_id_gets_the_first_answer_and_counts_once(enricher):
    """A retry (the same event; an app may stamp its time anew) is answered from the record."""
    engine = Engine(memory_store(), enricher)
    first = asyncio.run(engine.score(event(0, at=T0)))
    again = asyncio.run(engine.score(event(0, at=T0 + timedelta(hours=5))))
    assert again == first
    assert engine.store.get("alice").events == 1


def test_an_event_id_reused_for_another_event_is_refused_naming_what_differs(enricher):
    """Answering a different body with the record would let it skip being scored: an allowed login's
    id on a payment from another country would be allowed too."""
    engine = Engine(memory_store(), enricher)
    asyncio.run(engine.score(event(0, at=T0)))
    with pytest.raises(EventIdTaken) as taken:
        asyncio.run(engine.score(event(0, action="payment", at=T0, ip="8.8.8.8", amount=50_000.0, currency="EUR")))
    assert taken.value.changed == ["action", "amount", "currency", "ip"]
    with pytest.raises(EventIdTaken) as other_user:
        asyncio.run(engine.score(replace(event(0, at=T0), user_id="bob")))
    assert other_user.value.changed == ["user_id"] and "alice" not in str(other_user.value)
    assert engine.store.get("alice").events == 1 and engine.store.get("bob").events == 0


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_a_retry_of_a_payment_with_every_field_is_recognised_on_every_store(kind, tmp_path):
    """What a store gives back (JSON: floats, the largest integers, the session, attributes) equals
    the retry, so a true retry is never refused."""
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/profiles.db", "redis": REDIS_URL}[kind]
    options = {"prefix": f"test-{uuid.uuid4().hex[:12]}:"} if kind == "redis" else {}
    store = open_store(url, audit_key=b"a" * 32, **options)
    engine = Engine(store, Enricher(), pseudonym_key=b"k" * 32)     # its own: closing the engine closes it
    payment = replace(event("pay-1", action="payment", at=T0, amount=112.99, currency="EUR"),
                      payee_id="payee-1", device_id="laptop-1", user_agent="Mozilla/5.0 (X11; Linux x86_64)",
                      session=SessionInfo(acr="aal2", auth_time=T0 - timedelta(minutes=3), id="s-1"),
                      attributes={"max": 2**63 - 1, "min": -(2**63), "f": 1.5e300, "tier": "gold", "vip": True},
                      factors=("totp",))
    try:
        first = asyncio.run(engine.score(payment))
        assert asyncio.run(engine.score(replace(payment, timestamp=T0 + timedelta(seconds=30)))) == first
        with pytest.raises(EventIdTaken):
            asyncio.run(engine.score(replace(payment, attributes={**payment.attributes, "max": 2**63 - 2})))
    finally:
        store.clear()
        engine.close()


def test_every_public_engine_method_has_a_caller_outside_the_engine():
    """No dead entry points: each public method of ``Engine`` is used by the service, a tool or the lab."""
    tree = ast.parse((ROOT / "engine.py").read_text())
    engine = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine")
    public = {f.name for f in engine.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              and not f.name.startswith("_")}
    used: set[str] = set()
    for path in ROOT.rglob("*.py"):
        if path.name == "engine.py" and path.parent == ROOT:
            continue
        used |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
    assert public - used == set()
