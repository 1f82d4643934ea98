"""Policies as files: parse and validate a YAML policy, and reload it when it changes.

A file is checked completely before it is used; each error names the file, the
field and the reason. ``PolicyWatcher`` swaps in a changed file only when it is
valid, so a broken edit never replaces the policy that is serving.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from riskengine.policy.exemptions import Exemption, LowValue, RiskAnalysis, Threshold
from riskengine.policy.decide import FAILURE_MODES, Band, Level, Policy, Rule

PRESETS_DIR = Path(__file__).parent / "presets"
PRESETS = ("default", "psd2", "hipaa", "gdpr")
RISK_LEVELS = ("low", "medium", "high")
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MISSING = object()


class PolicyError(ValueError):
    """A policy file that cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def resolve(setting: Path | str | None) -> Path:
    """``RISKENGINE_POLICY``: a file, or the name of a bundled preset; unset means the default preset."""
    if setting is None or str(setting) == "":
        return PRESETS_DIR / "default.yaml"
    path = Path(setting)
    if not path.exists() and str(setting) in PRESETS:
        return PRESETS_DIR / f"{setting}.yaml"
    return path


def load_policy(path: Path | str) -> Policy:
    """Read, parse and validate a policy file (raises ``PolicyError`` naming what is wrong)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read the policy file ({exc.strerror or exc})"]) from None
    return parse_policy(raw, str(path))


def parse_policy(raw: bytes | str, source: str = "policy.yaml") -> Policy:
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        document = yaml.load(data, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([f"{source} {where}: not valid YAML ({problem})"]) from None
    return _Validator(source).policy(document, hashlib.sha256(data).hexdigest())


class _UniqueKeyLoader(yaml.SafeLoader):
    """A duplicated key (two ``payment:`` entries) is an error, not a silent last-one-wins."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key if isinstance(key, (str, int, float, bool)) else id(key_node))
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


class _Validator:
    """Walks the document once, collecting every problem with its dotted field path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def fail(self, where: str, reason: str) -> None:
        self.errors.append(f"{self.source} {where}: {reason}" if where else f"{self.source}: {reason}")

    # -- typed reads --------------------------------------------------------
    def mapping(self, value: Any, where: str, known: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping{'' if where else ' of policy fields'}, got {_show(value)}")
            return {}
        for key in value:
            if key not in known:
                self.fail(f"{where}.{key}" if where else str(key),
                          f"unknown field; known: {', '.join(known)}")
        return value

    def number(self, data: dict, key: str, where: str, default: Any = _MISSING, low: float | None = None,
               high: float | None = None, nullable: bool = False) -> Any:
        value = data.get(key, default)
        if value is _MISSING:
            self.fail(f"{where}.{key}".lstrip("."), "is required")
            return None
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(f"{where}.{key}".lstrip("."), f"must be a number, got {_show(value)}")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if low is not None and high is not None else \
                f"at least {low}" if low is not None else f"at most {high}"
            self.fail(f"{where}.{key}".lstrip("."), f"must be {bounds}, got {value}")
            return None
        return value

    def seconds(self, data: dict, key: str, where: str, default: Any = _MISSING) -> Any:
        value = data.get(key, default)
        if value is not None and value is not _MISSING and (isinstance(value, bool) or not isinstance(value, int)):
            self.fail(f"{where}.{key}", f"must be whole seconds (an integer) or null, got {_show(value)}")
            return None
        if isinstance(value, int) and value < 0:
            self.fail(f"{where}.{key}", f"must be 0 or more seconds, got {value}")
            return None
        return value

    def boolean(self, data: dict, key: str, where: str, default: Any) -> Any:
        value = data.get(key, default)
        if value is not None and not isinstance(value, bool):
            self.fail(f"{where}.{key}".lstrip("."), f"must be true or false, got {_show(value)}")
            return default
        return value

    def text(self, data: dict, key: str, where: str, default: Any = _MISSING, pattern: re.Pattern | None = None,
             hint: str = "") -> Any:
        value = data.get(key, default)
        if value is _MISSING:
            self.fail(f"{where}.{key}".lstrip("."), "is required")
            return None
        if value is None or value is default:
            return value
        if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
            self.fail(f"{where}.{key}".lstrip("."), f"{hint or 'must be a string'}, got {_show(value)}")
            return None
        return value

    def level(self, data: dict, key: str, where: str, levels: dict[str, int], default: Any = _MISSING) -> Any:
        value = data.get(key, default)
        if value is _MISSING:
            self.fail(f"{where}.{key}", "is required")
            return None
        if value is None or value is default:
            return value
        if value not in levels:
            self.fail(f"{where}.{key}", f"unknown level {_show(value)}; known: {', '.join(levels)}")
            return None
        return value

    def choice(self, data: dict, key: str, where: str, choices: tuple[str, ...], default: Any) -> Any:
        value = data.get(key, default)
        if value is not None and value not in choices:
            self.fail(f"{where}.{key}".lstrip("."), f"must be one of {', '.join(choices)}, got {_show(value)}")
            return default
        return value

    # -- the document -------------------------------------------------------
    def policy(self, doc: Any, sha256: str) -> Policy:
        top = ("name", "version", "description", "levels", "bands", "deny_at", "shadow", "on_failure",
               "default_action", "actions", "exemptions", "audit")
        if doc is None:
            raise PolicyError([f"{self.source}: the file is empty; a policy needs at least name and version"])
        doc = self.mapping(doc, "", top)
        if not doc:
            raise PolicyError(self.errors or [f"{self.source}: the policy is empty"])
        name = self.text(doc, "name", "", pattern=re.compile(r"^[A-Za-z0-9_.\-]{1,64}$"),
                         hint="must be 1-64 letters, digits, '_', '.' or '-'")
        version = doc.get("version", _MISSING)
        if version is _MISSING:
            self.fail("version", "is required (a number or a short text, e.g. 1 or 2026-03)")
        elif isinstance(version, bool) or not isinstance(version, (int, str)) or \
                not re.match(r"^[A-Za-z0-9_.\-]{1,64}$", str(version)):
            self.fail("version", f"must be a number or a short text without '@' or spaces, got {_show(version)}")
        description = self.text(doc, "description", "", default="")
        levels = self.levels(doc.get("levels"))
        ranks = {}
        for rank, level in enumerate(levels):
            for alias in (level.name, *level.acr):
                ranks.setdefault(alias, rank)
        names = {level.name: rank for rank, level in enumerate(levels)}
        deny_at = self.number(doc, "deny_at", "", default=1.0, low=0.0, high=1.0)
        bands = self.bands(doc.get("bands"), names, deny_at)
        shadow = self.boolean(doc, "shadow", "", default=False)
        on_failure = self.choice(doc, "on_failure", "", FAILURE_MODES, default=None)
        found = self.exemptions(doc.get("exemptions"), names)
        defaults = {"shadow": shadow, "on_failure": on_failure}
        actions_doc = doc.get("actions", {})
        if not isinstance(actions_doc, dict):
            self.fail("actions", f"must be a mapping of action name to rule, got {_show(actions_doc)}")
            actions_doc = {}
        actions = {}
        for action, spec in actions_doc.items():
            if not isinstance(action, str) or not _NAME.match(action):
                self.fail(f"actions.{action}", "action names are 1-64 letters, digits, '_', '.', ':' or '-'")
                continue
            rule = self.rule(spec, f"actions.{action}", action, levels, names, found, defaults)
            if rule is not None:
                actions[action] = rule
        fallback = names and list(names)[min(1, len(names) - 1)]
        default_rule = self.rule(doc.get("default_action", {"requires": fallback}), "default_action", None,
                                 levels, names, found, defaults)
        audit = self.mapping(doc.get("audit", {}), "audit", ("min_retention_days",))
        retention = self.number(audit, "min_retention_days", "audit", default=None, low=1, nullable=True)
        if self.errors:
            raise PolicyError(self.errors)
        return Policy(version=f"{name}@{version}", levels=tuple(levels), actions=actions, default_rule=default_rule,
                      bands=tuple(bands), deny_at=float(deny_at), exemptions=found, description=description.strip(),
                      audit_min_retention_days=retention, source=self.source, sha256=sha256)

    def levels(self, value: Any) -> list[Level]:
        if value is None:
            return [Level("aal1"), Level("aal2", max_age=43200), Level("aal3", max_age=43200)]
        if not isinstance(value, list) or not value:
            self.fail("levels", f"must be a non-empty list, weakest first, got {_show(value)}")
            return [Level("aal1")]
        levels, seen = [], set()
        for n, item in enumerate(value):
            where = f"levels[{n}]"
            spec = self.mapping(item, where, ("name", "acr", "max_age"))
            name = self.text(spec, "name", where, pattern=_NAME, hint="must be a short name such as aal2")
            acr = spec.get("acr", name)
            acr = [acr] if isinstance(acr, str) else acr
            if not isinstance(acr, list) or not acr or not all(isinstance(a, str) and a for a in acr):
                self.fail(f"{where}.acr", f"must be an acr value or a list of them, got {_show(spec.get('acr'))}")
                acr = [name or "?"]
            for alias in {name, *acr} - {None}:
                if alias in seen:
                    self.fail(where, f"{_show(alias)} already names or proves an earlier level")
                seen.add(alias)
            max_age = self.seconds(spec, "max_age", where, default=None)
            levels.append(Level(name or f"level{n}", tuple(acr), max_age))
        return levels

    def bands(self, value: Any, names: dict[str, int], deny_at: float | None) -> list[Band]:
        if value is None:
            return []
        spec = self.mapping(value, "bands", ("medium", "high"))
        bands = []
        for band_name in ("medium", "high"):
            if band_name not in spec:
                continue
            where = f"bands.{band_name}"
            band = self.mapping(spec[band_name], where, ("from", "at_least", "raise", "max_age"))
            start = self.number(band, "from", where, low=0.0, high=1.0)
            at_least = self.level(band, "at_least", where, names, default=None)
            steps = band.get("raise", 0)
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                self.fail(f"{where}.raise", f"must be a whole number of levels (0 or more), got {_show(steps)}")
                steps = 0
            max_age = self.seconds(band, "max_age", where, default=None)
            if start is not None:
                bands.append(Band(band_name, float(start), at_least, steps, max_age))
        if len(bands) == 2 and bands[0].start >= bands[1].start:
            self.fail("bands.high.from", f"must be above bands.medium.from ({bands[0].start}), got {bands[1].start}")
        if deny_at is not None and bands and bands[-1].start > deny_at:
            self.fail(f"bands.{bands[-1].name}.from", f"must not be above deny_at ({deny_at}), got {bands[-1].start}")
        return bands

    def rule(self, value: Any, where: str, action: str | None, levels: list[Level], names: dict[str, int],
             found: dict[str, Exemption], defaults: dict[str, Any]) -> Rule | None:
        spec = self.mapping(value, where, ("requires", "max_age", "on_failure", "shadow", "exemptions", "deny_at"))
        requires = self.level(spec, "requires", where, names)
        if requires is None:
            return None
        max_age = self.seconds(spec, "max_age", where, default=levels[names[requires]].max_age)
        auto = "deny" if names[requires] > 0 else "step_up"   # fail closed from the second level up
        on_failure = self.choice(spec, "on_failure", where, FAILURE_MODES, default=defaults["on_failure"] or auto)
        shadow = self.boolean(spec, "shadow", where, default=defaults["shadow"])
        deny_at = self.number(spec, "deny_at", where, default=None, low=0.0, high=1.0, nullable=True)
        listed = spec.get("exemptions", [])
        if not isinstance(listed, list) or not all(isinstance(e, str) for e in listed):
            self.fail(f"{where}.exemptions", f"must be a list of exemption names, got {_show(listed)}")
            listed = []
        for name in listed:
            exemption = found.get(name)
            if exemption is None:
                self.fail(f"{where}.exemptions", f"unknown exemption {_show(name)}; defined: "
                          f"{', '.join(found) or 'none (add it under exemptions)'}")
            elif action is None:
                self.fail(f"{where}.exemptions", "exemptions are listed per action, not for unknown actions")
            elif isinstance(exemption, RiskAnalysis) and exemption.kind_of(action) is None:
                self.fail(f"{where}.exemptions", f"{name} has no payment type for action {_show(action)}; "
                          f"add it under exemptions.{name}.payment_types.<type>.actions")
        return Rule(requires, max_age, on_failure, shadow, tuple(listed), deny_at)

    def exemptions(self, value: Any, names: dict[str, int]) -> dict[str, Exemption]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail("exemptions", f"must be a mapping of exemption name to its settings, got {_show(value)}")
            return {}
        found: dict[str, Exemption] = {}
        for name, spec in value.items():
            where = f"exemptions.{name}"
            if not isinstance(name, str) or not _NAME.match(name):
                self.fail(where, "exemption names are short identifiers such as psd2_low_value")
                continue
            kind = spec.get("type") if isinstance(spec, dict) else None
            if kind == "low_value":
                exemption = self.low_value(spec, where, name, names)
                if exemption is not None and any(isinstance(e, LowValue) for e in found.values()):
                    self.fail(where, "only one low_value exemption per policy: its counters are per user")
            elif kind == "transaction_risk_analysis":
                exemption = self.risk_analysis(spec, where, name)
            else:
                self.fail(f"{where}.type", f"must be low_value or transaction_risk_analysis, got {_show(kind)}")
                continue
            if exemption is not None:
                found[name] = exemption
        return found

    def risk_levels(self, spec: dict, where: str) -> tuple[str, ...]:
        value = spec.get("risk_levels", ["low"])
        if not isinstance(value, list) or not value or any(v not in RISK_LEVELS for v in value):
            self.fail(f"{where}.risk_levels", f"must be a list of {', '.join(RISK_LEVELS)}, got {_show(value)}")
            return ("low",)
        return tuple(value)

    def low_value(self, spec: dict, where: str, name: str, names: dict[str, int]) -> LowValue | None:
        spec = self.mapping(spec, where, ("type", "currency", "max_amount", "max_cumulative_amount", "max_count",
                                          "sca_level", "risk_levels"))
        currency = self.text(spec, "currency", where, default="EUR", pattern=_CURRENCY,
                             hint="must be an ISO 4217 code such as EUR")
        max_amount = self.number(spec, "max_amount", where, default=30.0, low=0.0)
        cumulative = self.number(spec, "max_cumulative_amount", where, default=100.0, low=0.0, nullable=True)
        count = spec.get("max_count", 5)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            self.fail(f"{where}.max_count", f"must be a whole number of payments (1 or more) or null, got {_show(count)}")
        sca_level = self.level(spec, "sca_level", where, names, default=list(names)[min(1, len(names) - 1)])
        risk_levels = self.risk_levels(spec, where)
        if None in (currency, max_amount, sca_level) or (count is not None and not isinstance(count, int)):
            return None
        return LowValue(name, names[sca_level], currency, float(max_amount),
                        None if cumulative is None else float(cumulative), count, risk_levels)

    def risk_analysis(self, spec: dict, where: str, name: str) -> RiskAnalysis | None:
        spec = self.mapping(spec, where, ("type", "currency", "window_days", "risk_levels", "payment_types"))
        currency = self.text(spec, "currency", where, default="EUR", pattern=_CURRENCY,
                             hint="must be an ISO 4217 code such as EUR")
        window = self.number(spec, "window_days", where, default=90.0, low=1.0)
        risk_levels = self.risk_levels(spec, where)
        types = spec.get("payment_types")
        if not isinstance(types, dict) or not types:
            self.fail(f"{where}.payment_types", "is required: payment type -> {actions, reference_rates}")
            return None
        kinds, rates, owner = {}, {}, {}
        for kind, kind_spec in types.items():
            kwhere = f"{where}.payment_types.{kind}"
            kind_spec = self.mapping(kind_spec, kwhere, ("actions", "reference_rates"))
            actions = kind_spec.get("actions")
            if not isinstance(actions, list) or not actions or not all(isinstance(a, str) for a in actions):
                self.fail(f"{kwhere}.actions", f"must be a non-empty list of action names, got {_show(actions)}")
                actions = []
            for action in actions:
                if action in owner:
                    self.fail(f"{kwhere}.actions", f"action {_show(action)} is already of type {owner[action]}")
                owner[action] = kind
            rows = kind_spec.get("reference_rates")
            if not isinstance(rows, list) or not rows:
                self.fail(f"{kwhere}.reference_rates", "must be a non-empty list of {fraud_rate, up_to}")
                rows = []
            thresholds = []
            for n, row in enumerate(rows):
                rwhere = f"{kwhere}.reference_rates[{n}]"
                row = self.mapping(row, rwhere, ("fraud_rate", "up_to"))
                rate = _rate(row.get("fraud_rate"))
                if rate is None:
                    self.fail(f"{rwhere}.fraud_rate", "must be a share (0.0013) or a percentage ('0.13%') "
                              f"between 0 and 100%, got {_show(row.get('fraud_rate'))}")
                up_to = self.number(row, "up_to", rwhere, low=0.0)
                if rate is not None and up_to is not None:
                    thresholds.append(Threshold(rate, float(up_to)))
            kinds[str(kind)], rates[str(kind)] = tuple(actions), tuple(thresholds)
        if None in (currency, window):
            return None
        return RiskAnalysis(name, kinds, rates, currency, float(window), risk_levels)


def _rate(value: Any) -> float | None:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1]) / 100
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        return None
    return float(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- reloading --------------------------------------------------------------------

def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class PolicyWatcher:
    """Re-reads the policy file when its stamp changes, at most once per ``interval`` seconds.

    ``poll`` is cheap enough for the request path (one clock read; one ``stat`` a second)
    and never blocks: while one thread re-reads, the others keep the policy they have.
    """

    def __init__(self, path: Path, on_load: Callable[[Policy], None], on_error: Callable[[str], None],
                 interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.on_load, self.on_error = Path(path), on_load, on_error
        self.interval, self.clock = interval, clock
        self._stamp = _stamp(self.path)
        self._next = clock() + interval
        self._lock = threading.Lock()

    def poll(self) -> None:
        now = self.clock()
        if now < self._next or not self._lock.acquire(blocking=False):
            return
        try:
            self._next = now + self.interval
            self.check()
        finally:
            self._lock.release()

    def check(self) -> None:
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            policy = load_policy(self.path)
        except PolicyError as error:
            self.on_error(str(error))
            return
        self.on_load(policy)
