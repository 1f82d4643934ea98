"""Step 5 of the flow: signals -> a risk in [0, 1] and per-feature contributions.

Until a trained model is promoted, ``StatisticalScorer`` serves: Freeman et
al.'s (NDSS 2016) likelihood ratios, counted only as evidence of novelty, plus
the few hard signals no attacker model should outvote. It needs no labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from riskengine.features import Signals
from riskengine.profiles import FREEMAN_ATTRIBUTES

STATISTICAL_VERSION = "freeman-statistical@1"
#: a never-seen value's likelihood ratio is credited to the plainer "new_*" signal in reasons
_NOVELTY = {"ip": "new_ip", "network": "new_network", "country": "new_country", "browser": "new_browser",
            "os": "new_os"}


@dataclass(frozen=True, slots=True)
class Score:
    """The risk and what pushed it up: ``contributions`` maps feature name -> weight (> 0 riskier)."""

    risk: float
    contributions: dict[str, float] = field(default_factory=dict)
    model_version: str = STATISTICAL_VERSION


class Scorer(Protocol):
    version: str

    def score(self, signals: Signals) -> Score: ...


class StatisticalScorer:
    """Day-one score: sum of log-likelihood-ratio evidence, mapped by ``1 - exp(-s / scale)``.

    A user with ten logins who appears from a new network, country and device
    scores about 0.6 (medium); everything new about 0.9; known places ~0.
    """

    version = STATISTICAL_VERSION

    def __init__(self, scale: float = 10.0) -> None:
        self.scale = scale

    def evidence(self, v: dict[str, float]) -> dict[str, float]:
        """Each signal's contribution to the score, in log-likelihood-ratio units."""
        evidence = {_NOVELTY.get(a, f"lr_{a}") if v.get(_NOVELTY.get(a, "")) else f"lr_{a}": max(0.0, v[f"lr_{a}"])
                    for a in FREEMAN_ATTRIBUTES}
        evidence["new_device"] = 3.0 * v["new_device"]
        evidence["impossible_travel"] = 8.0 * v["impossible_travel"]
        z = v["amount_zscore"]
        evidence["amount_zscore"] = 1.5 * max(0.0, z - 2.0) if not math.isnan(z) else 0.0
        evidence["new_payee"] = 2.5 * v["new_payee"]
        evidence["failed_logins_15m"] = 1.0 * min(v["failed_logins_15m"], 6.0)
        evidence["ip_users_1h"] = 3.0 * math.log(v["ip_users_1h"] / 3.0) if v["ip_users_1h"] > 3 else 0.0
        evidence["ip_failures_1h"] = 2.0 * math.log(v["ip_failures_1h"] / 5.0) if v["ip_failures_1h"] > 5 else 0.0
        evidence["trusted_device"] = -3.0 * v["trusted_device"]
        evidence["trusted_place"] = -3.0 * v["trusted_place"]
        return {k: w for k, w in evidence.items() if w != 0.0}

    def score(self, signals: Signals) -> Score:
        evidence = self.evidence(signals.values)
        total = max(0.0, sum(evidence.values()))
        return Score(1.0 - math.exp(-total / self.scale), evidence, self.version)
