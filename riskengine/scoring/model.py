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
from sklearn.utils.class_weight import compute_class_weight
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
    ``max_legit_rows`` bounds the trees' fit on large data: past that many legitimate rows, the
    trees see every attack and that many legitimate rows drawn at random (``random_state``), each
    weighted by how many it stands for, so each class weighs what it did; calibration still sees
    every row of its slice.
    """

    def __init__(self, max_iter: int = 200, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 l2_regularization: float = 1.0, class_weight: str | None = "balanced",
                 calibration_share: float = 0.2, calibration: str = "auto", random_state: int | None = 0,
                 monotonic_cst: Sequence[int] | None = None, anomaly_floor: float | None = None,
                 anomaly_input: bool = False, floor_signals: Sequence[str] | None = None,
                 max_legit_rows: int | None = None) -> None:
        self.max_iter, self.learning_rate, self.max_leaf_nodes = max_iter, learning_rate, max_leaf_nodes
        self.l2_regularization, self.class_weight = l2_regularization, class_weight
        self.calibration_share, self.calibration, self.random_state = calibration_share, calibration, random_state
        self.monotonic_cst, self.anomaly_floor, self.anomaly_input = monotonic_cst, anomaly_floor, anomaly_input
        self.floor_signals, self.max_legit_rows = floor_signals, max_legit_rows

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
        rows, weight = self.tree_rows(y[:-n_cal])
        trees = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
            l2_regularization=self.l2_regularization, class_weight=self.class_weight if weight is None else None,
            early_stopping=False, monotonic_cst=None if monotonic is None else list(monotonic),
            random_state=self.random_state).fit(X[:-n_cal][rows], y[:-n_cal][rows], sample_weight=weight)
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

    def tree_rows(self, y: np.ndarray) -> tuple[np.ndarray | slice, np.ndarray | None]:
        """The rows the trees fit on (in their order), and their weights: all rows and the trees' own
        ``class_weight`` up to ``max_legit_rows`` legitimate (class 0) rows; past it, every attack and
        a seeded draw of that many legitimate rows, weighted by the class weight of all the rows times
        how many legitimate rows each drawn one stands for. The fit's cost grows with its rows; a
        million events hold ~30 legitimate rows per attack, and a weighted draw of them ranks as well
        (bench/README.md: measured).

        >>> y = np.array([0] * 8 + [1] * 2)
        >>> rows, weight = RiskModel(max_legit_rows=4).tree_rows(y)
        >>> y[rows].tolist(), weight.tolist()
        ([0, 0, 0, 0, 1, 1], [1.25, 1.25, 1.25, 1.25, 2.5, 2.5])
        """
        classes = np.unique(y)
        legit = np.flatnonzero(y == classes[0])
        if self.max_legit_rows is None or len(legit) <= self.max_legit_rows:
            return slice(None), None
        drawn = np.random.default_rng(self.random_state).choice(legit, self.max_legit_rows, replace=False)
        rows = np.sort(np.concatenate([drawn, np.flatnonzero(y != classes[0])]))
        per_class = (np.ones(len(classes)) if self.class_weight is None
                     else compute_class_weight(self.class_weight, classes=classes, y=y))
        weight = per_class[np.searchsorted(classes, y[rows])]
        weight[y[rows] == classes[0]] *= len(legit) / self.max_legit_rows
        return rows, weight

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
