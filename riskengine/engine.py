"""The one place the whole flow is written down: event -> enrich -> profile ->
features -> score -> decide -> record. HTTP, CLI, training and tests all call it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from riskengine import profiles
from riskengine.audit import trail
from riskengine.audit.chain import Problem, pseudonym, verify
from riskengine.enrich import EnrichedEvent, Enricher
from riskengine.events import (DEFAULT_TENANT, Event, event_from_request, event_to_request, format_timestamp,
                               tenant_key, tenant_of)
from riskengine.features import BY_NAME, USER_MESSAGES, Context, Signals, extract
from riskengine.scoring.model import Score, Scorer, StatisticalScorer, TrainedScorer
from riskengine.policy.decide import Decision, Policy, Reason, Seen
from riskengine.policy.file import PolicyWatcher, load_policy, resolve
from riskengine.scoring.registry import ChampionWatcher, ModelRegistry, ModelVersion
from riskengine.settings import Settings
from riskengine.signals.recorded import Recorded
from riskengine.stores import (Commit, Conflict, DuplicateEvent, ProfileStore, StoredEvent, StoreUnavailable,
                               open_store)

log = logging.getLogger("riskengine")
OUTCOMES = ("step_up_passed", "step_up_failed", "confirmed_fraud", "confirmed_legit")
MAX_REASONS = 5
_RETRIES = 20
_LOCK_STRIPES = 256
_USER_KEYS_KEPT = 100_000


class ScoreUnavailable(Exception):
    """No risk could be computed and the action's policy says answer 503 (``on_failure: unavailable``)."""


@dataclass(slots=True)
class Scored:
    """Everything one pass computed; training keeps the signals, the service the decision."""

    enriched: EnrichedEvent
    signals: Signals
    score: Score
    decision: Decision
    learned: bool
    profile: profiles.UserProfile | None = None     # the profile the decision saw: the commit expects its version
    policy: Policy | None = None                    # the policy that decided (a reload may swap it meanwhile)
    values: dict[str, str] = field(default_factory=dict)   # its Freeman attribute values (what it teaches)


class _Read(NamedTuple):
    """What ``evaluate`` reads before the store's context: the policy serving, the event, the profile."""

    policy: Policy
    enriched: EnrichedEvent
    profile: profiles.UserProfile
    values: dict[str, str]


def learns(success: bool, decision: str, risk_level: str) -> bool:
    """Does an event teach the profile when scored? Only a successful, low-risk, not denied one;
    anything riskier is learned when its step-up is passed (``feedback``)."""
    return success and decision != "deny" and risk_level == "low"


def reasons_from(score: Score, signals: Signals) -> tuple[Reason, ...]:
    """The strongest positive contributions, as shares of all that pushed the risk up."""
    positive = sorted(((w, n) for n, w in score.contributions.items()
                       if w > 0 and BY_NAME[n].applies(signals.values[n])), reverse=True)
    total = sum(w for w, _ in positive) or 1.0
    return tuple(Reason(BY_NAME[n].code, signals.message(n), w / total, USER_MESSAGES[BY_NAME[n].code])
                 for w, n in positive[:MAX_REASONS])


class Engine:
    """Plain-Python core. Thread-safe as long as the store is."""

    def __init__(self, store: ProfileStore, enricher: Enricher, scorer: Scorer | None = None,
                 policy: Policy | None = None, retention_days: float = 180.0,
                 pseudonym_key: bytes | None = None, record: bool = True, audit_key: bytes | None = None,
                 fraud_rate_cache_s: float = 60.0) -> None:
        self.store = store
        self.record = record                      # False: training backfills keep no events or audit
        self.model_error: str | None = None
        self._watcher: ChampionWatcher | None = None
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._user_keys: dict[str, str] = {}
        self._turns: dict[str, asyncio.Future] = {}   # user id -> its latest event still deciding on the loop
        self.enricher = enricher
        self.scorer: Scorer = scorer or StatisticalScorer()
        self.policy = policy or Policy()
        self.retention_s = retention_days * profiles.DAY
        self._key = pseudonym_key or os.urandom(32)
        self.audit_key = audit_key                # what ``verify_audit`` checks seals with (the store seals)
        self.policy_error: str | None = None
        self._policy_watcher: PolicyWatcher | None = None
        self.fraud_rate_cache_s = fraud_rate_cache_s
        self._fraud_rates: dict[tuple, tuple[float, float | None]] = {}
        self.listeners: list[Callable[[Recorded], None]] = []   # told after a durable record (signals/)
        self.share_ip_stats = False               # True: per-IP and population statistics span tenants

    @classmethod
    def open(cls, settings: Settings, scorer: Scorer | None = None) -> "Engine":
        settings.var.mkdir(parents=True, exist_ok=True)
        policy_path = resolve(settings.policy)
        policy = load_policy(policy_path)             # a broken file stops the start, naming what is wrong
        store, audit_key = _open_store(settings)
        enricher = Enricher(settings.geoip_city_db, settings.geoip_asn_db, settings.lists)
        key = _load_key(settings.pseudonym_key_file or settings.var / "pseudonym.key")
        engine = cls(store, enricher, scorer, policy, settings.retention_days, key, audit_key=audit_key,
                     fraud_rate_cache_s=settings.fraud_rate_cache_s)
        engine.share_ip_stats = settings.share_ip_stats
        engine.use_policy(policy, "load")
        if settings.policy is not None:
            engine.watch_policy(policy_path, settings.policy_check_interval)
        if settings.audit_retention_days is not None:
            engine.prune_audit(settings.audit_retention_days)
        if scorer is None:
            engine.watch_models(ModelRegistry.open(settings))
        return engine

    @classmethod
    def for_audit(cls, settings: Settings, keys: bool = True) -> "Engine":
        """An existing home's engine for offline tools (audit, training on recorded events):
        no policy file, no model, nothing recorded on open. Offline tools never create keys: a
        missing one is an error (``MissingKey``). ``keys=False`` (an auditor holding only a public
        key) reads the trail without them: the seals cannot be checked."""
        store, audit_key = _open_store(settings, create_keys=False, audit_key=keys)
        key = _load_key(settings.pseudonym_key_file or settings.var / "pseudonym.key", create=False) if keys else None
        return cls(store, Enricher(settings.geoip_city_db, settings.geoip_asn_db), StatisticalScorer(), Policy(),
                   settings.retention_days, key, audit_key=audit_key)

    def watch_models(self, registry: ModelRegistry, interval: float = 1.0) -> None:
        """Serve the registry's champion now, and each newly promoted one without a restart."""
        self._watcher = ChampionWatcher(registry, self._use_model, self._model_refused, interval)
        self._watcher.check()
        self._watcher.start()

    def _use_model(self, model: Any, entry: ModelVersion) -> None:
        self.scorer = TrainedScorer.loaded(model, entry)       # one reference swap: in-flight requests keep theirs
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
        self._policy_watcher = None
        self.store.close()
        self.enricher.close()

    # -- the flow ---------------------------------------------------------
    def evaluate(self, event: Event) -> Scored:
        """Enrich, read the profile as it was, extract, score and decide; no state changes.

        A scorer that fails gets the policy's ``on_failure`` answer for the action (or
        ``ScoreUnavailable``: a 503); an unreachable store raises ``StoreUnavailable``.
        """
        read = self._read(event)
        context = self.store.context(self._stats(event, event.ip), event.ts, read.values)
        return self._decide(event, read, Context(*context))

    async def _evaluate_async(self, event: Event) -> Scored:
        """``evaluate`` with the store's context read awaited (made with the rest of this loop turn's)."""
        read = self._read(event, await self.store.get_async(event.user_id))     # read off the loop (stores)
        if self.record:                                  # the audit head's secret: cached for _commit (stores)
            await self.store.user_secret_async(event.user_id, self.user_key(event.user_id), True)
        context = await self.store.context_async(self._stats(event, event.ip), event.ts, read.values)
        return self._decide(event, read, Context(*context))

    def _read(self, event: Event, profile: profiles.UserProfile | None = None) -> _Read:
        if self._policy_watcher is not None:
            self._policy_watcher.poll()                  # a changed policy file: at most one stat a second
        enriched = self.enricher.enrich(event)
        profile = profile if profile is not None else self.store.get(event.user_id)
        return _Read(self.policy, enriched, profile, self._values(event, enriched))

    def _stats(self, event: Event, value: str) -> str:
        """The key of a per-IP or population statistic: the event's tenant's own, unless shared."""
        return value if self.share_ip_stats else tenant_key(event.tenant, value)

    def _values(self, event: Event, enriched: EnrichedEvent) -> dict[str, str]:
        values = profiles.attribute_values(enriched)
        tenant = event.tenant
        if self.share_ip_stats or tenant == DEFAULT_TENANT:
            return values
        return {name: tenant_key(tenant, value) for name, value in values.items()}

    def _decide(self, event: Event, read: _Read, context: Context) -> Scored:
        policy, enriched, profile, values = read
        signals = extract(enriched, profile, context)
        scorer = self.scorer
        try:
            score = scorer.score(signals)
        except Exception as exc:                         # the model, not the client, failed: never a 500 or a guess
            log.error("risk score failed (%s); answering the policy's on_failure", type(exc).__name__)
            decision = policy.on_failure(event, "score_unavailable", "the risk score could not be computed",
                                         scorer.version)
            if decision is None:
                raise ScoreUnavailable("the risk score could not be computed") from exc
            return Scored(enriched, signals, Score(decision.risk_score, {}, scorer.version), decision, False,
                          profile, policy)
        seen = Seen(enriched.geo.country, enriched.geo.asn, enriched.lists,
                    self.enricher.lists.current.roles(enriched.lists))
        decision = policy.decide(event, score.risk, reasons_from(score, signals), score.model_version,
                                 profile=profile, fraud_rate=self.fraud_rate, seen=seen)
        learn = learns(event.success, decision.decision, decision.risk_level)
        return Scored(enriched, signals, score, decision, learn, profile, policy, values)

    def score(self, event: Event, client: str = "local") -> Decision:
        """Score and record one event; a repeated ``event_id`` returns the stored answer.

        With the store unreachable, the answer is the action's ``on_failure`` (not recorded, so the API sends it
        with a 503) or, for ``unavailable``, the ``StoreUnavailable`` 503.
        """
        try:
            return self.score_and_record(event, client).decision     # a repeated id: the store says so
        except StoreUnavailable as exc:
            return self._unrecorded(event, exc)

    async def score_async(self, event: Event, client: str = "local") -> Decision:
        """``score`` on an event loop (the service): the pure work runs here, with no thread hop per
        request; the commit goes in a group with the rest of this loop turn's (group.py), and is awaited."""
        try:
            for attempt in range(_RETRIES):
                scored, committed = await self._decide_in_turn(event, client)
                try:
                    await committed
                    self._tell(event, scored.decision)
                    return scored.decision
                except Conflict:
                    if attempt:
                        await asyncio.sleep(_back_off_s(attempt))
                except DuplicateEvent:
                    return self._earlier(event, scored).decision
            raise Conflict(f"gave up after {_RETRIES} concurrent updates of one user")
        except StoreUnavailable as exc:
            return self._unrecorded(event, exc)

    async def _decide_in_turn(self, event: Event, client: str) -> tuple[Scored, Awaitable[None]]:
        """Decide and queue the commit, in turn with the user's other events on this loop: each is
        decided on the profile the one before queued, though the store's read is awaited between."""
        user_id = event.user_id
        before, mine = self._turns.get(user_id), asyncio.get_running_loop().create_future()
        self._turns[user_id] = mine
        try:
            if before is not None and not before.done():
                await before
            scored = await self._evaluate_async(event)
            return scored, self.store.submit_async(self._commit(event, scored, client))
        finally:
            if not mine.done():
                mine.set_result(None)
            if self._turns.get(user_id) is mine:
                del self._turns[user_id]

    def _unrecorded(self, event: Event, exc: StoreUnavailable) -> Decision:
        decision = self.policy.on_failure(event, "store_unavailable", "the profile store could not be reached",
                                          self.scorer.version)
        if decision is None:
            raise exc
        log.error("profile store unavailable: answering %s without recording", decision.decision)
        return decision

    def score_and_record(self, event: Event, client: str = "local") -> Scored:
        with self._user_lock(event.user_id):
            return self._score_and_record(event, client)

    def _user_lock(self, user_id: str) -> threading.Lock:
        """Threads of one process take turns per user (striped locks), so only writers in
        other processes can race; those the version check turns into a retry."""
        return self._locks[hash(user_id) % len(self._locks)]

    def _score_and_record(self, event: Event, client: str) -> Scored:
        for attempt in range(_RETRIES):
            scored = self.evaluate(event)
            try:
                self.store.commit(self._commit(event, scored, client))
                return scored
            except Conflict:
                if attempt:                       # another writer moved this user on: decide again
                    time.sleep(_back_off_s(attempt))
            except DuplicateEvent:
                return self._earlier(event, scored)
        raise Conflict(f"gave up after {_RETRIES} concurrent updates of one user")

    def _earlier(self, event: Event, scored: Scored) -> Scored:
        """A repeated event id: the answer is the one recorded the first time."""
        earlier = self.store.find_event(event.event_id)
        if earlier is None:
            raise StoreUnavailable("a recorded event could not be read back")
        return Scored(scored.enriched, scored.signals, scored.score, Decision.from_dict(earlier.decision), False,
                      scored.profile, scored.policy)

    def _commit(self, event: Event, scored: Scored, client: str) -> Commit:
        """What the event changes, conditional on the profile version its decision read."""
        profile = scored.profile
        assert profile is not None
        now = _now().timestamp() if self.record else None     # live: no claimed time prunes past the clock
        if scored.learned:
            new = profiles.learned(profile, scored.enriched, self.retention_s, now)
            learned_values = scored.values
        elif event.action == "login" and not event.success:
            new, learned_values = profiles.failed(profile, scored.enriched, self.retention_s, now), {}
        else:
            new, learned_values = None, {}
        if (opened := profiles.decided(new or profile, scored.enriched, scored.decision.decision)) is not (new or profile):
            new = opened                          # a sign-in opened a session, or a session's pace moved
        counted = (scored.policy or self.policy).after(new or profile, event, scored.decision)
        if counted is not None:
            new = counted                         # PSD2 counters since the last SCA moved
        if not self.record:
            return Commit(event.user_id, profile.version, new, self._stats(event, event.ip),
                          self.user_key(event.user_id), event.ts, event.success or event.action != "login",
                          learned_values)
        decision = scored.decision.to_dict()
        stored = StoredEvent(event.event_id, event.user_id, event.ts, event_to_request(event), decision,
                             scored.signals.values)
        audit = {"kind": "score", **self._audit_head(event.user_id, client, event.timestamp, event.event_id),
                 "action": event.action, "risk_score": decision["risk_score"], "risk_level": decision["risk_level"],
                 "reasons": [r["code"] for r in decision["reasons"]], "decision": decision["decision"],
                 "required_acr": decision["required_acr"], "max_age": decision["max_age"],
                 "exemption": decision["exemption"], "amr": decision["amr"],
                 "shadowed": decision["shadow_decision"] is not None,
                 "model_version": decision["model_version"], "policy_version": decision["policy_version"]}
        if decision["shadow_decision"] is not None:
            audit["shadow_decision"] = decision["shadow_decision"]
        for name in ("failure", "rule", "fallback"):     # the policy rule that decided; a step-up fallback
            if decision[name] is not None:
                audit[name] = decision[name]
        return Commit(event.user_id, profile.version, new, self._stats(event, event.ip), self.user_key(event.user_id),
                      event.ts, event.success or event.action != "login", learned_values, stored, audit)

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
            learned_already = learns(event.success, stored.decision["decision"], stored.decision["risk_level"])
            self.apply_step_up(event, learn=not learned_already, required_acr=stored.decision.get("required_acr"))
        elif outcome == "step_up_failed":
            self.fail_step_up(event_from_request(stored.request))
        audit = {"kind": "feedback", **self._audit_head(stored.user_id, client, _now(), event_id),
                 "outcome": outcome, "policy_version": self.policy.version}
        recorded = self.store.record_outcome(event_id, outcome, audit)
        self._fraud_rates.clear()                 # a label moves the fraud rate PSD2 TRA exemptions depend on
        if recorded:
            self._tell(event_from_request(stored.request), Decision.from_dict(stored.decision), outcome)
        return recorded

    def _tell(self, event: Event, decision: Decision, outcome: str | None = None) -> None:
        """Listeners (webhooks, CAEP) only queue: a slow receiver never holds a request."""
        if self.listeners:
            notice = Recorded(event.event_id, event.user_id, event.action, format_timestamp(event.timestamp),
                              decision.decision, decision.risk_level, decision.risk_score,
                              tuple(r.code for r in decision.reasons), outcome)
            for listener in self.listeners:
                listener(notice)

    def apply_step_up(self, event: Event, learn: bool, required_acr: str | None = None) -> None:
        """The user proved it was them: remember this event (if not yet) and trust its device and place."""
        enriched = self.enricher.enrich(event)
        with self._user_lock(event.user_id):
            self._apply_step_up(event, enriched, learn, required_acr)

    def _apply_step_up(self, event: Event, enriched: EnrichedEvent, learn: bool, required_acr: str | None) -> None:
        def change(profile: profiles.UserProfile) -> profiles.UserProfile:
            new = profiles.learned(profile, enriched, self.retention_s, _now().timestamp()) if learn else profile
            new = profiles.trusted(new, enriched, event.ts)
            if required_acr is not None and (sca := self.policy.after_step_up(new, required_acr, event.ts)):
                new = sca                         # an SCA-grade step-up restarts the PSD2 low-value counters
            return new
        self._update_profile(event.user_id, change, self._values(event, enriched) if learn else {})

    def fail_step_up(self, event: Event) -> None:
        """The step-up was not passed: the event's session stays high risk; failures are counted."""
        enriched = self.enricher.enrich(event)
        with self._user_lock(event.user_id):
            self._update_profile(event.user_id,
                                 lambda profile: profiles.stepped_up(profile, enriched, False, event.ts), {})

    def _update_profile(self, user_id: str, change: Callable[[profiles.UserProfile], profiles.UserProfile],
                        learned_values: dict[str, str]) -> None:
        for attempt in range(_RETRIES):
            profile = self.store.get(user_id)
            try:
                self.store.update_profile(user_id, profile.version, change(profile), learned_values, None)
                return
            except Conflict:
                if attempt:
                    time.sleep(_back_off_s(attempt))
        raise Conflict(f"gave up after {_RETRIES} concurrent updates of one user")

    def erase(self, user_id: str, client: str = "local") -> bool:
        """GDPR Art. 17: drop the profile, events and the user's pseudonym key; the trail stays valid."""
        audit = {"kind": "erasure", **self._audit_head(user_id, client, _now()), "policy_version": self.policy.version}
        return self.store.erase_user(user_id, self.user_key(user_id), audit)

    # -- pseudonyms -------------------------------------------------------
    def user_key(self, user_id: str) -> str:
        """Keyed hash of a user id: indexes per-user secrets and per-IP distinct-user counts."""
        key = self._user_keys.get(user_id)
        if key is None:
            if len(self._user_keys) >= _USER_KEYS_KEPT:
                self._user_keys.clear()           # a pure function of the id: dropping costs only recomputing
            key = self._user_keys[user_id] = hmac.digest(self._key, user_id.encode(), "sha256").hex()[:32]
        return key

    def subject(self, user_id: str) -> str:
        secret = self.store.user_secret(user_id, self.user_key(user_id), create=True)
        return pseudonym(secret, user_id)

    def _audit_head(self, user_id: str, client: str, at: datetime, event_id: str | None = None) -> dict[str, Any]:
        """Who and when, as pseudonyms under the user's own secret: erasing it unlinks both.

        ``event_ref`` stands for the client's event id, which may itself carry the user id.
        """
        secret = self.store.user_secret(user_id, self.user_key(user_id), create=True)
        head = {"at": format_timestamp(at), "recorded_at": format_timestamp(_now()), "client": client,
                "subject": pseudonym(secret, user_id)}
        if (tenant := tenant_of(user_id)) != DEFAULT_TENANT:
            head["tenant"] = tenant               # the default tenant's records read as they always did
        if event_id is not None:
            head["event_ref"] = event_ref(secret, event_id)
        return head

    def health(self) -> dict[str, Any]:
        self.store.ping()
        health = {"status": "ok", "model_version": self.scorer.version, "policy_version": self.policy.version}
        if self.model_error:
            health["model_error"] = self.model_error
        if self.policy_error:
            health["policy_error"] = self.policy_error
        return health

    # -- policy and configuration changes -----------------------------------
    def watch_policy(self, path: Path, interval: float = 1.0) -> None:
        """Serve each valid new version of the policy file without a restart; keep the old on a broken one."""
        self._policy_watcher = PolicyWatcher(path, self._policy_changed, self._policy_refused, interval)

    def check_policy(self) -> None:
        """Look at the policy file now (tests, SIGHUP handlers) instead of waiting for the next poll."""
        if self._policy_watcher is not None:
            self._policy_watcher.check()

    def use_policy(self, policy: Policy, change: str = "reload") -> None:
        """Serve ``policy`` from now on (one reference swap) and record the change."""
        previous, self.policy, self.policy_error = self.policy, policy, None
        log.info("policy %s %s from %s", change, policy.version, policy.source)
        if change != "load" and previous.version == policy.version:
            log.warning("policy file changed but its version is still %s: bump `version` so answers and audit "
                        "records tell the two apart", policy.version)
        self.record_change("policy", {"change": change, "policy_version": policy.version,
                                      "source": policy.source, "sha256": policy.sha256, "pid": os.getpid()})

    def _policy_changed(self, policy: Policy) -> None:
        if policy.sha256 == self.policy.sha256:
            self.policy_error = None              # the file is back to what is serving
            return
        self.use_policy(policy, "reload")

    def _policy_refused(self, error: str) -> None:
        """A broken new policy file: keep serving the old one, say so in the log, /health and the trail."""
        if error == self.policy_error:
            return
        self.policy_error = error
        log.error("policy file refused, still serving %s: %s", self.policy.version, error)
        self.record_change("policy", {"change": "refused", "policy_version": self.policy.version,
                                      "error": error, "pid": os.getpid()})

    def record_change(self, kind: str, details: dict[str, Any]) -> None:
        """Append a model, policy or other configuration change to the audit trail."""
        if not self.record:
            return
        now = format_timestamp(_now())
        self.store.append_audit({"policy_version": self.policy.version, **details, "kind": kind, "at": now,
                                 "recorded_at": now})

    # -- PSD2 fraud rate ------------------------------------------------------
    def fraud_rate(self, actions: tuple[str, ...], currency: str, since: float, until: float) -> float | None:
        """Fraud by value among executed payments of ``actions`` in [since, until) (RTS Art. 19).

        Reused for ``fraud_rate_cache_s`` within the same hour of event time: the window is 90 days,
        an hour moves it little, and scanning it on every payment would not scale. Feedback clears it.
        """
        key = (actions, currency, since // 3600, until // 3600)
        now = time.monotonic()
        cached = self._fraud_rates.get(key)
        if cached is not None and now - cached[0] < self.fraud_rate_cache_s:
            return cached[1]
        rate = self.store.payment_totals(actions, currency, since, until).fraud_rate
        if len(self._fraud_rates) > 256:
            self._fraud_rates.clear()
        self._fraud_rates[key] = (now, rate)
        return rate

    # -- the audit trail --------------------------------------------------------
    def verify_audit(self) -> tuple[int, int, list[Problem]]:
        """(records, chains, problems) for the whole trail, anchors included."""
        rows = list(self.store.audit_rows())
        problems = verify(rows, self.audit_key, self.store.audit_anchors())
        return len(rows), len({r.chain for r in rows}), problems

    def prune_audit(self, retention_days: float, minimum_days: float | None = None,
                    now: datetime | None = None) -> int:
        """Retention: drop records written more than ``retention_days`` ago, never fewer days than the
        policy's (or ``minimum_days``) regulatory minimum; the trail stays verifiable (trail.py)."""
        floor = max(minimum_days or 0.0, self.policy.audit_min_retention_days or 0.0)
        pruned = trail.prune(self.store, max(retention_days, floor), now)
        if pruned:
            log.info("audit retention: pruned %d records older than %.0f days", pruned, max(retention_days, floor))
        return pruned

    def event_ids(self) -> dict[str, str]:
        """``event_ref`` -> event id for the recorded events of users not erased (for auditors' extracts)."""
        refs, secrets = {}, {}
        for stored in self.store.labelled_events():
            if stored.user_id not in secrets:
                secrets[stored.user_id] = self.store.user_secret(stored.user_id, self.user_key(stored.user_id),
                                                                 create=False)
            if secrets[stored.user_id] is not None:
                refs[event_ref(secrets[stored.user_id], stored.event_id)] = stored.event_id
        return refs


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _back_off_s(attempt: int) -> float:
    """A short jittered pause before recomputing: writers of one hot user stop colliding in lockstep.
    (The first retry goes at once: it is usually a cached profile another process had moved on.)"""
    return random.uniform(0, 0.001 * 2 ** min(attempt, 6))


def event_ref(secret: bytes | None, event_id: str) -> str:
    """The audit trail's name for a client event id, keyed by the user's secret."""
    return pseudonym(secret or b"", f"event:{event_id}")


def _open_store(settings: Settings, create_keys: bool = True,
                audit_key: bool = True) -> tuple[ProfileStore, bytes | None]:
    """The configured store, sealing the audit trail with the home's audit key (none: ``audit_key=False``)."""
    key = _load_key(settings.audit_key_file or settings.var / "audit.key", create_keys) if audit_key else None
    settings.var.mkdir(parents=True, exist_ok=True)
    options = {"synchronous": settings.sqlite_synchronous} if settings.store.startswith("sqlite") else {}
    if settings.store.startswith(("redis://", "rediss://", "unix://")):
        options = {"prefix": settings.redis_prefix}
    return open_store(settings.store, settings.home, audit_key=key, **options), key


class MissingKey(FileNotFoundError):
    """An offline tool found no key where the service keeps it: it never makes one (a new key would
    verify nothing and pseudonymise differently)."""


def _load_key(path: Path, create: bool = True) -> bytes:
    """The service's pseudonymisation or audit key: created once (by the service), readable only by its owner."""
    if path.exists():
        return path.read_bytes()
    if not create:
        raise MissingKey(f"no key at {path}: point RISKENGINE_AUDIT_KEY_FILE / RISKENGINE_PSEUDONYM_KEY_FILE at "
                         "the keys the service uses (offline tools never create keys)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
    finally:
        os.close(fd)
    return path.read_bytes()
