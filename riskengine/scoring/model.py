"""Step 5 of the flow: signals -> a risk in [0, 1] and per-feature contributions.

Until a trained model is promoted, ``StatisticalScorer`` serves: Freeman et
al.'s (NDSS 2016) likelihood ratios, counted only as evidence of novelty, plus
the few hard signals no attacker model should outvote. It needs no labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from riskengine.scoring.compiler import compile_model
from riskengine.scoring.trees import CompiledModel
from riskengine.features import FEATURE_NAMES, Signals
from riskengine.profiles import FREEMAN_ATTRIBUTES

STATISTICAL_VERSION = "freeman-statistical@1"
ISOTONIC_MIN_POSITIVES = 500
#: a floor at least this high (the default policy's medium band) adds its evidence to a model's reasons
FLOOR_EXPLAINS = 0.3
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
        # alone below the default medium band (0.26); with any other novelty a step-up
        # (NaN, as in events recorded before the signal existed, is no evidence)
        evidence["anonymizer_network"] = 3.0 * float(v.get("anonymizer_network", 0.0) > 0)
        evidence["impossible_travel"] = 8.0 * v["impossible_travel"]
        z = v["amount_zscore"]
        evidence["amount_zscore"] = 1.5 * max(0.0, z - 2.0) if not math.isnan(z) else 0.0
        evidence["new_payee"] = 2.5 * v["new_payee"]
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
        return {k: w for k, w in evidence.items() if w != 0.0}

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

        z = col["amount_zscore"]
        terms = [floored(col[f"lr_{a}"]) for a in FREEMAN_ATTRIBUTES] + [
            3.0 * col["new_device"],
            3.0 * (col["anonymizer_network"] > 0).astype(np.float64),    # NaN: no evidence
            8.0 * col["impossible_travel"],
            np.where(np.isnan(z), 0.0, 1.5 * floored(z - 2.0)),
            2.5 * col["new_payee"],
            1.0 * capped(col["failed_logins_15m"], 6.0),
            3.0 * log_over(col["ip_users_1h"], 3.0),
            2.0 * log_over(col["ip_failures_1h"], 5.0),
            15.0 * col["session_step_up_failed"],
            8.0 * col["session_unverified"],
            5.0 * col["session_new_device"],
            5.0 * col["session_new_browser"],
            3.0 * col["session_new_network"],
            1.0 * floored(col["session_sensitive_10m"] - 5.0),
            3.0 * capped(col["step_ups_failed_24h"], 5.0),
            -3.0 * col["trusted_device"],
            -3.0 * col["trusted_place"],
        ]
        total = np.zeros(len(z))
        for term in terms:                    # a zero term adds nothing, as evidence() leaves it out
            total += term
        scale = self.scale
        return np.array([1.0 - math.exp(-t / scale) for t in floored(total).tolist()])


class RiskModel(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees on the ``FEATURES`` row, calibrated on the latest rows.

    ``monotonic_cst`` (``features.MONOTONIC`` for ``FEATURES`` rows) fixes the way each column may
    move risk, so no fit can learn that more novelty or a new payee is safer. ``anomaly_floor``
    (``FEATURES`` rows only) is the scale of the label-free statistical score the risk never goes
    below: what the training data never showed still counts. Rows must come in time order: the last ``calibration_share`` of them (the most
    recent) calibrate the probabilities, so calibration sees the natural attack rate
    while the trees train with balanced class weights. ``calibration="auto"`` uses
    isotonic regression when the slice holds enough attacks to fit a step function
    and Platt's sigmoid otherwise, which keeps the trees' ranking intact on small data.
    """

    def __init__(self, max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 l2_regularization: float = 1.0, class_weight: str | None = "balanced",
                 calibration_share: float = 0.2, calibration: str = "auto", random_state: int | None = 0,
                 monotonic_cst: Sequence[int] | None = None, anomaly_floor: float | None = None) -> None:
        self.max_iter, self.learning_rate, self.max_leaf_nodes = max_iter, learning_rate, max_leaf_nodes
        self.l2_regularization, self.class_weight = l2_regularization, class_weight
        self.calibration_share, self.calibration, self.random_state = calibration_share, calibration, random_state
        self.monotonic_cst, self.anomaly_floor = monotonic_cst, anomaly_floor

    def fit(self, X, y) -> "RiskModel":
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        classes = np.unique(y)
        if len(classes) != 2:
            raise ValueError(f"Only binary classification is supported: RiskModel scores attack or not, "
                             f"and y has {len(classes)} class(es)")
        empty = np.isnan(X).all(axis=0)
        if empty.any():
            # a signal the data never has (amounts in a logins-only set) would break the binning;
            # a constant column is never split on, so NaN at scoring time changes nothing
            X = X.copy()
            X[:, empty] = 0.0
        n_cal = max(int(len(y) * self.calibration_share), 1)
        for part, labels in (("the training rows", y[:-n_cal]), (f"the calibration rows (latest {n_cal})", y[-n_cal:])):
            if len(np.unique(labels)) != 2:
                raise ValueError(f"{part} hold one class: RiskModel trains on earlier rows and calibrates on "
                                 "the latest, so both need attacks and non-attacks; pass rows in time order")
        trees = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization, class_weight=self.class_weight, early_stopping=False,
            monotonic_cst=None if self.monotonic_cst is None else list(self.monotonic_cst),
            random_state=self.random_state).fit(X[:-n_cal], y[:-n_cal])
        method = self.calibration
        if method == "auto":
            positives = int(np.sum(y[-n_cal:] == classes[1]))
            method = "isotonic" if positives >= ISOTONIC_MIN_POSITIVES else "sigmoid"
        # frozen trees predict the same in every fold, so one split over the whole slice gives the
        # calibrator the same scores as k folds, in one pass, and works on a slice of a few rows
        one_split = [(np.arange(n_cal), np.arange(n_cal))]
        self.calibrated_ = CalibratedClassifierCV(FrozenEstimator(trees), method=method, cv=one_split).fit(
            X[-n_cal:], y[-n_cal:])
        self.classes_ = self.calibrated_.classes_
        return self

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True          # a missing signal is NaN, as HistGradientBoosting reads it
        tags.classifier_tags.multi_class = False
        return tags

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        proba = self.calibrated_.predict_proba(X)
        if self.anomaly_floor is not None:
            risk = np.maximum(proba[:, 1], self.floor(X))
            proba = np.column_stack([1.0 - risk, risk])
        return proba

    def floor(self, X: np.ndarray) -> np.ndarray:
        """The label-free risk of each ``FEATURES`` row (zeros without ``anomaly_floor``)."""
        if self.anomaly_floor is None:
            return np.zeros(len(X))
        return floor_of(StatisticalScorer(self.anomaly_floor), X)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class TrainedScorer:
    """Serves a trained model: compiled trees for speed, Saabas path contributions for reasons.

    Takes the registry's ``CompiledModel`` (data, no code) or a fitted ``RiskModel`` held in
    memory (training, notebooks), which it compiles; either way one evaluator scores.
    Saabas (tree-path) attribution splits the raw log-odds exactly into a bias plus one
    share per feature, in the same pass that finds the leaves; TreeSHAP is fairer with
    correlated features but costs far more per event and another dependency.
    """

    def __init__(self, model: CompiledModel | RiskModel, version: str, anomaly_floor: float | None = None,
                 feature_names: Sequence[str] | None = None) -> None:
        self.version = version
        self.compiled = as_compiled(model)
        # a model registered before a feature was added reads its own columns of today's rows
        self.feature_names = tuple(feature_names) if feature_names is not None else FEATURE_NAMES
        self._columns = (None if self.feature_names == FEATURE_NAMES
                         else [FEATURE_NAMES.index(name) for name in self.feature_names])
        if anomaly_floor is None and isinstance(model, RiskModel):
            anomaly_floor = model.anomaly_floor
        self.floor = StatisticalScorer(anomaly_floor) if anomaly_floor is not None else None

    @classmethod
    def loaded(cls, model: CompiledModel, entry: Any) -> "TrainedScorer":
        """A registered model as served: the trees, and the floor scale its signed metadata names."""
        return cls(model, entry.version, entry.metadata.get("anomaly_floor"), entry.metadata.get("feature_names"))

    def score(self, signals: Signals) -> Score:
        row = signals.row()
        if self._columns is not None:
            row = [row[i] for i in self._columns]
        risk, contributions = self.compiled.score_one(row)
        explained = {n: c for n, c in zip(self.feature_names, contributions) if c > 0}
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
        risk = self.compiled.predict_proba(X if self._columns is None else X[:, self._columns])[:, 1]
        return risk if self.floor is None else np.maximum(risk, floor_of(self.floor, X))


def floor_of(scorer: "StatisticalScorer", X: np.ndarray) -> np.ndarray:
    """The label-free risk of each ``FEATURES`` row (vectorized; equal to ``scorer.score`` per row)."""
    return scorer.risks(X)


def as_compiled(model: Any) -> CompiledModel:
    """The one evaluator's form of a model: a ``CompiledModel`` as it is, a fitted ``RiskModel``'s
    calibrated trees (or any estimator ``compile_model`` supports) compiled."""
    if isinstance(model, CompiledModel):
        return model
    if isinstance(model, RiskModel):
        check_is_fitted(model)
        model = model.calibrated_
    return compile_model(model)
