"""The one place the whole flow is written down: event -> enrich -> profile ->
features -> score -> decide -> record. HTTP, CLI, training and tests all call it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from riskengine import profiles
from riskengine.audit import trail
from riskengine.audit.chain import Problem, verify
from riskengine.audit.records import Pseudonyms, change_record, event_ref, now, score_record
from riskengine.enrich import EnrichedEvent, Enricher
from riskengine.events import (DEFAULT_TENANT, Event, changed_fields, event_from_request, event_to_request,
                               format_timestamp, tenant_key)
from riskengine.features import BY_NAME, USER_MESSAGES, Context, Signals, extract
from riskengine.ordering import Turns, retried
from riskengine.policy.decide import Decision, Policy, Reason, Seen
from riskengine.policy.exemptions import FraudRate
from riskengine.policy.file import PolicyWatcher
from riskengine.policy.fraud_rates import FraudRates
from riskengine.scoring.scorers import Score, Scorer, StatisticalScorer, TrainedScorer
from riskengine.scoring.registry import ChampionWatcher, ModelRegistry, ModelVersion
from riskengine.signals.recorded import Recorded
from riskengine.stores import Commit, DuplicateEvent, ProfileStore, StoredEvent, StoreUnavailable
from riskengine.tracing import span

log = logging.getLogger("riskengine")
OUTCOMES = ("step_up_passed", "step_up_failed", "confirmed_fraud", "confirmed_legit")
MAX_REASONS = 5


class ScoreUnavailable(Exception):
    """No risk could be computed and the action's policy says answer 503 (``on_failure: unavailable``)."""


class EventIdTaken(ValueError):
    """The event id already names another event (another user, action, amount, ...): answering with
    that event's decision would let any body reuse an allowed event's id and skip being scored."""

    def __init__(self, changed: list[str]) -> None:
        super().__init__(f"already names another event (its {', '.join(changed)} differ): a retry sends "
                         "the same event again, a new event needs a new event_id")
        self.changed = changed


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
    hashed: dict[str, str] = field(default_factory=dict)   # their keyed hashes from the read, for the commit


class _Read(NamedTuple):
    """What ``evaluate`` reads before the store's context: the policy serving, the event, the profile."""

    policy: Policy
    enriched: EnrichedEvent
    profile: profiles.UserProfile
    values: dict[str, str]
    hashed: dict[str, str]          # raw value -> keyed hash for this event alone (stores/batching.py)


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
    """The flow over one store. Every change to a user goes through ``Turns`` (one user's changes one
    after another on the event loop) and ``retried`` (a writer in another process moved the user on)."""

    def __init__(self, store: ProfileStore, enricher: Enricher, scorer: Scorer | None = None,
                 policy: Policy | None = None, retention_days: float = 180.0,
                 pseudonym_key: bytes | None = None, keep_records: bool = True, audit_key: bytes | None = None,
                 fraud_rate_cache_s: float = 60.0) -> None:
        self.store = store
        self.keep_records = keep_records          # False: training backfills keep no events or audit
        self.enricher = enricher
        self.scorer: Scorer = scorer or StatisticalScorer()
        self.policy = policy or Policy()
        self.retention_s = retention_days * profiles.DAY
        self.pseudonyms = Pseudonyms(pseudonym_key or os.urandom(32), store)
        self.audit_key = audit_key                # what ``verify_audit`` checks seals with (the store seals)
        self.fraud_rates = FraudRates(store, fraud_rate_cache_s)
        self.listeners: list[Callable[[Recorded], None]] = []   # told after a durable record (signals/)
        self.share_ip_stats = False               # True: per-IP and population statistics span tenants
        self.durability: dict[str, str] | None = None   # Redis: the persistence read at start (/health)
        self.model_error: str | None = None
        self.policy_error: str | None = None
        self.reload_failures = {"model": 0, "policy": 0}   # refused reloads, for /metrics
        self.conflicted: Callable[[], None] | None = None   # told of each decision made again after a Conflict
        self._turns = Turns()
        self._watcher: ChampionWatcher | None = None
        self._policy_watcher: PolicyWatcher | None = None

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
    async def score(self, event: Event, client: str = "local") -> Decision:
        """``record``'s decision; with the store unreachable, the action's ``on_failure`` answer (not
        recorded: the API sends it with a 503) or, for ``unavailable``, the ``StoreUnavailable`` 503."""
        try:
            return (await self.record(event, client)).decision
        except StoreUnavailable as exc:
            return self._unrecorded(event, exc)

    async def record(self, event: Event, client: str = "local") -> Scored:
        """Decide and record one event: the one path for the service, training and what-if.

        Decided in turn with the user's other events, each on the profile the one before queued; the
        commit goes in a group with the rest of this loop turn's (stores/batching.py) and is awaited.
        A repeated ``event_id`` gets the answer recorded the first time, if the event is the same.
        """
        async def attempt() -> Scored:
            async with self._turns.of(event.user_id):
                scored = await self.evaluate(event)
                committed = self.store.submit_async(self._commit(event, scored, client), hashed=scored.hashed)
            try:
                with span("commit"):
                    await committed
            except DuplicateEvent:
                return await self._earlier(event, scored)
            self._tell(event, scored.decision)
            return scored
        return await retried(attempt, self.conflicted)

    async def evaluate(self, event: Event) -> Scored:
        """Enrich, read the profile as it is, extract, score and decide; no state changes.

        A scorer that fails gets the policy's ``on_failure`` answer for the action (or
        ``ScoreUnavailable``: a 503); an unreachable store raises ``StoreUnavailable``.
        """
        with span("profile"):
            profile = await self.store.get_async(event.user_id)
            if self.keep_records:                              # the audit head's secret, cached for _commit (stores)
                await self.store.user_secret_async(event.user_id, self.user_key(event.user_id), True)
        read = self._read(event, profile)
        with span("context"):
            context = await self.store.context_async(self._stats(event, event.ip), event.ts, read.values, read.hashed)
            fraud_rate = await self.fraud_rates.for_event(read.policy, event)
        return self._decide(event, read, Context(*context), fraud_rate)

    def _read(self, event: Event, profile: profiles.UserProfile) -> _Read:
        if self._policy_watcher is not None:
            self._policy_watcher.poll()                  # a changed policy file: at most one stat a second
        with span("enrich"):
            enriched = self.enricher.enrich(event)
        return _Read(self.policy, enriched, profile, self._values(event, enriched), {})

    def _stats(self, event: Event, value: str) -> str:
        """The key of a per-IP or population statistic: the event's tenant's own, unless shared."""
        return value if self.share_ip_stats else tenant_key(event.tenant, value)

    def _values(self, event: Event, enriched: EnrichedEvent) -> dict[str, str]:
        values = profiles.attribute_values(enriched)
        tenant = event.tenant
        if self.share_ip_stats or tenant == DEFAULT_TENANT:
            return values
        return {name: tenant_key(tenant, value) for name, value in values.items()}

    def _decide(self, event: Event, read: _Read, context: Context, fraud_rate: FraudRate) -> Scored:
        policy, enriched, profile, values, hashed = read
        with span("features"):
            signals = extract(enriched, profile, context)
        scorer = self.scorer
        try:
            with span("score"):
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
        with span("decide"):
            decision = policy.decide(event, score.risk, reasons_from(score, signals), score.model_version,
                                     profile=profile, fraud_rate=fraud_rate, seen=seen)
        learn = learns(event.success, decision.decision, decision.risk_level)
        return Scored(enriched, signals, score, decision, learn, profile, policy, values, hashed)

    def _unrecorded(self, event: Event, exc: StoreUnavailable) -> Decision:
        decision = self.policy.on_failure(event, "store_unavailable", "the profile store could not be reached",
                                          self.scorer.version)
        if decision is None:
            raise exc
        log.error("profile store unavailable: answering %s without recording", decision.decision)
        return decision

    async def _earlier(self, event: Event, scored: Scored) -> Scored:
        """A repeated event id: the answer recorded the first time, if this is that event again
        (``EventIdTaken`` if it is another)."""
        earlier = await self.store.blocking(self.store.find_event, event.event_id)
        if earlier is None:
            raise StoreUnavailable("a recorded event could not be read back")
        if changed := changed_fields(earlier.request, event):
            raise EventIdTaken(changed)
        return Scored(scored.enriched, scored.signals, scored.score, Decision.from_dict(earlier.decision), False,
                      scored.profile, scored.policy)

    def _commit(self, event: Event, scored: Scored, client: str) -> Commit:
        """What the event changes, conditional on the profile version its decision read."""
        profile = scored.profile
        assert profile is not None
        at = now().timestamp() if self.keep_records else None     # live: no claimed time prunes past the clock
        if scored.learned:
            new = profiles.learned(profile, scored.enriched, self.retention_s, at)
            learned_values = scored.values
        elif event.action == "login" and not event.success:
            new, learned_values = profiles.failed(profile, scored.enriched, self.retention_s, at), {}
        else:
            new, learned_values = None, {}
        if (opened := profiles.decided(new or profile, scored.enriched, scored.decision.decision)) is not (new or profile):
            new = opened                          # a sign-in opened a session, or a session's pace moved
        counted = (scored.policy or self.policy).after(new or profile, event, scored.decision)
        if counted is not None:
            new = counted                         # PSD2 counters since the last SCA moved
        stored, audit = None, None
        if self.keep_records:
            decision = scored.decision.to_dict()
            stored = StoredEvent(event.event_id, event.user_id, event.ts, event_to_request(event), decision,
                                 scored.signals.values)
            audit = score_record(event, decision, self.pseudonyms.head(event.user_id, client, event.timestamp,
                                                                       event.event_id))
        return Commit(event.user_id, profile.version, new, self._stats(event, event.ip), self.user_key(event.user_id),
                      event.ts, event.success or event.action != "login", learned_values, stored, audit)

    # -- outcomes, erasure ------------------------------------------------
    async def feedback(self, event_id: str, outcome: str, client: str = "local") -> bool:
        """Label an event; a passed step-up teaches and trusts its device and place."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        stored = await self.store.blocking(self.store.find_event, event_id)
        if stored is None:
            return False
        if stored.outcome == outcome:
            return True                           # a retried feedback changes nothing
        event = event_from_request(stored.request)
        if outcome == "step_up_passed":
            learned_already = learns(event.success, stored.decision["decision"], stored.decision["risk_level"])
            await self.apply_step_up(event, learn=not learned_already, required_acr=stored.decision.get("required_acr"))
        elif outcome == "step_up_failed":
            await self.fail_step_up(event)
        recorded = await self.store.blocking(self._record_outcome, stored, outcome, client)
        self.fraud_rates.forget()                 # a label moves the fraud rate PSD2 TRA exemptions depend on
        if recorded:
            self._tell(event, Decision.from_dict(stored.decision), outcome)
        return recorded

    def _record_outcome(self, stored: StoredEvent, outcome: str, client: str) -> bool:
        audit = {"kind": "feedback", **self.pseudonyms.head(stored.user_id, client, now(), stored.event_id),
                 "outcome": outcome, "policy_version": self.policy.version}
        return self.store.record_outcome(stored.event_id, outcome, audit)

    def _tell(self, event: Event, decision: Decision, outcome: str | None = None) -> None:
        """Listeners (webhooks, CAEP) only queue: a slow receiver never holds a request."""
        if self.listeners:
            notice = Recorded(event.event_id, event.user_id, event.action, format_timestamp(event.timestamp),
                              decision.decision, decision.risk_level, decision.risk_score,
                              tuple(r.code for r in decision.reasons), outcome)
            for listener in self.listeners:
                listener(notice)

    async def apply_step_up(self, event: Event, learn: bool, required_acr: str | None = None) -> None:
        """The user proved it was them: remember this event (if not yet) and trust its device and place."""
        enriched = self.enricher.enrich(event)

        def change(profile: profiles.UserProfile) -> profiles.UserProfile:
            new = profiles.learned(profile, enriched, self.retention_s, now().timestamp()) if learn else profile
            new = profiles.trusted(new, enriched, event.ts)
            if required_acr is not None and (sca := self.policy.after_step_up(new, required_acr, event.ts)):
                new = sca                         # an SCA-grade step-up restarts the PSD2 low-value counters
            return new
        await self._update_profile(event.user_id, change, self._values(event, enriched) if learn else {})

    async def fail_step_up(self, event: Event) -> None:
        """The step-up was not passed: the event's session stays high risk; failures are counted."""
        enriched = self.enricher.enrich(event)
        await self._update_profile(event.user_id, lambda profile: profiles.stepped_up(profile, enriched, False,
                                                                                       event.ts), {})

    async def _update_profile(self, user_id: str, change: Callable[[profiles.UserProfile], profiles.UserProfile],
                              learned_values: dict[str, str]) -> None:
        async def attempt() -> None:
            async with self._turns.of(user_id):
                profile = await self.store.get_async(user_id)
                await self.store.blocking(self.store.update_profile, user_id, profile.version, change(profile),
                                          learned_values, None)
        await retried(attempt, self.conflicted)

    def erase(self, user_id: str, client: str = "local") -> bool:
        """GDPR Art. 17: drop the profile, events and the user's pseudonym key; the trail stays valid."""
        audit = {"kind": "erasure", **self.pseudonyms.head(user_id, client, now()),
                 "policy_version": self.policy.version}
        return self.store.erase_user(user_id, self.user_key(user_id), audit)

    def user_key(self, user_id: str) -> str:
        return self.pseudonyms.user_key(user_id)

    def health(self) -> dict[str, Any]:
        self.store.ping()
        health = {"status": "ok", "model_version": self.scorer.version, "policy_version": self.policy.version}
        if self.model_error:
            health["model_error"] = self.model_error
        if self.policy_error:
            health["policy_error"] = self.policy_error
        if self.durability:
            health["durability"] = self.durability
        return health

    # -- what serves: models and policies swapped in without a restart ------------
    def watch_models(self, registry: ModelRegistry, interval: float = 1.0) -> None:
        """Serve the registry's champion now, and each newly promoted one without a restart."""
        self._watcher = ChampionWatcher(registry, self._use_model, self._model_refused, interval)
        self._watcher.check()
        self._watcher.start()

    def _use_model(self, model: Any, entry: ModelVersion) -> None:
        self.scorer = TrainedScorer.loaded(model, entry)       # one reference swap: in-flight requests keep theirs
        self.model_error = None
        log.info("serving model %s", entry.version)
        self._record_change("model", {"model_version": entry.version, "sha256": entry.metadata.get("sha256")})

    def _model_refused(self, reason: str) -> None:
        self.model_error = reason
        self.reload_failures["model"] += 1
        log.error("model refused, keeping %s: %s", self.scorer.version, reason)

    def watch_policy(self, path: Path, interval: float = 1.0) -> None:
        """Serve each valid new version of the policy file without a restart; keep the old on a broken one."""
        self._policy_watcher = PolicyWatcher(path, self._policy_changed, self._policy_refused, interval)

    def use_policy(self, policy: Policy, change: str = "reload") -> None:
        """Serve ``policy`` from now on (one reference swap) and record the change."""
        previous, self.policy, self.policy_error = self.policy, policy, None
        log.info("policy %s %s from %s", change, policy.version, policy.source)
        if change != "load" and previous.version == policy.version:
            log.warning("policy file changed but its version is still %s: bump `version` so answers and audit "
                        "records tell the two apart", policy.version)
        self._record_change("policy", {"change": change, "policy_version": policy.version,
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
        self.reload_failures["policy"] += 1
        log.error("policy file refused, still serving %s: %s", self.policy.version, error)
        self._record_change("policy", {"change": "refused", "policy_version": self.policy.version,
                                      "error": error, "pid": os.getpid()})

    def _record_change(self, kind: str, details: dict[str, Any]) -> None:
        """Append a model, policy or other configuration change to the audit trail."""
        if self.keep_records:
            self.store.append_audit(change_record(kind, self.policy.version, details))

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
                secrets[stored.user_id] = self.pseudonyms.secret(stored.user_id, create=False)
            if secrets[stored.user_id] is not None:
                refs[event_ref(secrets[stored.user_id], stored.event_id)] = stored.event_id
        return refs
