"""Per-API-key rate limits: over the limit is 429 with Retry-After, does no work, and spares other keys."""

from __future__ import annotations

from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.api.ratelimit import TokenBucket
from riskengine.engine import Engine
from riskengine.home import open_engine
from riskengine.settings import Settings
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, T0, iso

BURST = 3


def body(n: int, user: str = "alice") -> dict:
    return {"event_id": f"rl-{user}-{n}", "user_id": user, "action": "login", "ip": OSLO_IP,
            "user_agent": CHROME_WIN, "device_id": "laptop-1", "timestamp": iso(T0)}


def limited(settings: Settings) -> tuple[TestClient, Engine]:
    # 0.001 tokens a second: nothing refills while the test runs
    tight = settings.model_copy(update={"rate_limit_per_second": 0.001, "rate_limit_burst": BURST})
    engine = open_engine(tight)
    return TestClient(create_app(tight, engine=engine)), engine


def test_over_the_limit_is_429_with_retry_after_and_changes_nothing(settings: Settings) -> None:
    client, engine = limited(settings)
    with client:
        mine = {"Authorization": f"Bearer {API_KEY}"}
        for n in range(BURST):
            assert client.post("/score", json=body(n), headers=mine).status_code == 200
        audit_before = len(list(engine.store.audit_rows()))
        profile_before = engine.store.get("alice")

        refused = client.post("/score", json=body(BURST), headers=mine)

        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "rate limit" in refused.json()["detail"]
        assert engine.store.find_event(f"rl-alice-{BURST}") is None
        assert len(list(engine.store.audit_rows())) == audit_before
        assert engine.store.get("alice").version == profile_before.version
        # refused before the body is read: a malformed body gets 429 too, not 422
        assert client.post("/score", content=b"{not json", headers=mine).status_code == 429
        # another client's key has its own bucket
        theirs = {"Authorization": "Bearer second-key"}
        assert client.post("/score", json=body(0, "bob"), headers=theirs).status_code == 200
        scraped = client.get("/metrics", headers=theirs).text
        assert 'riskengine_rate_limited_total{client="tests"}' in scraped
        # unknown keys are not rate limited but refused as before; /health needs no key and is not limited
        assert client.post("/score", json=body(9), headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/health").status_code == 200


def test_zero_disables_the_limit(settings: Settings) -> None:
    off = settings.model_copy(update={"rate_limit_per_second": 0.0, "rate_limit_burst": 1})
    with TestClient(create_app(off)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        assert [client.get("/metrics").status_code for _ in range(5)] == [200] * 5


def test_the_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10.0, burst=2.0, clock=lambda: now[0])
    assert (bucket.take(), bucket.take()) == (0.0, 0.0)
    assert abs(bucket.take() - 0.1) < 1e-9          # one token comes back in 1/10 s
    now[0] = 0.05
    assert abs(bucket.take() - 0.05) < 1e-9
    now[0] = 0.1
    assert bucket.take() == 0.0
    now[0] = 100.0                                  # a long pause refills only up to the burst
    assert [bucket.take() for _ in range(3)][:2] == [0.0, 0.0] and bucket.tokens < 1.0
