"""Step 3 of the flow: a user's bounded history, and how one event updates it.

Pure data and pure functions, no I/O: the stores persist ``UserProfile`` as
JSON, the features read it, and ``learned`` / ``failed`` / ``trusted`` return
an updated copy so an event never feeds its own features.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from riskengine.enrich import EnrichedEvent

DAY = 86400.0
HOUR = 3600.0

#: attribute name -> how many values a profile remembers (least recently seen go first)
CAPS: dict[str, int] = {
    "ips": 64, "networks": 32, "countries": 16, "cities": 32, "devices": 16,
    "user_agents": 16, "browsers": 8, "oses": 8, "device_types": 4, "payees": 64,
}
#: the attributes Freeman et al.'s likelihood ratios are computed over
FREEMAN_ATTRIBUTES = ("ip", "network", "country", "user_agent", "browser", "os", "device_type")
_FREEMAN_FIELDS = {"ip": "ips", "network": "networks", "country": "countries",
                   "user_agent": "user_agents", "browser": "browsers", "os": "oses",
                   "device_type": "device_types"}
MAX_FAILURES = 50
MAX_TRUSTED = 32
MAX_SESSIONS = 16              # session entries kept ("s:<id>" and "d:<device>"): the latest sign-ins
MAX_SENSITIVE = 8              # sensitive-action times kept per session: enough to measure pace
MAX_STEP_UP_FAILURES = 20
MAX_CURRENCIES = 8             # currencies whose amounts are kept apart (the least used goes first)
#: the key of amount statistics stored before they were kept by currency (no currency is "?")
UNKNOWN_CURRENCY = "?"
MAX_PAYEES_ADDED = 16          # payees first seen lately, with when: "added minutes ago" needs no more
PAYEE_SETTLED_S = 30 * DAY     # a payee known this long is settled: its added time is forgotten
#: how a session's sign-in went; later actions in the session are judged by it
SIGNED_IN, STEP_UP_PENDING, STEP_UP_PASSED, STEP_UP_FAILED, DENIED = range(5)
SENSITIVE = frozenset({"payment", "add_payee", "change_email", "change_password", "export_data",
                       "change_phone"})


def attribute_values(enriched: EnrichedEvent) -> dict[str, str]:
    """The Freeman attributes of one event (missing ones are left out)."""
    event, geo, ua = enriched.event, enriched.geo, enriched.ua
    values = {"ip": event.ip, "network": geo.network, "country": geo.country or ""}
    if event.user_agent:                  # no header: nothing to say about browser or OS
        values.update(user_agent=event.user_agent, browser=ua.browser, os=ua.os, device_type=ua.device_type)
    return {k: v for k, v in values.items() if v}


def session_key(enriched: EnrichedEvent) -> str | None:
    """Where a session's state is kept: by the app's session id, or (without one) by device."""
    event = enriched.event
    if event.session.id:
        return f"s:{event.session.id}"
    return f"d:{event.device_id}" if event.device_id else None


def place_key(enriched: EnrichedEvent) -> str:
    geo = enriched.geo
    return f"{geo.country or '?'}/{geo.city or '?'}"


@dataclass
class UserProfile:
    """What the signals need about one user; every map holds ``value -> [count, last_at]``."""

    user_id: str
    version: int = 0
    events: int = 0
    logins: int = 0
    first_at: float | None = None
    last_at: float | None = None
    ips: dict[str, list[float]] = field(default_factory=dict)
    networks: dict[str, list[float]] = field(default_factory=dict)
    countries: dict[str, list[float]] = field(default_factory=dict)
    cities: dict[str, list[float]] = field(default_factory=dict)
    devices: dict[str, list[float]] = field(default_factory=dict)
    user_agents: dict[str, list[float]] = field(default_factory=dict)
    browsers: dict[str, list[float]] = field(default_factory=dict)
    oses: dict[str, list[float]] = field(default_factory=dict)
    device_types: dict[str, list[float]] = field(default_factory=dict)
    payees: dict[str, list[float]] = field(default_factory=dict)
    #: payee -> when it was first added or paid, for payees first seen within ``PAYEE_SETTLED_S``:
    #: a payment to a payee added minutes ago is as new as one to a payee never seen (a scammer's
    #: add_payee would otherwise make its own payment look habitual)
    payees_added: dict[str, float] = field(default_factory=dict)
    #: last successful event: at, latitude, longitude, accuracy_km
    last_success: list[float] | None = None
    #: successful logins by UTC hour of day
    hours: list[float] = field(default_factory=lambda: [0.0] * 24)
    #: per currency ("" for amounts that name none): Welford running statistics of log1p(amount),
    #: ``[n, mean, m2]``. Amounts in two currencies are not comparable (44 XAU is not 44 EUR), so
    #: each is judged against its own currency's history (``amount_stats``)
    amounts: dict[str, list[float]] = field(default_factory=dict)
    failures: list[float] = field(default_factory=list)
    #: "device:<id>" or "place:<country>/<city>" -> when a step-up was passed there
    trusted: dict[str, float] = field(default_factory=dict)
    last_step_up_at: float | None = None
    #: "s:<session id>" or "d:<device id>" -> [signed_in_at, state, ip, network, device, browser,
    #: [sensitive action times]]: the sign-in an in-session action is judged with
    sessions: dict[str, list] = field(default_factory=dict)
    #: when step-ups were failed (MFA fatigue: many in a day)
    step_up_failures: list[float] = field(default_factory=list)
    #: PSD2 RTS Art. 16: when the user last passed SCA, and what was paid without SCA since
    last_sca_at: float | None = None
    since_sca_amount: float = 0.0
    since_sca_count: int = 0
    since_sca_paid_at: float | None = None      # the latest of those payments
    #: not stored: at most the oldest ``last_at`` in the maps (None: unknown), so pruning skips
    #: the maps while nothing in them can be past the retention window
    oldest_seen_at: float | None = field(default=None, compare=False, repr=False)
    #: not stored: each Freeman map's count sum, kept up to date by the updates below once
    #: ``total`` has summed them (None: not yet), instead of summed again for every event
    freeman_totals: dict[str, float] | None = field(default=None, compare=False, repr=False)

    # -- persistence -------------------------------------------------------
    def to_json(self, version: int | None = None) -> str:
        """``version``: the one it is stored under, when that is not (yet) its own."""
        data = self.to_dict()
        if version is not None:
            data["version"] = version
        return orjson.dumps(data).decode()

    def to_dict(self) -> dict[str, Any]:
        """The stored fields, JSON-ready as they are (dataclasses.asdict's deep copy was a third
        of /score's time once); the maps are shared with the profile, not copied."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    @classmethod
    def from_json(cls, text: str) -> "UserProfile":
        data = json.loads(text)
        if data.get("amount_n") and "amounts" not in data:      # stored before amounts by currency
            data["amounts"] = {UNKNOWN_CURRENCY: [data["amount_n"], data["amount_mean"], data["amount_m2"]]}
        return cls(**{k: v for k, v in data.items() if k in _KNOWN})

    def copy(self) -> "UserProfile":
        """Shallow-copy every map: updates replace ``[count, last_at]`` lists, never mutate them."""
        clone = object.__new__(UserProfile)             # no __init__: every field is set from self
        state = clone.__dict__
        state.update(self.__dict__)
        for name in _CONTAINERS:                        # dicts and lists alike: ``.copy()`` is shallow
            state[name] = state[name].copy()
        if self.freeman_totals is not None:
            clone.freeman_totals = self.freeman_totals.copy()
        return clone

    # -- reads used by the features ---------------------------------------
    def seen(self, attribute: str, value: str) -> float:
        """How often ``value`` of a Freeman attribute was seen (0 when never)."""
        entry = getattr(self, _FREEMAN_FIELDS[attribute]).get(value)
        return entry[0] if entry else 0.0

    def total(self, attribute: str) -> float:
        """How many values of a Freeman attribute were seen in all (the map's counts summed)."""
        totals = self.freeman_totals
        if totals is None:
            totals = self.freeman_totals = {name: sum(entry[0] for entry in getattr(self, name).values())
                                            for name in _FREEMAN_FIELDS.values()}
        return totals[_FREEMAN_FIELDS[attribute]]

    def devices_since(self, since: float) -> int:
        return sum(1 for _, last in self.devices.values() if last >= since)

    def failures_since(self, since: float) -> int:
        return sum(1 for at in self.failures if at >= since)

    def amount_stats(self, currency: str | None) -> tuple[int, float, float] | None:
        """(payments, mean, standard deviation) of log1p(amount) in ``currency``; those of a profile
        stored before amounts were kept by currency stand in until its next payment names one; None
        when this currency was never paid in."""
        entry = self.amounts.get(currency or "") or self.amounts.get(UNKNOWN_CURRENCY)
        if entry is None:
            return None
        n, mean, m2 = entry
        return int(n), mean, math.sqrt(m2 / (n - 1)) if n > 1 else 0.0

    def is_trusted(self, key: str, since: float) -> bool:
        at = self.trusted.get(key)
        return at is not None and at >= since

    def session_of(self, enriched: EnrichedEvent) -> list | None:
        """The sign-in an event belongs to: its session's, else the latest from its device."""
        key = session_key(enriched)
        return self.sessions.get(key) if key else None

    def step_up_failures_since(self, since: float) -> int:
        return sum(1 for at in self.step_up_failures if at >= since)

    def payee_added_at(self, payee: str) -> float | None:
        """When a known payee was first added or paid; None for one never seen, and ``-inf`` for a
        settled one (known for ``PAYEE_SETTLED_S``, or from before the profile kept added times)."""
        if payee not in self.payees:
            return None
        return self.payees_added.get(payee, -math.inf)


_FIELD_NAMES = tuple(f.name for f in fields(UserProfile) if f.name not in ("oldest_seen_at", "freeman_totals"))
_KNOWN = frozenset(_FIELD_NAMES)
#: the maps and lists ``copy`` copies (the rest are numbers, texts, or replaced whole)
_CONTAINERS = (*CAPS, "hours", "failures", "trusted", "payees_added", "sessions", "step_up_failures", "amounts")


# -- updates: each returns a new profile -------------------------------------

def _bump(profile: UserProfile, name: str, key: str | None, at: float) -> None:
    """One more sighting of ``key`` in the map ``name``; past its cap the least recently seen goes."""
    if not key:
        return
    table = getattr(profile, name)
    count, last = table.get(key) or (0.0, at)
    table[key] = [count + 1, max(last, at)]       # an older event counts, but never rewinds last-seen
    if (totals := profile.freeman_totals) is not None and name in totals:
        totals[name] += 1.0                       # ``_recount``, written out: nine bumps an event
    if len(table) > CAPS[name]:
        oldest = min(table, key=lambda k: table[k][1])
        _recount(profile, name, -table.pop(oldest)[0])


def _added(profile: UserProfile, payee: str, at: float) -> None:
    """Remember when a payee was first seen; past the cap the earliest added is settled."""
    profile.payees_added[payee] = at
    if len(profile.payees_added) > MAX_PAYEES_ADDED:
        del profile.payees_added[min(profile.payees_added, key=profile.payees_added.__getitem__)]


def _recount(profile: UserProfile, name: str, change: float) -> None:
    """Keep a Freeman map's total (once ``total`` has summed it) in step with the map."""
    totals = profile.freeman_totals
    if totals is not None and name in totals:
        totals[name] += change


def _event_time(enriched: EnrichedEvent, now: float | None) -> float:
    """The event's time, never past the server's clock ``now`` when there is one."""
    return enriched.event.ts if now is None else min(enriched.event.ts, now)


def _clock(profile: UserProfile, at: float, now: float | None) -> float:
    """The profile's own clock after an event at ``at``: it never runs backwards (an older event
    prunes nothing the latest one kept) nor, given the server's ``now``, past it, so no claimed
    time (a far-future one) can prune a user's devices, places, payees and trusted items."""
    latest = max([at, *(t for t in (profile.last_at, profile.failures[-1] if profile.failures else None)
                        if t is not None)])
    return latest if now is None else min(latest, now)


def _prune(profile: UserProfile, now: float, retention_s: float) -> None:
    """Forget what is older than the retention window, measured in the profile's clock (``_clock``)."""
    horizon = now - retention_s
    if profile.oldest_seen_at is None or profile.oldest_seen_at < horizon:
        oldest = math.inf
        for name in CAPS:
            table = getattr(profile, name)
            for key in [k for k, (_, last) in table.items() if last < horizon]:
                _recount(profile, name, -table.pop(key)[0])
            oldest = min(oldest, min((last for _, last in table.values()), default=math.inf))
        profile.oldest_seen_at = oldest
    profile.failures = [at for at in profile.failures if at >= now - DAY][-MAX_FAILURES:]
    profile.trusted = {k: at for k, at in profile.trusted.items() if at >= horizon}
    if profile.payees_added:
        profile.payees_added = {k: at for k, at in profile.payees_added.items()
                                if at >= now - PAYEE_SETTLED_S and k in profile.payees}
    if profile.last_success is not None and profile.last_success[0] < horizon:
        profile.last_success = None


def _count_amount(new: UserProfile, currency: str, x: float) -> None:
    """Welford's update of ``currency``'s statistics (a new list: copies share the old one). Unlabelled
    statistics from before amounts were kept by currency become the first currency paid in since."""
    amounts = new.amounts
    n, mean, m2 = amounts.pop(UNKNOWN_CURRENCY, None) or amounts.get(currency) or (0, 0.0, 0.0)
    n += 1
    delta = x - mean
    mean += delta / n
    amounts[currency] = [n, mean, m2 + delta * (x - mean)]
    if len(amounts) > MAX_CURRENCIES:                            # the least used goes
        del amounts[min((c for c in amounts if c != currency), key=lambda c: amounts[c][0])]


def learned(profile: UserProfile, enriched: EnrichedEvent, retention_s: float,
            now: float | None = None) -> UserProfile:
    """The profile after a successful, accepted event: the user really was here, on this.

    ``now``: the server's clock for a live event (None in replays); see ``_clock``."""
    event, geo = enriched.event, enriched.geo
    at = _event_time(enriched, now)
    new = profile.copy()
    new.events += 1
    new.first_at = at if new.first_at is None else min(new.first_at, at)
    new.last_at = at if new.last_at is None else max(new.last_at, at)
    for attribute, value in attribute_values(enriched).items():
        _bump(new, _FREEMAN_FIELDS[attribute], value, at)
    _bump(new, "cities", place_key(enriched) if geo.city else None, at)
    _bump(new, "devices", event.device_id, at)
    if event.action == "login":
        new.logins += 1
        new.hours[event.timestamp.hour] += 1
    if event.payee_id and event.action in ("payment", "add_payee"):
        if event.payee_id not in new.payees:
            _added(new, event.payee_id, at)
        _bump(new, "payees", event.payee_id, at)
    if event.amount is not None and event.amount > 0:
        _count_amount(new, event.currency or "", math.log1p(event.amount))
    if new.oldest_seen_at is not None:
        new.oldest_seen_at = min(new.oldest_seen_at, at)      # every map entry bumped above is at ``at``
    # an address on a travel_exempt list (satellite, carrier, proxy) places the user nowhere: the
    # next sign-in's journey is measured from the last place that meant something
    placed = geo.has_coordinates and not any(role == "travel_exempt" for _, role in enriched.roles)
    if placed and (new.last_success is None or at >= new.last_success[0]):
        new.last_success = [at, geo.latitude, geo.longitude, geo.accuracy_km]
    _prune(new, _clock(profile, at, now), retention_s)
    return new


def failed(profile: UserProfile, enriched: EnrichedEvent, retention_s: float,
           now: float | None = None) -> UserProfile:
    """The profile after a failed login: only the failure is remembered (in time order, so the
    newest are the ones kept)."""
    new = profile.copy()
    at = _event_time(enriched, now)
    bisect.insort(new.failures, at)
    _prune(new, _clock(profile, at, now), retention_s)
    return new


def trusted(profile: UserProfile, enriched: EnrichedEvent, at: float) -> UserProfile:
    """After a passed step-up: this device and this place are the user's (an older step-up's
    time never replaces a newer one's)."""
    new = profile.copy()
    keys = [f"device:{enriched.event.device_id}"] if enriched.event.device_id else []
    if enriched.geo.known:
        keys.append(f"place:{place_key(enriched)}")
    for key in keys:
        new.trusted[key] = max(new.trusted.get(key, at), at)
    if len(new.trusted) > MAX_TRUSTED:
        for key in sorted(new.trusted, key=new.trusted.__getitem__)[: len(new.trusted) - MAX_TRUSTED]:
            del new.trusted[key]
    new.last_step_up_at = at if new.last_step_up_at is None else max(new.last_step_up_at, at)
    return stepped_up(new, enriched, True, at)


# -- sessions: what a sign-in decided, and what followed in its session --------

def _set_session(profile: UserProfile, key: str, entry: list) -> None:
    profile.sessions[key] = entry
    if len(profile.sessions) > MAX_SESSIONS:
        for old in sorted(profile.sessions, key=lambda k: profile.sessions[k][0])[: len(profile.sessions) - MAX_SESSIONS]:
            del profile.sessions[old]


def decided(profile: UserProfile, enriched: EnrichedEvent, decision: str) -> UserProfile:
    """The profile after any scored event: a successful login opens a session with its decision
    (under its session id and its device); a sensitive action adds to its session's pace.

    >>> from riskengine.enrich import Enricher
    >>> from riskengine.events import Event, SessionInfo, parse_timestamp
    >>> login = Event("e1", "u", "login", parse_timestamp("2026-03-02T08:00:00Z"), "10.0.0.1",
    ...               device_id="d1", session=SessionInfo(id="s1"))
    >>> after = decided(UserProfile("u"), Enricher().enrich(login), "step_up")
    >>> after.sessions["s:s1"][1] == STEP_UP_PENDING, sorted(after.sessions)
    (True, ['d:d1', 's:s1'])
    """
    event = enriched.event
    if event.action == "login":
        if not event.success:
            return profile
        state = {"allow": SIGNED_IN, "step_up": STEP_UP_PENDING}.get(decision, DENIED)
        new = profile.copy()
        entry = [event.ts, state, event.ip, enriched.geo.network or "", event.device_id or "",
                 enriched.ua.browser or "", []]
        for key in (f"s:{event.session.id}" if event.session.id else None,
                    f"d:{event.device_id}" if event.device_id else None):
            if key:
                _set_session(new, key, list(entry))
        return new
    key = session_key(enriched)
    if event.action not in SENSITIVE or key is None or key not in profile.sessions:
        return profile
    new = profile.copy()
    entry = list(new.sessions[key])
    entry[6] = [*entry[6], event.ts][-MAX_SENSITIVE:]
    new.sessions[key] = entry
    return new


def stepped_up(profile: UserProfile, enriched: EnrichedEvent, passed: bool, at: float) -> UserProfile:
    """A step-up's outcome for the event's session; a failed one is also counted (MFA fatigue)."""
    new = profile.copy()
    key = session_key(enriched)
    if key is not None and key in new.sessions:
        entry = list(new.sessions[key])
        if entry[1] != DENIED:
            entry[1] = STEP_UP_PASSED if passed else STEP_UP_FAILED
        new.sessions[key] = entry
    if not passed:
        new.step_up_failures = [t for t in (*new.step_up_failures, at) if t >= at - DAY][-MAX_STEP_UP_FAILURES:]
    return new
