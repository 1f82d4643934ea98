"""Policies as files: parse and validate a YAML policy, and reload it when it changes.

A file is checked completely before it is used; each error names the file, the
field and the reason. ``PolicyWatcher`` swaps in a changed file only when it is
valid, so a broken edit never replaces the policy that is serving.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from riskengine.policy.decide import Band, Level, Policy, PolicyRule, Rule, When
from riskengine.policy.exemptions import Exemption, LowValue, RiskAnalysis, Threshold
from riskengine.policy.schema import (EXEMPTION_TYPES, Bands, LevelSpec, LowValueSpec, PolicyDocument, PolicyRuleSpec,
                                      RiskAnalysisSpec, RuleSpec, show)

PRESETS_DIR = Path(__file__).parent / "presets"
PRESETS = ("default", "psd2", "hipaa", "gdpr")


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
    except RecursionError:
        raise PolicyError([f"{source}: not a policy (nested too deeply)"]) from None
    if document is None:
        raise PolicyError([f"{source}: the file is empty; a policy needs at least name and version"])
    if not isinstance(document, dict):
        raise PolicyError([f"{source}: must be a mapping of policy fields, got {show(document)}"])
    try:
        parsed = PolicyDocument.model_validate(document)
    except ValidationError as error:
        raise PolicyError(_messages(error, source)) from None
    return _Builder(source).policy(parsed, hashlib.sha256(data).hexdigest())


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


def _messages(error: ValidationError, source: str) -> list[str]:
    """Pydantic's errors as ``file field: reason`` lines, in the file's own terms."""
    lines = []
    for problem in error.errors(include_url=False):
        loc, kind, value = list(problem["loc"]), problem["type"], problem.get("input")
        if len(loc) > 2 and loc[0] == "exemptions" and loc[2] in EXEMPTION_TYPES:
            del loc[2]                                       # the union's branch is not a field of the file
        if kind == "unknown_field":
            known = problem["ctx"]["known"]
            lines += [_line(source, loc + [field], f"unknown field; known: {known}")
                      for field in problem["ctx"]["fields"]]
            continue
        if loc and loc[-1] == "[key]":                       # a bad name: say whose
            loc.pop()
            loc[-1] = str(loc[-1])
            reason = f"{str(loc[-2]).rstrip('s').replace('_', ' ')} {problem['msg']}"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("type")
            tag = value.get("type") if isinstance(value, dict) else None
            reason = f"must be {' or '.join(EXEMPTION_TYPES)}, got {show(tag)}"
        elif kind == "missing":
            reason = "is required"
        elif kind == "too_short":
            reason = f"must not be empty, got {show(value)}" if not isinstance(value, list) else \
                "must be a non-empty list"
        elif kind in ("policy", "literal_error"):
            reason = problem["msg"]
        elif kind in ("dict_type", "model_type", "model_attributes_type"):
            reason = f"must be a mapping, got {show(value)}"
        elif kind == "list_type":
            reason = f"must be a list, got {show(value)}"
        else:
            reason = f"{problem['msg'][0].lower()}{problem['msg'][1:]}, got {show(value)}"
        lines.append(_line(source, loc, reason))
    return lines


def _line(source: str, loc: list, reason: str) -> str:
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return f"{source} {where}: {reason}" if where else f"{source}: {reason}"


class _Builder:
    """The checks that need the whole file (names defined elsewhere in it, order of bands), and
    the ``Policy`` they allow; collects every problem with its field path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def fail(self, where: str, reason: str) -> None:
        self.errors.append(_line(self.source, [where] if where else [], reason))

    def level(self, value: str | None, where: str, names: dict[str, int]) -> str | None:
        if value is not None and value not in names:
            self.fail(where, f"unknown level {show(value)}; known: {', '.join(names)}")
            return None
        return value

    def policy(self, doc: PolicyDocument, sha256: str) -> Policy:
        levels = self.levels(doc.levels)
        names = {level.name: rank for rank, level in enumerate(levels)}
        bands = self.bands(doc.bands, names, doc.deny_at)
        found = self.exemptions(doc.exemptions, names)
        defaults = {"shadow": doc.shadow, "on_failure": doc.on_failure}
        actions = {}
        for action, spec in doc.actions.items():
            rule = self.rule(spec, f"actions.{action}", action, levels, names, found, defaults)
            if rule is not None:
                actions[action] = rule
        fallback = RuleSpec(requires=list(names)[min(1, len(names) - 1)])
        default_rule = self.rule(doc.default_action or fallback, "default_action", None, levels, names, found,
                                 defaults)
        for where, rule in [(f"actions.{a}", r) for a, r in actions.items()] + [("default_action", default_rule)]:
            if rule is not None and rule.fallback not in (None, "deny") and rule.fallback not in actions:
                self.fail(f"{where}.fallback", f"unknown action {show(rule.fallback)}; use deny or an action "
                          f"listed under actions: {', '.join(actions) or 'none'}")
        rules = self.rules(doc.rules, levels, names)
        if self.errors:
            raise PolicyError(self.errors)
        assert default_rule is not None
        return Policy(version=f"{doc.name}@{doc.version}", levels=tuple(levels), actions=actions,
                      default_rule=default_rule, bands=tuple(bands), deny_at=doc.deny_at, exemptions=found,
                      rules=tuple(rules),
                      description=doc.description.strip(), audit_min_retention_days=doc.audit.min_retention_days,
                      source=self.source, sha256=sha256)

    def levels(self, specs: list[LevelSpec] | None) -> list[Level]:
        if specs is None:
            return [Level("aal1"), Level("aal2", max_age=43200), Level("aal3", max_age=43200)]
        levels, seen = [], set()
        for n, spec in enumerate(specs):
            acr = tuple(spec.acr or [spec.name])
            for alias in sorted({spec.name, *acr}):
                if alias in seen:
                    self.fail(f"levels[{n}]", f"{show(alias)} already names or proves an earlier level")
                seen.add(alias)
            levels.append(Level(spec.name, acr, spec.max_age,
                                tuple(dict.fromkeys(spec.factors)) if spec.factors is not None else None))
        return levels

    def bands(self, spec: Bands | None, names: dict[str, int], deny_at: float) -> list[Band]:
        bands = []
        for name in ("medium", "high"):
            band = getattr(spec, name) if spec is not None else None
            if band is not None:
                at_least = self.level(band.at_least, f"bands.{name}.at_least", names)
                bands.append(Band(name, band.from_, at_least, band.raise_, band.max_age))
        if len(bands) == 2 and bands[0].start >= bands[1].start:
            self.fail("bands.high.from", f"must be above bands.medium.from ({bands[0].start}), got {bands[1].start}")
        if bands and bands[-1].start > deny_at:
            self.fail(f"bands.{bands[-1].name}.from", f"must not be above deny_at ({deny_at}), got {bands[-1].start}")
        return bands

    def rule(self, spec: RuleSpec, where: str, action: str | None, levels: list[Level], names: dict[str, int],
             found: dict[str, Exemption], defaults: dict[str, Any]) -> Rule | None:
        requires = self.level(spec.requires, f"{where}.requires", names)
        if requires is None:
            return None
        max_age = spec.max_age if "max_age" in spec.model_fields_set else levels[names[requires]].max_age
        auto = "deny" if names[requires] > 0 else "step_up"   # fail closed from the second level up
        on_failure = spec.on_failure or defaults["on_failure"] or auto
        shadow = defaults["shadow"] if spec.shadow is None else spec.shadow
        for name in spec.exemptions:
            exemption = found.get(name)
            if exemption is None:
                self.fail(f"{where}.exemptions", f"unknown exemption {show(name)}; defined: "
                          f"{', '.join(found) or 'none (add it under exemptions)'}")
            elif action is None:
                self.fail(f"{where}.exemptions", "exemptions are listed per action, not for unknown actions")
            elif isinstance(exemption, RiskAnalysis) and exemption.kind_of(action) is None:
                self.fail(f"{where}.exemptions", f"{name} has no payment type for action {show(action)}; "
                          f"add it under exemptions.{name}.payment_types.<type>.actions")
        return Rule(requires, max_age, on_failure, shadow, tuple(spec.exemptions), spec.deny_at, spec.fallback)

    def rules(self, specs: list[PolicyRuleSpec], levels: list[Level], names: dict[str, int]) -> list[PolicyRule]:
        """The ordered rules: unique names, a level for each step-up and none for allow or deny."""
        rules, seen = [], set()
        for n, spec in enumerate(specs):
            where, when, then = f"rules[{n}]", spec.when, spec.then
            if spec.name in seen:
                self.fail(f"{where}.name", f"{show(spec.name)} already names an earlier rule")
            seen.add(spec.name)
            if when.risk_at_least is not None and when.risk_below is not None and \
                    when.risk_at_least >= when.risk_below:
                self.fail(f"{where}.when.risk_below", f"must be above risk_at_least ({when.risk_at_least}), "
                          f"got {when.risk_below}")
            if then.decision == "step_up" and then.level is None:
                self.fail(f"{where}.then.level", "is required for step_up")
            elif then.decision != "step_up" and then.level is not None or then.decision != "step_up" and \
                    then.max_age is not None:
                self.fail(f"{where}.then", f"level and max_age are for step_up, not {then.decision}")
            level = self.level(then.level, f"{where}.then.level", names)
            max_age = then.max_age if "max_age" in then.model_fields_set or level is None else \
                levels[names[level]].max_age
            rules.append(PolicyRule(spec.name, When(
                tuple(when.actions or ()), tuple(when.risk_level or ()), when.risk_at_least, when.risk_below,
                tuple(when.countries or ()), tuple(when.asns or ()), tuple(when.lists or ()),
                tuple(when.reasons or ()), tuple((when.attributes or {}).items()), tuple(when.tenants or ())),
                then.decision, level, max_age))
        return rules

    def exemptions(self, specs: dict[str, LowValueSpec | RiskAnalysisSpec], names: dict[str, int]) -> dict[str, Exemption]:
        found: dict[str, Exemption] = {}
        for name, spec in specs.items():
            where = f"exemptions.{name}"
            if isinstance(spec, LowValueSpec):
                if any(isinstance(e, LowValue) for e in found.values()):
                    self.fail(where, "only one low_value exemption per policy: its counters are per user")
                sca_level = self.level(spec.sca_level, f"{where}.sca_level", names) if spec.sca_level else \
                    list(names)[min(1, len(names) - 1)]
                if sca_level is not None:
                    found[name] = LowValue(name, names[sca_level], spec.currency, spec.max_amount,
                                           spec.max_cumulative_amount, spec.max_count, tuple(spec.risk_levels))
                continue
            kinds, rates, owner = {}, {}, {}
            for kind, payment in spec.payment_types.items():
                for action in payment.actions:
                    if action in owner:
                        self.fail(f"{where}.payment_types.{kind}.actions",
                                  f"action {show(action)} is already of type {owner[action]}")
                    owner[action] = kind
                kinds[kind] = tuple(payment.actions)
                rates[kind] = tuple(Threshold(rate.fraud_rate, rate.up_to) for rate in payment.reference_rates)
            found[name] = RiskAnalysis(name, kinds, rates, spec.currency, spec.window_days, tuple(spec.risk_levels))
        return found


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
