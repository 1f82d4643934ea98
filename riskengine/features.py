"""Step 4 of the flow: pure functions of (event, profile, counters) -> named numbers.

``FEATURES`` is the one catalogue: it fixes the column order the model sees,
the names in ``metadata.json`` and the stable ``reasons[].code`` with its
human message. The profile is the one from *before* the event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from string import Formatter
from typing import Any

from riskengine.enrich import EnrichedEvent, haversine_km
from riskengine.profiles import (DAY, DENIED, FREEMAN_ATTRIBUTES, HOUR, PAYEE_SETTLED_S, STEP_UP_FAILED,
                                 STEP_UP_PENDING, UserProfile, attribute_values, place_key)

AIRLINER_KMH = 1000.0          # faster than this between two sign-ins is not a journey
MIN_TRAVEL_S = 60.0            # two events in the same minute: velocity of a minute, not infinity
LR_ALPHA = 1.0                 # Dirichlet smoothing towards the population (Freeman et al.)
NEVER_STEPPED_UP_H = 24 * 365.0
ACTION_SENSITIVITY = {"view_dashboard": 0.0, "login": 1.0, "payment": 3.0, "add_payee": 3.0,
                      "change_email": 3.0, "change_password": 3.0, "export_data": 3.0}
UNKNOWN_ACTION_SENSITIVITY = 2.0
RECENT_PAYEE_H = 24.0          # a payee added less than a day ago is still new (a cooling-off period)
ANONYMIZER, TRAVEL_EXEMPT = "anonymizer", "travel_exempt"      # list roles features read


def _positive(value: float) -> bool:
    return value > 0                      # NaN compares False: "not applicable" explains nothing


@dataclass(frozen=True, slots=True)
class Feature:
    """``applies`` says when the value is on its risky side, so a reason never claims the opposite;
    ``direction`` is the way the value may move risk (+1: more is never safer, -1: more is never
    riskier, 0: either), the model's monotonic constraint."""

    name: str
    code: str
    message: str
    applies: Callable[[float], bool] = _positive
    direction: int = 0


UP, DOWN = 1, -1


FEATURES: tuple[Feature, ...] = (
    Feature("km_from_last_success", "geo_distance", "{km:,.0f} km from the last successful sign-in"),
    Feature("kmh_from_last_success", "geo_velocity", "{kmh:,.0f} km/h since the last successful sign-in {minutes:,.0f} min earlier", direction=UP),
    Feature("impossible_travel", "impossible_travel", "{km:,.0f} km from the last sign-in {minutes:,.0f} min earlier", direction=UP),
    Feature("unknown_location", "unknown_location", "the address has no known location ({unknown_reason})", direction=UP),
    Feature("new_country", "new_country", "country {country} not seen for this user", direction=UP),
    Feature("new_city", "new_city", "place {place} not seen for this user", direction=UP),
    Feature("new_network", "new_network", "network not seen for this user", direction=UP),
    Feature("new_ip", "new_ip", "IP address not seen for this user", direction=UP),
    Feature("new_device", "new_device", "device not seen for this user", direction=UP),
    Feature("new_browser", "new_browser", "browser {browser} not seen for this user", direction=UP),
    Feature("new_os", "new_os", "operating system {os} not seen for this user", direction=UP),
    Feature("missing_client_ids", "missing_client_ids", "request without {missing_ids}, unlike this user's earlier requests",
            direction=UP),
    Feature("trusted_device", "untrusted_device", "device never confirmed by a passed step-up", lambda v: v == 0, direction=DOWN),
    Feature("trusted_place", "untrusted_place", "place never confirmed by a passed step-up", lambda v: v == 0, direction=DOWN),
    Feature("devices_30d", "many_devices", "{devices_30d:.0f} distinct devices in the last 30 days", lambda v: v > 2, direction=UP),
    Feature("amount_log", "amount", "amount of {amount:,.2f}"),
    Feature("amount_zscore", "unusual_amount", "amount {amount:,.2f} is {amount_zscore:.1f} standard deviations from the user's usual (log scale)", lambda v: v > 1, direction=UP),
    Feature("first_payment", "first_payment", "first payment for this user", direction=UP),
    Feature("new_currency", "new_currency", "first amount in {currency} for this user (its other amounts are in other "
            "currencies, so its size cannot be compared with them)", direction=UP),
    Feature("new_payee", "new_payee", "payee not seen for this user", direction=UP),
    Feature("payee_added_h", "recent_payee", "payee added to this account {payee_added_min:,.0f} min earlier",
            lambda v: 0 < v < RECENT_PAYEE_H, direction=DOWN),
    Feature("hour_unusualness", "unusual_time", "unusual time of day for this user ({hour:02d}:00 UTC)", direction=UP),
    Feature("failed_logins_15m", "recent_failures", "{failed_logins_15m:.0f} failed logins in the last 15 minutes", direction=UP),
    Feature("failed_logins_1h", "recent_failures_1h", "{failed_logins_1h:.0f} failed logins in the last hour", direction=UP),
    Feature("ip_failures_1h", "ip_failures", "{ip_failures_1h:.0f} failed logins from this address in the last hour", direction=UP),
    Feature("ip_users_1h", "ip_many_users", "{ip_users_1h:.0f} different users from this address in the last hour", direction=UP),
    Feature("anonymizer_network", "anonymizer_network", "the address is on anonymizer list {anonymizer_lists}", direction=UP),
    Feature("login_failed", "login_failed", "the primary credential check failed", direction=UP),
    Feature("action_sensitivity", "sensitive_action", "sensitive action ({action})", lambda v: v >= 2),
    Feature("hours_since_step_up", "no_recent_step_up", "no passed step-up for {hours_since_step_up:,.0f} hours",
            lambda v: v > 24 * 30),
    Feature("history_logins", "little_history", "little history for this user ({history_logins:.0f} earlier logins)",
            lambda v: v < 5),
    # the session an in-session action belongs to (its id, else the latest sign-in from its device)
    Feature("session_step_up_failed", "session_step_up_failed",
            "this session's step-up was failed or its sign-in denied", direction=UP),
    Feature("session_unverified", "session_unverified",
            "this session's sign-in asked for a step-up that was never passed", direction=UP),
    Feature("session_unknown", "session_unknown", "no sign-in known for this session or device", direction=UP),
    Feature("session_new_ip", "session_ip_changed", "IP address changed within the session", direction=UP),
    Feature("session_new_network", "session_network_changed", "network changed within the session",
            direction=UP),
    Feature("session_new_device", "session_device_changed", "device changed within the session", direction=UP),
    Feature("session_new_browser", "session_browser_changed", "browser changed within the session to {browser}",
            direction=UP),
    Feature("session_age_min", "session_age", "session signed in {session_age_min:,.0f} min earlier",
            lambda v: v > 12 * 60),
    Feature("session_sensitive_10m", "session_pace", "{session_sensitive_10m:.0f} sensitive actions in this "
            "session in the last 10 minutes", lambda v: v >= 2, direction=UP),
    Feature("step_ups_failed_24h", "step_ups_failed", "{step_ups_failed_24h:.0f} failed step-ups in the last "
            "24 hours", direction=UP),
    Feature("lr_ip", "rare_ip", "IP address unusual for this user", direction=UP),
    Feature("lr_network", "rare_network", "network unusual for this user", direction=UP),
    Feature("lr_country", "rare_country", "country unusual for this user", direction=UP),
    Feature("lr_user_agent", "rare_user_agent", "User-Agent unusual for this user", direction=UP),
    Feature("lr_browser", "rare_browser", "browser unusual for this user", direction=UP),
    Feature("lr_os", "rare_os", "operating system unusual for this user", direction=UP),
    Feature("lr_device_type", "rare_device_type", "device type unusual for this user", direction=UP),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
#: per column, the way it may move risk: ``HistGradientBoostingClassifier(monotonic_cst=...)``
MONOTONIC: tuple[int, ...] = tuple(f.direction for f in FEATURES)
BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}


@dataclass(frozen=True, slots=True)
class IpActivity:
    """Sign-ins from one IP in the hour before an event: the credential-stuffing signals' input."""

    failures: int = 0
    distinct_users: int = 0


@dataclass(frozen=True, slots=True)
class GlobalCount:
    """Population statistics for one Freeman attribute value: p(value) needs all three."""

    count: float = 0.0
    total: float = 0.0
    distinct: float = 0.0


@dataclass(frozen=True, slots=True)
class Context:
    """Counters from the store that the profile alone does not hold."""

    ip: IpActivity = IpActivity()
    population: dict[str, GlobalCount] = field(default_factory=dict)


@dataclass(slots=True)
class Signals:
    """Feature values (``FEATURES`` order) plus the facts their messages quote."""

    values: dict[str, float]
    facts: dict[str, Any]

    def row(self) -> list[float]:
        return [self.values[name] for name in FEATURE_NAMES]

    def message(self, name: str) -> str:
        facts, values = self.facts, self.values
        return _format(BY_NAME[name].message, lambda n: facts[n] if n in facts else values.get(n))   # facts first


def likelihood_ratio(population: GlobalCount, seen_by_user: float, user_total: float) -> float:
    """log p(value) / p(value | user), smoothed towards the population (Freeman et al. 2016).

    An unseen value for a user with n observations scores log((n + alpha) / alpha);
    a user with no history scores 0 (no evidence either way).

    >>> round(likelihood_ratio(GlobalCount(5, 100, 10), 0, 10), 3)   # unseen, 10 logins
    2.398
    >>> likelihood_ratio(GlobalCount(5, 100, 10), 0, 0)
    0.0
    """
    p_value = (population.count + 1.0) / (population.total + population.distinct + 1.0)
    p_user = (seen_by_user + LR_ALPHA * p_value) / (user_total + LR_ALPHA)
    return math.log(p_value / p_user)


def _hour_unusualness(hours: list[float], hour: int) -> float:
    """-log(24 p(hour | user)) on a circular, smoothed histogram: 0 = as likely as any hour."""
    n = sum(hours)
    smoothed = sum(w * hours[(hour + k) % 24] for k, w in ((-2, .25), (-1, .5), (0, 1.), (1, .5), (2, .25)))
    p = (smoothed / 2.5 + 2.0 / 24) / (n + 2.0)
    return -math.log(24 * p)


def on_lists(enriched: EnrichedEvent, role: str) -> list[str]:
    """The named lists with this role the event's address or ASN is on (``enrich/lists.py``)."""
    return sorted(name for name, has in enriched.roles if has == role)


def _travel(enriched: EnrichedEvent, profile: UserProfile, facts: dict[str, Any]) -> tuple[float, float, float]:
    last, geo = profile.last_success, enriched.geo
    if last is None or not geo.has_coordinates or on_lists(enriched, TRAVEL_EXEMPT):
        # a travel_exempt network (satellite, mobile carrier, proxy) places its users anywhere: no journey
        return math.nan, math.nan, 0.0
    at, lat, lon, accuracy = last
    km = haversine_km(lat, lon, geo.latitude, geo.longitude)
    slack_km = max(0.0, km - accuracy - geo.accuracy_km)
    seconds = max(enriched.event.ts - at, MIN_TRAVEL_S)
    kmh = slack_km / (seconds / HOUR)
    facts.update(km=km, kmh=kmh, minutes=seconds / 60)
    return km, kmh, float(kmh > AIRLINER_KMH)


def _amount(enriched: EnrichedEvent, profile: UserProfile,
            facts: dict[str, Any]) -> tuple[float, float, float, float]:
    """log1p(amount); its z-score against the user's amounts in the same currency; 1.0 when the user
    moved no amount before; and 1.0 when they did, but never in this currency (44 XAU is not 44 EUR:
    without its own history an amount's size is unknown), NaN with no amount history."""
    event = enriched.event
    amount = event.amount
    if amount is None:
        return math.nan, math.nan, 0.0, math.nan
    x = math.log1p(amount)
    facts["amount"], facts["currency"] = amount, event.currency or "no currency"
    if not profile.amounts:
        return x, math.nan, 1.0, math.nan
    stats = profile.amount_stats(event.currency)
    if stats is None:
        return x, math.nan, 0.0, 1.0
    n, mean, std = stats
    z = (x - mean) / max(std, 0.25 if n > 1 else 0.5)
    facts["amount_zscore"] = z
    return x, z, 0.0, 0.0


def _payee_age(enriched: EnrichedEvent, profile: UserProfile, facts: dict[str, Any]) -> float:
    """Hours since the event's payee was first added or paid: 0 for one never seen (the
    ``new_payee`` case), at least a second for a known one, ``PAYEE_SETTLED_S`` (30 days) at most; NaN without
    a payee or without history (nothing is known either way, as for ``new_payee``). The scam's own
    add_payee then pay must not make the payment look habitual."""
    event = enriched.event
    if not event.payee_id or profile.events == 0:
        return math.nan
    added = profile.payee_added_at(event.payee_id)
    if added is None:
        return 0.0
    seconds = min(max(event.ts - added, 1.0), PAYEE_SETTLED_S)
    facts["payee_added_min"] = seconds / 60
    return seconds / HOUR


def _missing_client_ids(enriched: EnrichedEvent, profile: UserProfile, facts: dict[str, Any]) -> float:
    """How many of the client's own identifiers (device id, User-Agent) the event lacks though the
    user's earlier events sent them: a tool that keeps no cookie and sends no header must not look
    more familiar than a new device (0 without history, as for ``new_device``)."""
    event = enriched.event
    missing = [name for name, sent, before in (("device id", event.device_id, profile.devices),
                                               ("User-Agent", event.user_agent, profile.user_agents))
               if not sent and before]
    if missing:
        facts["missing_ids"] = " and ".join(missing)
    return float(len(missing))


def _session(enriched: EnrichedEvent, profile: UserProfile) -> dict[str, float]:
    """An in-session action judged with its sign-in: how it was decided, what changed since, pace."""
    event = enriched.event
    now = event.ts
    if event.action == "login":
        return dict.fromkeys(_SESSION_SIGNALS, 0.0) | {"session_age_min": math.nan}
    entry = profile.session_of(enriched)
    if entry is None:
        return dict.fromkeys(_SESSION_SIGNALS, 0.0) | {"session_age_min": math.nan, "session_unknown": 1.0}
    signed_in_at, state, ip, network, device, browser, sensitive = entry
    auth = event.session.auth_time
    # the app says the session reached a higher level after the sign-in: its step-up was passed
    proven = bool(event.session.acr and event.session.acr != "aal1" and auth is not None
                  and auth.timestamp() >= signed_in_at)
    changed = lambda before, now_: float(bool(before) and bool(now_) and before != now_)  # noqa: E731
    return {
        "session_step_up_failed": float(state in (STEP_UP_FAILED, DENIED)),
        "session_unverified": float(state == STEP_UP_PENDING and not proven),
        "session_unknown": 0.0,
        "session_new_ip": changed(ip, event.ip),
        "session_new_network": changed(network, enriched.geo.network),
        "session_new_device": changed(device, event.device_id),
        "session_new_browser": changed(browser, enriched.ua.browser),
        "session_age_min": max(0.0, now - signed_in_at) / 60,
        "session_sensitive_10m": float(sum(1 for at in sensitive if now - 600 <= at <= now)),
    }


_SESSION_SIGNALS = ("session_step_up_failed", "session_unverified", "session_unknown", "session_new_ip",
                    "session_new_network", "session_new_device", "session_new_browser", "session_age_min",
                    "session_sensitive_10m")


def extract(enriched: EnrichedEvent, profile: UserProfile, context: Context) -> Signals:
    """All signals for one event, from the state before it."""
    event, geo, ua = enriched.event, enriched.geo, enriched.ua
    now = event.ts
    has_history = profile.events > 0
    place = place_key(enriched)
    facts: dict[str, Any] = {"action": event.action, "country": geo.country, "place": place,
                             "browser": ua.browser, "os": ua.os, "hour": event.timestamp.hour,
                             "unknown_reason": geo.unknown_reason}
    km, kmh, impossible = _travel(enriched, profile, facts)
    anonymous = on_lists(enriched, ANONYMIZER)
    if anonymous:
        facts["anonymizer_lists"] = ", ".join(anonymous)
    amount_log, amount_z, first_payment, new_currency = _amount(enriched, profile, facts)
    novel = lambda table, key: float(has_history and bool(key) and key not in table)  # noqa: E731
    values: dict[str, float] = {
        "km_from_last_success": km,
        "kmh_from_last_success": kmh,
        "impossible_travel": impossible,
        "unknown_location": float(not geo.known),
        "new_country": novel(profile.countries, geo.country),
        "new_city": novel(profile.cities, place if geo.city else None),
        "new_network": novel(profile.networks, geo.network),
        "new_ip": novel(profile.ips, event.ip),
        "new_device": novel(profile.devices, event.device_id),
        "new_browser": novel(profile.browsers, ua.browser),
        "new_os": novel(profile.oses, ua.os),
        "missing_client_ids": _missing_client_ids(enriched, profile, facts),
        "trusted_device": float(bool(event.device_id) and profile.is_trusted(f"device:{event.device_id}", 0)),
        "trusted_place": float(geo.known and profile.is_trusted(f"place:{place}", 0)),
        "devices_30d": float(profile.devices_since(now - 30 * DAY)
                             + (event.device_id is not None and event.device_id not in profile.devices)),
        "amount_log": amount_log,
        "amount_zscore": amount_z,
        "first_payment": first_payment if event.action == "payment" else 0.0,
        "new_currency": new_currency,
        "new_payee": novel(profile.payees, event.payee_id) if event.payee_id else 0.0,
        "payee_added_h": _payee_age(enriched, profile, facts),
        "hour_unusualness": _hour_unusualness(profile.hours, event.timestamp.hour) if event.action == "login" else 0.0,
        "failed_logins_15m": float(profile.failures_since(now - 900)),
        "failed_logins_1h": float(profile.failures_since(now - HOUR)),
        "ip_failures_1h": float(context.ip.failures),
        "ip_users_1h": float(context.ip.distinct_users),
        "anonymizer_network": float(bool(anonymous)),
        "login_failed": float(event.action == "login" and not event.success),
        "action_sensitivity": ACTION_SENSITIVITY.get(event.action, UNKNOWN_ACTION_SENSITIVITY),
        "hours_since_step_up": (min((now - profile.last_step_up_at) / HOUR, NEVER_STEPPED_UP_H)
                                if profile.last_step_up_at is not None else NEVER_STEPPED_UP_H),
        "history_logins": float(profile.logins),
        **_session(enriched, profile),
        "step_ups_failed_24h": float(profile.step_up_failures_since(now - DAY)),
    }
    attrs, population = attribute_values(enriched), context.population
    for attribute, name in _LR_NAMES:
        value = attrs.get(attribute)
        values[name] = (likelihood_ratio(population.get(attribute, _NEVER_COUNTED), profile.seen(attribute, value),
                                         profile.total(attribute)) if value else 0.0)
    return Signals(values, facts)


_LR_NAMES = tuple((attribute, f"lr_{attribute}") for attribute in FREEMAN_ATTRIBUTES)
_NEVER_COUNTED = GlobalCount()


@lru_cache(maxsize=256)
def _fields(template: str) -> tuple[str, ...]:
    """The names a message quotes (parsed once per message, not once per event)."""
    return tuple(name for _, name, _, _ in Formatter().parse(template) if name)


def _format(template: str, fact: Callable[[str], Any]) -> str:
    """Fill a message; a fact that is missing or NaN leaves the plain message instead of failing."""
    quoted = {}
    for name in _fields(template):
        value = fact(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return template.split("{")[0].strip().rstrip("(") or template
        quoted[name] = value
    return template.format_map(quoted)


#: What the end user may be told about each reason code (``/score`` ``reasons[].user_message``):
#: fixed sentences with no place, address, network, device, amount or count, so a challenge page
#: teaches an attacker nothing about the account's usual habits.
USER_MESSAGES: dict[str, str] = {
    "geo_distance": "This sign-in is from somewhere other than usual.",
    "geo_velocity": "This sign-in is from somewhere other than usual.",
    "impossible_travel": "This sign-in is from somewhere other than usual.",
    "unknown_location": "We could not tell where this sign-in comes from.",
    "new_country": "This sign-in is from somewhere other than usual.",
    "new_city": "This sign-in is from somewhere other than usual.",
    "rare_country": "This sign-in is from somewhere other than usual.",
    "untrusted_place": "This sign-in is from somewhere other than usual.",
    "new_network": "This sign-in comes from a network you have not used before.",
    "new_ip": "This sign-in comes from a network you have not used before.",
    "rare_ip": "This sign-in comes from a network you have not used before.",
    "rare_network": "This sign-in comes from a network you have not used before.",
    "new_device": "This sign-in is from a device we have not seen before.",
    "new_browser": "This sign-in is from a device we have not seen before.",
    "new_os": "This sign-in is from a device we have not seen before.",
    "untrusted_device": "This sign-in is from a device we have not seen before.",
    "missing_client_ids": "This request does not identify its device the way yours usually do.",
    "rare_user_agent": "This sign-in is from a device we have not seen before.",
    "rare_browser": "This sign-in is from a device we have not seen before.",
    "rare_os": "This sign-in is from a device we have not seen before.",
    "rare_device_type": "This sign-in is from a device we have not seen before.",
    "many_devices": "Your account was used from several devices recently.",
    "amount": "This payment needs an extra check.",
    "unusual_amount": "This payment is larger than usual.",
    "first_payment": "This is the first payment from your account.",
    "new_currency": "This is the first payment in this currency from your account.",
    "new_payee": "This payment goes to someone you have not paid before.",
    "recent_payee": "This payment goes to someone added to your account only recently.",
    "unusual_time": "This sign-in is at an unusual time for you.",
    "recent_failures": "There were several failed sign-in attempts on your account.",
    "recent_failures_1h": "There were several failed sign-in attempts on your account.",
    "ip_failures": "This network has had many failed sign-in attempts.",
    "ip_many_users": "This network has had many failed sign-in attempts.",
    "anonymizer_network": "This request comes through an anonymizing network.",
    "login_failed": "The password was not correct.",
    "sensitive_action": "This action needs an extra check.",
    "no_recent_step_up": "You have not confirmed your identity for a while.",
    "little_history": "We do not know this account's habits yet.",
    "session_step_up_failed": "This session was not confirmed.",
    "session_unverified": "This session was not confirmed.",
    "session_unknown": "We could not match this action to a sign-in.",
    "session_ip_changed": "This session changed network since you signed in.",
    "session_network_changed": "This session changed network since you signed in.",
    "session_device_changed": "This session changed device since you signed in.",
    "session_browser_changed": "This session changed device since you signed in.",
    "session_age": "You signed in a long time ago.",
    "session_pace": "Many sensitive actions were made in a short time.",
    "step_ups_failed": "There were several failed confirmations on your account.",
}
