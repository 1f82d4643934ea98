"""Step 5 of the flow, trained: ``RiskModel``, the scikit-learn estimator the lab fits and the
registry stores compiled. Needs the ``riskengine[lab]`` extra; the service runs ``scorers.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

# what the service runs lives in scorers.py (no scikit-learn); re-exported for the lab and notebooks
from riskengine.scoring.scorers import (ANOMALY_COLUMN, FLOOR_EXPLAINS, FLOOR_SIGNALS,  # noqa: F401
                                        STATISTICAL_VERSION, Score, Scorer, StatisticalScorer, TrainedScorer,
                                        anomaly_of, as_compiled, floor_of)

ISOTONIC_MIN_POSITIVES = 500


class RiskModel(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees on the ``FEATURES`` row, calibrated on the latest rows.

    ``monotonic_cst`` (``features.MONOTONIC`` for ``FEATURES`` rows) fixes the way each column may
    move risk, so no fit can learn that more novelty or a new payee is safer. ``anomaly_floor``
    (``FEATURES`` rows only) is the scale of the label-free statistical score the risk never goes
    below: what the training data never showed still counts. ``anomaly_input`` (``FEATURES`` rows
    only) appends that label-free score (``StatisticalScorer()``'s risk) as one more column, with a
    rising constraint when ``monotonic_cst`` is set: a stacked input the trees may weigh, which (unlike
    the floor) they can also learn to discount. Rows must come in time order: the last ``calibration_share`` of them (the most
    recent) calibrate the probabilities, so calibration sees the natural attack rate
    while the trees train with balanced class weights. ``calibration="auto"`` uses
    isotonic regression when the slice holds enough attacks to fit a step function
    and Platt's sigmoid otherwise, which keeps the trees' ranking intact on small data.
    """

    def __init__(self, max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 l2_regularization: float = 1.0, class_weight: str | None = "balanced",
                 calibration_share: float = 0.2, calibration: str = "auto", random_state: int | None = 0,
                 monotonic_cst: Sequence[int] | None = None, anomaly_floor: float | None = None,
                 anomaly_input: bool = False, floor_signals: Sequence[str] | None = None) -> None:
        self.max_iter, self.learning_rate, self.max_leaf_nodes = max_iter, learning_rate, max_leaf_nodes
        self.l2_regularization, self.class_weight = l2_regularization, class_weight
        self.calibration_share, self.calibration, self.random_state = calibration_share, calibration, random_state
        self.monotonic_cst, self.anomaly_floor, self.anomaly_input = monotonic_cst, anomaly_floor, anomaly_input
        self.floor_signals = floor_signals

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
        X, monotonic = self._stacked(X), self.monotonic_cst
        if self.anomaly_input and monotonic is not None:
            monotonic = [*monotonic, 1]                   # more anomaly is never safer
        n_cal = max(int(len(y) * self.calibration_share), 1)
        for part, labels in (("the training rows", y[:-n_cal]), (f"the calibration rows (latest {n_cal})", y[-n_cal:])):
            if len(np.unique(labels)) != 2:
                raise ValueError(f"{part} hold one class: RiskModel trains on earlier rows and calibrates on "
                                 "the latest, so both need attacks and non-attacks; pass rows in time order")
        trees = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization, class_weight=self.class_weight, early_stopping=False,
            monotonic_cst=None if monotonic is None else list(monotonic),
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
        proba = self.calibrated_.predict_proba(self._stacked(X))
        if self.anomaly_floor is not None:
            risk = np.maximum(proba[:, 1], self.floor(X))
            proba = np.column_stack([1.0 - risk, risk])
        return proba

    def _stacked(self, X: np.ndarray) -> np.ndarray:
        """The rows with the anomaly column appended when ``anomaly_input`` (else as they are)."""
        return np.column_stack([X, anomaly_of(X)]) if self.anomaly_input else X

    def floor(self, X: np.ndarray) -> np.ndarray:
        """The label-free risk of each ``FEATURES`` row (zeros without ``anomaly_floor``)."""
        if self.anomaly_floor is None:
            return np.zeros(len(X))
        return floor_of(StatisticalScorer(self.anomaly_floor, self.floor_signals), X)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
