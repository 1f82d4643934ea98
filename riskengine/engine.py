"""The one place the whole flow is written down: event -> enrich -> profile ->
features -> score -> decide -> record. HTTP, CLI, training and tests all call it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from riskengine import profiles
from riskengine.audit import pseudonym
from riskengine.enrich import EnrichedEvent, Enricher
from riskengine.events import Event, event_from_request, event_to_request, format_timestamp
from riskengine.features import BY_NAME, Context, Signals, extract
from riskengine.model import Score, Scorer, StatisticalScorer, TrainedScorer
from riskengine.policy import Decision, Policy, Reason
from riskengine.registry import ChampionWatcher, ModelRegistry, ModelVersion
from riskengine.settings import Settings
from riskengine.stores import Commit, Conflict, DuplicateEvent, ProfileStore, StoredEvent, open_store

log = logging.getLogger("riskengine")
OUTCOMES = ("step_up_passed", "step_up_failed", "confirmed_fraud", "confirmed_legit")
MAX_REASONS = 5
_RETRIES = 20


@dataclass(slots=True)
class Scored:
    """Everything one pass computed; training keeps the signals, the service the decision."""

    enriched: EnrichedEvent
    signals: Signals
    score: Score
    decision: Decision
    learned: bool


def reasons_from(score: Score, signals: Signals) -> tuple[Reason, ...]:
    """The strongest positive contributions, as shares of all that pushed the risk up."""
    positive = sorted(((w, n) for n, w in score.contributions.items()
                       if w > 0 and BY_NAME[n].applies(signals.values[n])), reverse=True)
    total = sum(w for w, _ in positive) or 1.0
    return tuple(Reason(BY_NAME[n].code, signals.message(n), w / total) for w, n in positive[:MAX_REASONS])


class Engine:
    """Plain-Python core. Thread-safe as long as the store is."""

    def __init__(self, store: ProfileStore, enricher: Enricher, scorer: Scorer | None = None,
                 policy: Policy | None = None, retention_days: float = 180.0,
                 pseudonym_key: bytes | None = None, record: bool = True) -> None:
        self.store = store
        self.record = record                      # False: training backfills keep no events or audit
        self.model_error: str | None = None
        self._watcher: ChampionWatcher | None = None
        self.enricher = enricher
        self.scorer: Scorer = scorer or StatisticalScorer()
        self.policy = policy or Policy()
        self.retention_s = retention_days * profiles.DAY
        self._key = pseudonym_key or os.urandom(32)

    @classmethod
    def open(cls, settings: Settings, scorer: Scorer | None = None) -> "Engine":
        settings.var.mkdir(parents=True, exist_ok=True)
        options = {"synchronous": settings.sqlite_synchronous} if settings.store.startswith("sqlite") else {}
        store = open_store(settings.store, settings.home, **options)
        enricher = Enricher(settings.geoip_city_db, settings.geoip_asn_db)
        key = _load_key(settings.pseudonym_key_file or settings.var / "pseudonym.key")
        engine = cls(store, enricher, scorer, Policy(), settings.retention_days, key)
        if scorer is None:
            engine.watch_models(ModelRegistry(settings.models))
        return engine

    def watch_models(self, registry: ModelRegistry, interval: float = 1.0) -> None:
        """Serve the registry's champion now, and each newly promoted one without a restart."""
        self._watcher = ChampionWatcher(registry, self._use_model, self._model_refused, interval)
        self._watcher.check()
        self._watcher.start()

    def _use_model(self, model: Any, entry: ModelVersion) -> None:
        self.scorer = TrainedScorer(model, entry.version)       # one reference swap: in-flight requests keep theirs
        self.model_error = None
        log.info("serving model %s", entry.version)
        self.store.append_audit({"kind": "model", "at": format_timestamp(_now()),
                                 "recorded_at": format_timestamp(_now()), "model_version": entry.version,
                                 "sha256": entry.metadata.get("sha256")})

    def _model_refused(self, reason: str) -> None:
        self.model_error = reason
        log.error("model refused, keeping %s: %s", self.scorer.version, reason)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self.store.close()
        self.enricher.close()

    # -- the flow ---------------------------------------------------------
    def evaluate(self, event: Event) -> Scored:
        """Enrich, read the profile as it was, extract, score and decide; no state changes."""
        enriched = self.enricher.enrich(event)
        profile = self.store.get(event.user_id)
        values = profiles.attribute_values(enriched)
        context = Context(self.store.ip_activity(event.ip, event.ts), self.store.global_counts(values))
        signals = extract(enriched, profile, context)
        score = self.scorer.score(signals)
        decision = self.policy.decide(event, score.risk, reasons_from(score, signals), score.model_version)
        learn = event.success and decision.decision != "deny" and decision.risk_level == "low"
        return Scored(enriched, signals, score, decision, learn)

    def score(self, event: Event, client: str = "local") -> Decision:
        """Score and record one event; a repeated ``event_id`` returns the stored answer."""
        if (earlier := self.store.find_event(event.event_id)) is not None:
            return Decision.from_dict(earlier.decision)
        return self.score_and_record(event, client).decision

    def score_and_record(self, event: Event, client: str = "local") -> Scored:
        for _ in range(_RETRIES):
            scored = self.evaluate(event)
            profile = self.store.get(event.user_id)
            try:
                self.store.commit(self._commit(event, scored, profile, client))
                return scored
            except Conflict:
                continue                          # another writer moved this user on: recompute
            except DuplicateEvent:
                earlier = self.store.find_event(event.event_id)
                return Scored(scored.enriched, scored.signals, scored.score,
                              Decision.from_dict(earlier.decision), False)
        raise Conflict(f"gave up after {_RETRIES} concurrent updates of one user")

    def _commit(self, event: Event, scored: Scored, profile: profiles.UserProfile, client: str) -> Commit:
        if scored.learned:
            new = profiles.learned(profile, scored.enriched, self.retention_s)
            learned_values = profiles.attribute_values(scored.enriched)
        elif event.action == "login" and not event.success:
            new, learned_values = profiles.failed(profile, scored.enriched, self.retention_s), {}
        else:
            new, learned_values = None, {}
        if not self.record:
            return Commit(event.user_id, profile.version, new, event.ip, self.user_key(event.user_id), event.ts,
                          event.success or event.action != "login", learned_values)
        decision = scored.decision.to_dict()
        stored = StoredEvent(event.event_id, event.user_id, event.ts, event_to_request(event), decision,
                             scored.signals.values)
        audit = {"kind": "score", **self._audit_head(event.user_id, client, event.timestamp),
                 "event_id": event.event_id, "action": event.action,
                 "risk_score": decision["risk_score"], "risk_level": decision["risk_level"],
                 "reasons": [r["code"] for r in decision["reasons"]], "decision": decision["decision"],
                 "required_acr": decision["required_acr"], "exemption": decision["exemption"],
                 "model_version": decision["model_version"], "policy_version": decision["policy_version"]}
        return Commit(event.user_id, profile.version, new, event.ip, self.user_key(event.user_id), event.ts,
                      event.success or event.action != "login", learned_values, stored, audit)

    # -- outcomes, erasure ------------------------------------------------
    def feedback(self, event_id: str, outcome: str, client: str = "local") -> bool:
        """Label an event; a passed step-up teaches and trusts its device and place."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        stored = self.store.find_event(event_id)
        if stored is None:
            return False
        if stored.outcome == outcome:
            return True                           # a retried feedback changes nothing
        if outcome == "step_up_passed":
            event = event_from_request(stored.request)
            learned_already = (event.success and stored.decision["decision"] != "deny"
                               and stored.decision["risk_level"] == "low")
            self.apply_step_up(event, learn=not learned_already)
        audit = {"kind": "feedback", **self._audit_head(stored.user_id, client, _now()),
                 "event_id": event_id, "outcome": outcome}
        return self.store.record_outcome(event_id, outcome, audit)

    def apply_step_up(self, event: Event, learn: bool) -> None:
        """The user proved it was them: remember this event (if not yet) and trust its device and place."""
        enriched = self.enricher.enrich(event)
        for _ in range(_RETRIES):
            profile = self.store.get(event.user_id)
            new = profiles.learned(profile, enriched, self.retention_s) if learn else profile
            new = profiles.trusted(new, enriched, event.ts)
            try:
                self.store.update_profile(event.user_id, profile.version, new,
                                          profiles.attribute_values(enriched) if learn else {}, None)
                return
            except Conflict:
                continue
        raise Conflict(f"gave up after {_RETRIES} concurrent updates of one user")

    def erase(self, user_id: str, client: str = "local") -> bool:
        """GDPR Art. 17: drop the profile, events and the user's pseudonym key; the trail stays valid."""
        audit = {"kind": "erasure", **self._audit_head(user_id, client, _now())}
        return self.store.erase_user(user_id, self.user_key(user_id), audit)

    # -- pseudonyms -------------------------------------------------------
    def user_key(self, user_id: str) -> str:
        """Keyed hash of a user id: indexes per-user secrets and per-IP distinct-user counts."""
        return hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()[:32]

    def subject(self, user_id: str) -> str:
        secret = self.store.user_secret(user_id, self.user_key(user_id), create=True)
        return pseudonym(secret, user_id)

    def _audit_head(self, user_id: str, client: str, at: datetime) -> dict[str, Any]:
        return {"at": format_timestamp(at), "recorded_at": format_timestamp(_now()), "client": client,
                "subject": self.subject(user_id)}

    def health(self) -> dict[str, Any]:
        self.store.ping()
        health = {"status": "ok", "model_version": self.scorer.version, "policy_version": self.policy.version}
        if self.model_error:
            health["model_error"] = self.model_error
        return health


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _load_key(path: Path) -> bytes:
    """The service's pseudonymisation key: created once, readable only by its owner."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
    finally:
        os.close(fd)
    return path.read_bytes()
