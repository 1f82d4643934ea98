"""Step 5 of the flow: signals -> a risk in [0, 1] and per-feature contributions, as served.

Until a trained model is promoted, ``StatisticalScorer`` serves: Freeman et
al.'s (NDSS 2016) likelihood ratios, counted only as evidence of novelty, plus
the few hard signals no attacker model should outvote. It needs no labels.
``TrainedScorer`` runs a registered model's compiled trees. Nothing here imports
scikit-learn: the serving install has none (the estimator is ``model.RiskModel``,
in the ``riskengine[lab]`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from riskengine.scoring.trees import CompiledModel
from riskengine.features import FEATURE_NAMES, RECENT_PAYEE_H, Signals
from riskengine.profiles import FREEMAN_ATTRIBUTES

if TYPE_CHECKING:
    from riskengine.scoring.model import RiskModel

STATISTICAL_VERSION = "freeman-statistical@1"
#: a floor at least this high (the default policy's medium band) adds its evidence to a model's reasons
FLOOR_EXPLAINS = 0.3
#: the floor's evidence: the user's own money anomaly (an amount far above their usual, a payee never paid
#: or added less than ``RECENT_PAYEE_H`` ago).
#: Login novelty (Freeman's likelihood ratios, a new device) and session evidence are left to the trees,
#: which learn them from many attacker classes: as a floor they raised legitimate logins' risk (and so
#: every threshold) more than they caught (README, "Stacked, floor or both", measured).
FLOOR_SIGNALS = ("amount_zscore", "new_currency", "new_payee", "payee_added_h")
#: an amount in a currency the user never moved money in: its size against their usual is unknown
#: (the attacker may pick the currency), so it weighs as one 12 standard deviations above it would
#: (1.5 x (12 - 2)): alone it reaches the default medium band through the model's floor (1 - exp(-15/40)
#: = 0.31): a step-up once per new currency
NEW_CURRENCY_EVIDENCE = 15.0
#: the stacked anomaly input's column name (after the ``FEATURES`` columns), its reasons are the anomaly's own
ANOMALY_COLUMN = "anomaly"
#: a never-seen value's likelihood ratio is credited to the plainer "new_*" signal in reasons
_NOVELTY = {"ip": "new_ip", "network": "new_network", "country": "new_country", "browser": "new_browser",
            "os": "new_os"}
#: per Freeman attribute: its novelty signal ("" for none) and its likelihood-ratio signal, named once
_FREEMAN_NAMES = tuple((_NOVELTY.get(a, ""), f"lr_{a}") for a in FREEMAN_ATTRIBUTES)


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

    def __init__(self, scale: float = 10.0, signals: Collection[str] | None = None) -> None:
        """``signals``: count only these evidence names (``FLOOR_SIGNALS`` for the in-session floor)."""
        self.scale = scale
        self.signals = None if signals is None else frozenset(signals)

    def evidence(self, v: dict[str, float]) -> dict[str, float]:
        """Each signal's contribution to the score, in log-likelihood-ratio units."""
        evidence = {novelty if novelty and v.get(novelty) else lr: max(0.0, v[lr]) for novelty, lr in _FREEMAN_NAMES}
        evidence["new_device"] = 3.0 * v["new_device"]
        # a device id or User-Agent left out, where the user's earlier requests sent it, weighs as a new
        # device each: dropping them is no way to look familiar (NaN: recorded before the signal)
        missing = v.get("missing_client_ids", math.nan)
        evidence["missing_client_ids"] = 3.0 * min(missing, 2.0) if missing > 0 else 0.0
        # alone below the default medium band (0.26); with any other novelty a step-up
        # (NaN, as in events recorded before the signal existed, is no evidence)
        evidence["anonymizer_network"] = 3.0 * float(v.get("anonymizer_network", 0.0) > 0)
        evidence["impossible_travel"] = 8.0 * v["impossible_travel"]
        z = v["amount_zscore"]
        evidence["amount_zscore"] = 1.5 * max(0.0, z - 2.0) if not math.isnan(z) else 0.0
        evidence["new_currency"] = NEW_CURRENCY_EVIDENCE * float(v.get("new_currency", math.nan) > 0)   # NaN: none
        evidence["new_payee"] = 2.5 * v["new_payee"]
        # a payee added minutes ago is as new as one never seen (0: new_payee's, counted there); no older
        # payee weighs more (NaN: no payee or no history, or recorded before the signal)
        evidence["payee_added_h"] = 2.5 * float(not v["new_payee"] and 0.0 < v.get("payee_added_h", math.nan) < RECENT_PAYEE_H)
        evidence["failed_logins_15m"] = 1.0 * min(v["failed_logins_15m"], 6.0)
        evidence["ip_users_1h"] = 3.0 * math.log(v["ip_users_1h"] / 3.0) if v["ip_users_1h"] > 3 else 0.0
        evidence["ip_failures_1h"] = 2.0 * math.log(v["ip_failures_1h"] / 5.0) if v["ip_failures_1h"] > 5 else 0.0
        # the session an in-session action belongs to: a sign-in that never proved itself, or a
        # session whose device, browser or network changed under it, is someone else's
        evidence["session_step_up_failed"] = 15.0 * v["session_step_up_failed"]
        evidence["session_unverified"] = 8.0 * v["session_unverified"]
        evidence["session_new_device"] = 5.0 * v["session_new_device"]
        evidence["session_new_browser"] = 5.0 * v["session_new_browser"]
        evidence["session_new_network"] = 3.0 * v["session_new_network"]
        evidence["session_sensitive_10m"] = 1.0 * max(0.0, v["session_sensitive_10m"] - 5.0)   # bills in a row are fine
        evidence["step_ups_failed_24h"] = 3.0 * min(v["step_ups_failed_24h"], 5.0)
        evidence["trusted_device"] = -3.0 * v["trusted_device"]
        evidence["trusted_place"] = -3.0 * v["trusted_place"]
        return {k: w for k, w in evidence.items() if w != 0.0 and (self.signals is None or k in self.signals)}

    def score(self, signals: Signals) -> Score:
        evidence = self.evidence(signals.values)
        total = 0.0
        for weight in evidence.values():      # left to right, as ``risks`` adds its columns (sum() compensates on 3.12+)
            total += weight
        return Score(1.0 - math.exp(-max(0.0, total) / self.scale), evidence, self.version)

    def risks(self, X: np.ndarray) -> np.ndarray:
        """``score(...).risk`` of every ``FEATURES`` row at once, equal to it bit for bit.

        The same terms as :meth:`evidence`, in the same order, over columns: Python's ``max(0.0, x)``
        and ``min(x, c)`` (NaN gives 0.0 and NaN) are spelled with ``np.where``, and the logarithm
        and exponential are ``math``'s, so a batch (evaluation, the notebooks, the promotion gate)
        scores what ``/score`` scores.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"expected rows of {len(FEATURE_NAMES)} FEATURES columns, got shape {X.shape}")
        col = {name: X[:, i] for i, name in enumerate(FEATURE_NAMES)}
        with np.errstate(invalid="ignore", over="ignore"):      # inf - inf is NaN here as in Python
            return self._risks(col)

    def _risks(self, col: dict[str, np.ndarray]) -> np.ndarray:
        def floored(x: np.ndarray) -> np.ndarray:            # max(0.0, x)
            return np.where(x > 0.0, x, 0.0)

        def capped(x: np.ndarray, cap: float) -> np.ndarray:  # min(x, cap)
            return np.where(cap < x, cap, x)

        def log_over(x: np.ndarray, base: float) -> np.ndarray:   # math.log(x / base) if x > base else 0.0
            out = np.zeros(len(x))
            over = np.flatnonzero(x > base)
            out[over] = [math.log(v / base) for v in x[over].tolist()]
            return out

        def counted(name: str) -> bool:
            return self.signals is None or name in self.signals

        def freeman(a: str) -> np.ndarray:                    # named new_* where that flag is set (evidence())
            novelty = _NOVELTY.get(a, "")
            named_new = col[novelty] != 0 if novelty else np.zeros(len(z), dtype=bool)   # NaN is truthy there too
            kept = np.where(named_new, counted(novelty), counted(f"lr_{a}"))
            return np.where(kept, floored(col[f"lr_{a}"]), 0.0)

        z = col["amount_zscore"]
        named = [
            ("new_device", 3.0 * col["new_device"]),
            ("missing_client_ids", np.where(col["missing_client_ids"] > 0.0,
                                            3.0 * capped(col["missing_client_ids"], 2.0), 0.0)),
            ("anonymizer_network", 3.0 * (col["anonymizer_network"] > 0).astype(np.float64)),   # NaN: no evidence
            ("impossible_travel", 8.0 * col["impossible_travel"]),
            ("amount_zscore", np.where(np.isnan(z), 0.0, 1.5 * floored(z - 2.0))),
            ("new_currency", NEW_CURRENCY_EVIDENCE * (col["new_currency"] > 0).astype(np.float64)),
            ("new_payee", 2.5 * col["new_payee"]),
            ("payee_added_h", 2.5 * ((col["new_payee"] == 0) & (0.0 < col["payee_added_h"])
                                     & (col["payee_added_h"] < RECENT_PAYEE_H)).astype(np.float64)),
            ("failed_logins_15m", 1.0 * capped(col["failed_logins_15m"], 6.0)),
            ("ip_users_1h", 3.0 * log_over(col["ip_users_1h"], 3.0)),
            ("ip_failures_1h", 2.0 * log_over(col["ip_failures_1h"], 5.0)),
            ("session_step_up_failed", 15.0 * col["session_step_up_failed"]),
            ("session_unverified", 8.0 * col["session_unverified"]),
            ("session_new_device", 5.0 * col["session_new_device"]),
            ("session_new_browser", 5.0 * col["session_new_browser"]),
            ("session_new_network", 3.0 * col["session_new_network"]),
            ("session_sensitive_10m", 1.0 * floored(col["session_sensitive_10m"] - 5.0)),
            ("step_ups_failed_24h", 3.0 * capped(col["step_ups_failed_24h"], 5.0)),
            ("trusted_device", -3.0 * col["trusted_device"]),
            ("trusted_place", -3.0 * col["trusted_place"]),
        ]
        terms = [freeman(a) for a in FREEMAN_ATTRIBUTES] + [term for name, term in named if counted(name)]
        total = np.zeros(len(z))
        for term in terms:                    # a zero term adds nothing, as evidence() leaves it out
            total += term
        scale = self.scale
        return np.array([1.0 - math.exp(-t / scale) for t in floored(total).tolist()])


class TrainedScorer:
    """Serves a trained model: compiled trees for speed, Saabas path contributions for reasons.

    Takes the registry's ``CompiledModel`` (data, no code) or a fitted ``RiskModel`` held in
    memory (training, notebooks), which it compiles; either way one evaluator scores.
    Saabas (tree-path) attribution splits the raw log-odds exactly into a bias plus one
    share per feature, in the same pass that finds the leaves; TreeSHAP is fairer with
    correlated features but costs far more per event and another dependency.
    """

    def __init__(self, model: CompiledModel | RiskModel, version: str, anomaly_floor: float | None = None,
                 feature_names: Sequence[str] | None = None, anomaly_input: bool | None = None,
                 floor_signals: Sequence[str] | None = None) -> None:
        self.version = version
        self.compiled = as_compiled(model)
        # a model registered before a feature was added reads its own columns of today's rows
        self.feature_names = tuple(feature_names) if feature_names is not None else FEATURE_NAMES
        self._columns = (None if self.feature_names == FEATURE_NAMES
                         else [FEATURE_NAMES.index(name) for name in self.feature_names])
        if anomaly_floor is None and not isinstance(model, CompiledModel):
            from riskengine.scoring.model import RiskModel     # in memory: the lab has scikit-learn
            if isinstance(model, RiskModel):
                anomaly_floor, floor_signals = model.anomaly_floor, model.floor_signals
        if anomaly_input is None:
            anomaly_input = bool(getattr(model, "anomaly_input", False))
        self.floor = StatisticalScorer(anomaly_floor, floor_signals) if anomaly_floor is not None else None
        self.stacked = StatisticalScorer() if anomaly_input else None

    @classmethod
    def loaded(cls, model: CompiledModel, entry: Any) -> "TrainedScorer":
        """A registered model as served: the trees, the columns it was fitted on, and the floor scale,
        floor signals and stacked anomaly input its signed metadata names."""
        return cls(model, entry.version, entry.metadata.get("anomaly_floor"), entry.metadata.get("feature_names"),
                   bool(entry.metadata.get("anomaly_input", False)), entry.metadata.get("floor_signals"))

    def score(self, signals: Signals) -> Score:
        row = signals.row()
        if self._columns is not None:
            row = [row[i] for i in self._columns]
        anomaly = None
        if self.stacked is not None:
            anomaly = self.stacked.score(signals)
            row.append(anomaly.risk)
        risk, contributions = self.compiled.score_one(row)
        explained = {n: c for n, c in zip(self.feature_names, contributions) if c > 0}
        if anomaly is not None and len(contributions) > len(self.feature_names) and contributions[-1] > 0:
            # the stacked column's share goes to the anomaly's own evidence, in proportion: reasons stay exact
            evidence = {n: w for n, w in anomaly.contributions.items() if w > 0}
            total = sum(evidence.values()) or 1.0
            for name, weight in evidence.items():
                explained[name] = explained.get(name, 0.0) + contributions[-1] * weight / total
        if self.floor is not None:
            floor = self.floor.score(signals)
            if floor.risk > risk:               # the anomaly outweighs the model: its evidence is the reason
                return Score(floor.risk, floor.contributions, self.version)
            if floor.risk >= FLOOR_EXPLAINS:    # an anomaly that alone would ask for a step-up is named too
                for name, weight in floor.contributions.items():
                    explained[name] = explained.get(name, 0.0) + weight
        return Score(risk, explained, self.version)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Batch risks, for evaluation and champion comparison (the floor included)."""
        X = np.asarray(X)
        own = X if self._columns is None else X[:, self._columns]
        risk = self.compiled.predict_proba(np.column_stack([own, anomaly_of(X)]) if self.stacked else own)[:, 1]
        return risk if self.floor is None else np.maximum(risk, floor_of(self.floor, X))


def floor_of(scorer: "StatisticalScorer", X: np.ndarray) -> np.ndarray:
    """The label-free risk of each ``FEATURES`` row (vectorized; equal to ``scorer.score`` per row)."""
    return scorer.risks(X)


def anomaly_of(X: np.ndarray) -> np.ndarray:
    """The stacked anomaly input of each ``FEATURES`` row: ``StatisticalScorer()``'s label-free risk."""
    return floor_of(StatisticalScorer(), X) if len(X) else np.zeros(0)


def as_compiled(model: Any) -> CompiledModel:
    """The one evaluator's form of a model: a ``CompiledModel`` as it is, a fitted ``RiskModel``'s
    calibrated trees (or any estimator ``compile_model`` supports) compiled."""
    if isinstance(model, CompiledModel):
        return model
    from riskengine.scoring.compiler import compile_model   # scikit-learn: riskengine[lab]
    from riskengine.scoring.model import RiskModel
    from sklearn.utils.validation import check_is_fitted

    if isinstance(model, RiskModel):
        check_is_fitted(model)
        model = model.calibrated_
    return compile_model(model)
