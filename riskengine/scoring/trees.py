"""Step 5, score, fast path: the trained model compiled to flat numpy arrays, so one event gets
its risk and per-feature contributions (for reasons) in tens of µs instead of sklearn's ~1 ms.
Same probabilities as sklearn; ``UnsupportedModel`` for anything it cannot reproduce exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._missing import is_scalar_nan

__all__ = ["CompiledModel", "UnsupportedModel", "compile_model"]

_FMAX = np.finfo(np.float64).max
_MAX_LEAVES = 64  # one uint64 bitmask per tree (uint32 when every tree fits)
_BATCH_CELLS = 1 << 21  # rows x splits evaluated at once by predict_proba(X): bounds memory

_Transform = Callable[[np.ndarray], np.ndarray]  # preprocessing step, or raw -> P(class 1)


class UnsupportedModel(ValueError):
    """The estimator has a part the compiler cannot reproduce exactly: score it with sklearn."""


# Why this formulation (bench/bench_inference.py: 200 trees x 31 leaves, 30 features, one row):
# pure-Python node walk ~70 µs, numpy walk advancing all trees a level per step ~50 µs (depth
# reaches ~19), this QuickScorer-style evaluation ~20 µs. Every split of every tree is compared
# at once; a split that sends the row right removes the leaves of its left subtree from its
# tree's bitmask; the row's leaf is the lowest surviving bit. The comparisons are sklearn's
# own (`x <= num_threshold` goes left), so it is the same leaf, not an approximation. Missing
# values: the row is doubled, NaN kept in the first half (NaN > t is False: always left) and
# +inf in the second (always right), and each split reads the half its `missing_go_to_left` asks for.
# Infinite thresholds ("split on NaN") become the largest float and +inf inputs are clamped
# to it, so they still compare as in sklearn.


@dataclass(frozen=True)
class _Forest:
    """Every tree of every calibrated member, packed; member m owns trees member_starts[m]:."""

    feature: np.ndarray  # per split: column of the doubled row (f, or f + n_features if NaN->right)
    threshold: np.ndarray  # per split: num_threshold, +inf replaced by the largest float
    left_leaves: np.ndarray  # per split: bitmask (uint32/64) of the leaves in its left subtree
    tree_starts: np.ndarray  # first split of each tree (a leaf-only tree gets a no-op split)
    padded: tuple[np.ndarray, np.ndarray, np.ndarray]  # the 3 above as (tree, split) for batches
    leaf_offset: np.ndarray  # first leaf of each tree in leaf_value
    exponent_offset: np.ndarray  # leaf_offset - 1023: a power of two's exponent bits -> its leaf
    leaf_value: np.ndarray  # leaves left to right, learning rate already applied by sklearn
    member_starts: np.ndarray  # first tree of each member
    baseline: np.ndarray  # per member: HGB's baseline_prediction
    leaf_contributions: np.ndarray  # (leaf, feature): Saabas credit of its path / n members
    bias: float  # mean over members of baseline + root values: the Saabas bias


class CompiledModel:
    """A fitted model as flat arrays; probabilities equal sklearn's ``predict_proba[:, 1]``.

    Immutable after compile and allocating per call, so threads may share one instance;
    picklable, though compiling at model load (~0.1 s) is simpler than storing it.
    """

    def __init__(self, n_features: int, steps: list[_Transform], forest: _Forest,
                 calibrators: list[_Transform]) -> None:
        self.n_features = n_features
        self._steps = steps  # Pipeline preprocessing, applied to the row in order
        self._forest = forest
        self._calibrators = calibrators  # per member: raw log-odds -> P(class 1)
        self._scalar_calibrators = [_scalar(c) for c in calibrators]  # the same on a Python float

    def predict_proba_one(self, row: Sequence[float]) -> float:
        """P(class 1) for one row in training column order; NaN means missing."""
        return self._proba_one(self._leaves_one(row))

    def raw_one(self, row: Sequence[float]) -> float:
        """HGB raw log-odds (baseline + sum of leaves); for several members, their mean."""
        return float(self._raw_members(self._leaves_one(row)).mean())

    def contributions_one(self, row: Sequence[float]) -> tuple[float, list[float]]:
        """(bias, per-feature credit) on the raw scale: bias + sum(credit) == raw_one(row).

        Saabas: each split on the row's path credits (child value - node value) to its
        feature. HGB keeps unshrunk Newton values on internal nodes, not on the scale of its
        shrunk leaves, so an internal node's value is derived as the count-weighted mean of its
        children's (``count`` = training rows). Several calibrated members: their mean.
        """
        return self._forest.bias, self._credits(self._leaves_one(row))

    def score_one(self, row: Sequence[float]) -> tuple[float, list[float]]:
        """``predict_proba_one`` and ``contributions_one``'s credits from one pass over the trees."""
        leaves = self._leaves_one(row)
        return self._proba_one(leaves), self._credits(leaves)

    def predict_proba(self, X) -> np.ndarray:
        """Batch (n, 2) probabilities, like sklearn's, for training and evaluation."""
        X = self._rows(X, ndim=2)
        step = max(1, _BATCH_CELLS // self._forest.padded[0].size)
        p1 = np.concatenate([self._proba(self._raw_members(self._leaves(X[i : i + step])))
                             for i in range(0, len(X), step)] or [np.empty(0)])
        return np.column_stack((1.0 - p1, p1))

    def _rows(self, X, *, ndim: int) -> np.ndarray:
        """Validated, preprocessed rows, doubled: as they are in the first half (NaN > t is False:
        left), NaN -> +inf in the second (fmin ignores NaN: right); +inf -> the largest float."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != ndim or X.shape[-1] != self.n_features:
            raise ValueError(f"expected {'a row' if ndim == 1 else 'rows'} of {self.n_features} "
                             f"features in training column order, got shape {X.shape}")
        for step in self._steps:
            X = step(X)
        capped = np.minimum(X, _FMAX)  # NaN stays NaN
        return np.concatenate((capped, np.fmin(capped, np.inf)), axis=-1)

    def _leaves(self, xx: np.ndarray) -> np.ndarray:
        """Index into leaf_value of the leaf each tree sends each doubled row to (a batch)."""
        f = self._forest
        feature, threshold, left_leaves = f.padded  # padded + reduce: reduceat on 2-D is ~15x slower
        removed = np.bitwise_or.reduce(left_leaves * (xx[:, feature] > threshold), axis=-1)
        lowest_kept = ~removed & (removed + 1)
        return f.leaf_offset + (np.frexp(lowest_kept.astype(np.float64))[1] - 1)  # its bit index

    def _leaves_one(self, row: Sequence[float]) -> np.ndarray:
        """``_leaves`` of one row, in as few numpy calls as it takes (each costs ~1 µs): the flat
        splits with reduceat, the leaf's bit index read off the exponent of the lowest kept bit
        as a double."""
        f = self._forest
        goes_right = self._rows(row, ndim=1)[f.feature] > f.threshold
        removed = np.bitwise_or.reduceat(f.left_leaves * goes_right, f.tree_starts)
        lowest_kept = ~removed & (removed + 1)
        return (lowest_kept.astype(np.float64).view(np.int64) >> 52) + f.exponent_offset

    def _credits(self, leaves: np.ndarray) -> list[float]:
        return np.add.reduce(self._forest.leaf_contributions.take(leaves, axis=0), axis=0).tolist()

    def _proba_one(self, leaves: np.ndarray) -> float:
        raw = self._raw_members(leaves).tolist()
        return sum(min(cal(r), 1.0) for cal, r in zip(self._scalar_calibrators, raw)) / len(raw)

    def _raw_members(self, leaves: np.ndarray) -> np.ndarray:
        f = self._forest
        return f.baseline + np.add.reduceat(f.leaf_value[leaves], f.member_starts, axis=-1)

    def _proba(self, raw: np.ndarray) -> np.ndarray:
        # sklearn sets p in (1, 1 + 1e-5] to 1; these calibrators only overshoot 1 by rounding
        total = sum(np.minimum(cal(raw[..., m]), 1.0) for m, cal in enumerate(self._calibrators))
        return total / len(self._calibrators)


def compile_model(estimator) -> CompiledModel:
    """Compile a fitted estimator, or raise ``UnsupportedModel`` naming the part that is not.

    Supported: a binary ``HistGradientBoostingClassifier`` on numerical features with at most
    64 leaves per tree, optionally inside ``CalibratedClassifierCV`` (sigmoid or isotonic, any
    ``ensemble``, prefit via ``FrozenEstimator``), optionally the last step of a ``Pipeline``
    whose earlier steps are fitted ``SimpleImputer`` / ``StandardScaler`` or ``"passthrough"``.
    """
    steps, est = [], estimator
    while isinstance(est, Pipeline):
        for name, step in est.steps[:-1]:
            if step is not None and step != "passthrough":
                steps.append(_compile_step(name, step))
        est = est.steps[-1][1]
    if isinstance(est, CalibratedClassifierCV):
        if not hasattr(est, "calibrated_classifiers_"):
            raise UnsupportedModel("CalibratedClassifierCV is not fitted; fit it before compiling")
        if est.method not in ("sigmoid", "isotonic"):
            raise UnsupportedModel(f"CalibratedClassifierCV method={est.method!r}; "
                                   "supported: 'sigmoid', 'isotonic'")
        members = [(_unfrozen(c.estimator), _compile_calibrator(c.calibrators))
                   for c in est.calibrated_classifiers_]
        if any(isinstance(hgb, Pipeline) for hgb, _ in members):
            raise UnsupportedModel("CalibratedClassifierCV wraps a Pipeline; put the "
                                   "preprocessing in a Pipeline around the calibrator instead")
    else:
        members = [(est, expit)]
    hgbs = [_checked_hgb(hgb) for hgb, _ in members]
    n_features = hgbs[0].n_features_in_
    if any(h.n_features_in_ != n_features for h in hgbs):
        raise UnsupportedModel("calibrated members disagree on n_features_in_")
    return CompiledModel(n_features, steps, _pack(hgbs, n_features), [c for _, c in members])


def _unfrozen(est):
    return getattr(est, "estimator", est) if type(est).__name__ == "FrozenEstimator" else est


def _checked_hgb(est) -> HistGradientBoostingClassifier:
    name = type(est).__name__
    if not isinstance(est, HistGradientBoostingClassifier):
        raise UnsupportedModel(f"{name} is not supported; supported: HistGradientBoostingClassifier"
                               ", optionally in CalibratedClassifierCV and/or a Pipeline")
    if not hasattr(est, "_predictors"):
        raise UnsupportedModel(f"{name} is not fitted; fit it before compiling")
    if len(est.classes_) != 2:
        raise UnsupportedModel(f"{name} has {len(est.classes_)} classes; only binary is supported")
    if est.is_categorical_ is not None or getattr(est, "_preprocessor", None) is not None:
        raise UnsupportedModel(f"{name} uses categorical features; only numerical are supported")
    return est


def _compile_calibrator(calibrators: list) -> _Transform:
    if len(calibrators) != 1:
        raise UnsupportedModel(f"{len(calibrators)} calibrators per member; only binary "
                               "is supported")
    cal = calibrators[0]
    if isinstance(cal, _SigmoidCalibration):
        return partial(_sigmoid, a=cal.a_, b=cal.b_)
    if isinstance(cal, IsotonicRegression) and cal.out_of_bounds == "clip":
        lo, hi, xs, ys = cal.X_min_, cal.X_max_, cal.X_thresholds_, cal.y_thresholds_
        if xs[0] != lo or xs[-1] != hi:  # never seen: fitted thresholds span [X_min_, X_max_]
            raise UnsupportedModel("IsotonicRegression thresholds do not span its X range")
        return partial(np.interp, xp=xs, fp=ys)  # = its interp1d; clamps as clipping would
    raise UnsupportedModel(f"calibrator {type(cal).__name__} is not supported")


def _compile_step(name: str, step) -> _Transform:
    kind = type(step).__name__
    if isinstance(step, (StandardScaler, SimpleImputer)) and not hasattr(step, "n_features_in_"):
        raise UnsupportedModel(f"Pipeline step {name!r} ({kind}) is not fitted")
    if isinstance(step, StandardScaler):
        mean = step.mean_ if step.with_mean else 0.0
        scale = step.scale_ if step.with_std and step.scale_ is not None else 1.0
        return partial(_standardize, mean=mean, scale=scale)
    if isinstance(step, SimpleImputer):
        fill = np.asarray(step.statistics_, dtype=np.float64)
        if not is_scalar_nan(step.missing_values) or step.add_indicator:
            raise UnsupportedModel(f"Pipeline step {name!r}: SimpleImputer needs "
                                   "missing_values=np.nan and add_indicator=False")
        if not step.keep_empty_features and np.isnan(fill).any():
            raise UnsupportedModel(f"Pipeline step {name!r}: SimpleImputer drops all-missing "
                                   "columns; refit with keep_empty_features=True")
        return partial(_impute, fill=fill)
    raise UnsupportedModel(f"Pipeline step {name!r} ({kind}) is not supported; supported: "
                           "SimpleImputer, StandardScaler, 'passthrough'")


def _sigmoid(raw: np.ndarray, a: float, b: float) -> np.ndarray:
    return expit(-(a * raw + b))  # _SigmoidCalibration.predict, same expression


def _scalar(calibrator: _Transform) -> Callable[[float], float]:
    """A calibrator for one raw value: numpy's per-call cost is most of a scalar's time."""
    if isinstance(calibrator, partial) and calibrator.func is _sigmoid:
        return partial(_sigmoid_one, a=float(calibrator.keywords["a"]), b=float(calibrator.keywords["b"]))
    return partial(_on_float, calibrator)   # partials, not lambdas: a CompiledModel stays picklable


def _on_float(calibrator: _Transform, raw: float) -> float:
    return float(calibrator(np.float64(raw)))


def _sigmoid_one(raw: float, a: float, b: float) -> float:
    """``_sigmoid`` on a float: scipy's expit, without overflow either side."""
    z = -(a * raw + b)
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _standardize(X: np.ndarray, mean: np.ndarray | float, scale: np.ndarray | float) -> np.ndarray:
    return (X - mean) / scale  # StandardScaler's arithmetic: X -= mean_; X /= scale_


def _impute(X: np.ndarray, fill: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(X), fill, X)


def _pack(hgbs: list[HistGradientBoostingClassifier], n_features: int) -> _Forest:
    trees = [_compile_tree(p.nodes, n_features) for h in hgbs for (p,) in h._predictors]
    n_trees = [len(h._predictors) for h in hgbs]
    splits = [len(t["threshold"]) for t in trees]
    width = max(splits)
    padded = (np.zeros((len(trees), width), dtype=np.intp),  # padding: never goes right
              np.full((len(trees), width), np.inf), np.zeros((len(trees), width), dtype=np.uint64))
    for k, tree in enumerate(trees):
        for array, key in zip(padded, ("feature", "threshold", "left_leaves")):
            array[k, : splits[k]] = tree[key]
    if max(len(t["leaf_value"]) for t in trees) <= 32:  # the default max_leaf_nodes=31
        padded = (padded[0], padded[1], padded[2].astype(np.uint32))  # ~20% faster bit ops
    member_starts = np.cumsum([0] + n_trees[:-1])
    leaf_offset = np.cumsum([0] + [len(t["leaf_value"]) for t in trees[:-1]])
    baseline = np.array([float(np.ravel(h._baseline_prediction)[0]) for h in hgbs])
    roots = np.add.reduceat([t["root_value"] for t in trees], member_starts)
    return _Forest(
        feature=np.concatenate([t["feature"] for t in trees]),
        threshold=np.concatenate([t["threshold"] for t in trees]),
        left_leaves=np.concatenate([t["left_leaves"] for t in trees]).astype(padded[2].dtype),
        tree_starts=np.cumsum([0] + splits[:-1]),
        padded=padded,
        leaf_offset=leaf_offset,
        exponent_offset=leaf_offset - 1023,
        leaf_value=np.concatenate([t["leaf_value"] for t in trees]),
        member_starts=member_starts,
        baseline=baseline,
        # (leaves x features) float64: ~1.5 MB for 200 trees x 31 leaves x 30 features
        leaf_contributions=np.concatenate([t["contributions"] for t in trees]) / len(hgbs),
        bias=float(np.mean(baseline + roots)),
    )


def _compile_tree(nodes: np.ndarray, n_features: int) -> dict:
    """One TreePredictor's node table -> split arrays, leaf values and Saabas credits."""
    if nodes["is_categorical"].any():
        raise UnsupportedModel("a tree splits on a categorical feature; only numerical supported")
    is_leaf, left, right = nodes["is_leaf"].astype(bool), nodes["left"], nodes["right"]
    order, parent, stack = [], {0: -1}, [0]
    while stack:  # preorder, left child first: leaves come out left to right
        i = stack.pop()
        order.append(i)
        if not is_leaf[i]:
            parent[int(left[i])] = parent[int(right[i])] = i
            stack += [int(right[i]), int(left[i])]
    leaf_ids = [i for i in order if is_leaf[i]]
    if len(leaf_ids) > _MAX_LEAVES:
        raise UnsupportedModel(f"a tree has {len(leaf_ids)} leaves; the compiled path supports "
                               f"up to {_MAX_LEAVES} (max_leaf_nodes <= {_MAX_LEAVES})")
    value, count = nodes["value"].astype(np.float64), nodes["count"].astype(np.float64)
    mask = {leaf: 1 << rank for rank, leaf in enumerate(leaf_ids)}
    for i in reversed(order):  # children before parents
        if not is_leaf[i]:
            lo, hi = int(left[i]), int(right[i])
            mask[i] = mask[lo] | mask[hi]
            value[i] = (count[lo] * value[lo] + count[hi] * value[hi]) / (count[lo] + count[hi])
    splits = [i for i in order if not is_leaf[i]] or [None]  # a leaf-only tree: one no-op split
    contributions = np.zeros((len(leaf_ids), n_features))
    for k, leaf in enumerate(leaf_ids):
        child = leaf
        while (node := parent[child]) >= 0:
            contributions[k, nodes["feature_idx"][node]] += value[child] - value[node]
            child = node
    return {
        "feature": np.array([0 if i is None else int(nodes["feature_idx"][i])
                             + (0 if nodes["missing_go_to_left"][i] else n_features)
                             for i in splits], dtype=np.intp),
        "threshold": np.array([np.inf if i is None else min(float(nodes["num_threshold"][i]), _FMAX)
                               for i in splits]),
        "left_leaves": np.array([0 if i is None else mask[int(left[i])] for i in splits],
                                dtype=np.uint64),
        "leaf_value": nodes["value"][leaf_ids].astype(np.float64),
        "root_value": value[0],
        "contributions": contributions,
    }
