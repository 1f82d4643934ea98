"""Step 5, score: a fitted scikit-learn model -> ``CompiledModel`` (trees.py), the same probabilities.

The one module that reads scikit-learn's fitted internals (``_predictors``, ``_baseline_prediction``,
the sigmoid calibrator's ``a_``/``b_``). They are private, so the compiler refuses a scikit-learn
outside the minor versions it was checked against (``SKLEARN_VERSIONS``), and tests/test_trees.py
checks its output against ``predict_proba`` to 1e-9 on every supported model shape.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from riskengine.scoring.trees import (Calibrator, CompiledModel, Impute, Isotonic, Logistic, Sigmoid,
                                      Standardize, Step, model_data)

__all__ = ["SKLEARN_VERSIONS", "UnsupportedModel", "compile_model"]

#: first and last scikit-learn minor version whose fitted trees this compiler reads (both tested);
#: pyproject.toml's range says the same
SKLEARN_VERSIONS = ((1, 6), (1, 9))
_FMAX = np.finfo(np.float64).max
_MAX_LEAVES = 64  # trees.py keeps one uint64 bitmask per tree


class UnsupportedModel(ValueError):
    """The estimator, or the installed scikit-learn, is one the compiler cannot reproduce exactly."""


def check_sklearn_version(version: str | None = None) -> None:
    """Refuse to read the private tree layout of a scikit-learn this compiler was not checked against."""
    version = version or sklearn.__version__
    match = re.match(r"(\d+)\.(\d+)", version)
    (lo, hi), known = SKLEARN_VERSIONS, "{}.{}".format
    if match is None or not lo <= (int(match[1]), int(match[2])) <= hi:
        raise UnsupportedModel(
            f"scikit-learn {version} is outside the versions the tree compiler reads ({known(*lo)} to "
            f"{known(*hi)}): its private tree layout may differ. Install scikit-learn>={known(*lo)},"
            f"<{hi[0]}.{hi[1] + 1}, or extend SKLEARN_VERSIONS after tests/test_trees.py passes")


def compile_model(estimator: Any) -> CompiledModel:
    """Compile a fitted estimator, or raise ``UnsupportedModel`` naming the part that is not.

    Supported: a binary ``HistGradientBoostingClassifier`` on numerical features with at most
    64 leaves per tree (monotonic or interaction constraints change the trees, not their form),
    optionally inside ``CalibratedClassifierCV`` (sigmoid or isotonic, any ``ensemble``, prefit via
    ``FrozenEstimator``), optionally the last step of a ``Pipeline`` whose earlier steps are
    fitted ``SimpleImputer`` / ``StandardScaler`` or ``"passthrough"``.
    """
    check_sklearn_version()
    steps: list[Step] = []
    est = estimator
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
        members = [(est, Logistic())]
    hgbs = [_checked_hgb(hgb) for hgb, _ in members]
    n_features = hgbs[0].n_features_in_
    if any(h.n_features_in_ != n_features for h in hgbs):
        raise UnsupportedModel("calibrated members disagree on n_features_in_")
    calibrators = [c for _, c in members]
    return CompiledModel.from_data(*model_data(n_features, steps, calibrators, _forest_arrays(hgbs, n_features)))


def _unfrozen(est: Any) -> Any:
    return getattr(est, "estimator", est) if type(est).__name__ == "FrozenEstimator" else est


def _checked_hgb(est: Any) -> HistGradientBoostingClassifier:
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


def _compile_calibrator(calibrators: list) -> Calibrator:
    if len(calibrators) != 1:
        raise UnsupportedModel(f"{len(calibrators)} calibrators per member; only binary is supported")
    cal = calibrators[0]
    if type(cal).__name__ == "_SigmoidCalibration":  # private class: fenced by the version gate
        return Sigmoid(float(cal.a_), float(cal.b_))
    if isinstance(cal, IsotonicRegression) and cal.out_of_bounds == "clip":
        lo, hi, xs, ys = cal.X_min_, cal.X_max_, cal.X_thresholds_, cal.y_thresholds_
        if xs[0] != lo or xs[-1] != hi:  # never seen: fitted thresholds span [X_min_, X_max_]
            raise UnsupportedModel("IsotonicRegression thresholds do not span its X range")
        return Isotonic(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64))  # = its interp1d
    raise UnsupportedModel(f"calibrator {type(cal).__name__} is not supported")


def _compile_step(name: str, step: Any) -> Step:
    kind = type(step).__name__
    if isinstance(step, (StandardScaler, SimpleImputer)) and not hasattr(step, "n_features_in_"):
        raise UnsupportedModel(f"Pipeline step {name!r} ({kind}) is not fitted")
    if isinstance(step, StandardScaler):
        n = step.n_features_in_
        mean = step.mean_ if step.with_mean else 0.0
        scale = step.scale_ if step.with_std and step.scale_ is not None else 1.0
        return Standardize(np.broadcast_to(np.asarray(mean, dtype=np.float64), (n,)).copy(),
                           np.broadcast_to(np.asarray(scale, dtype=np.float64), (n,)).copy())
    if isinstance(step, SimpleImputer):
        fill = np.asarray(step.statistics_, dtype=np.float64)
        missing = step.missing_values
        if not (isinstance(missing, float) and math.isnan(missing)) or step.add_indicator:
            raise UnsupportedModel(f"Pipeline step {name!r}: SimpleImputer needs "
                                   "missing_values=np.nan and add_indicator=False")
        if not step.keep_empty_features and np.isnan(fill).any():
            raise UnsupportedModel(f"Pipeline step {name!r}: SimpleImputer drops all-missing "
                                   "columns; refit with keep_empty_features=True")
        return Impute(fill)
    raise UnsupportedModel(f"Pipeline step {name!r} ({kind}) is not supported; supported: "
                           "SimpleImputer, StandardScaler, 'passthrough'")


def _forest_arrays(hgbs: list[HistGradientBoostingClassifier], n_features: int) -> dict[str, np.ndarray]:
    """The trees of every member, flattened into trees.py's stored arrays."""
    trees = [_compile_tree(p.nodes, n_features) for h in hgbs for (p,) in h._predictors]
    n_trees = [len(h._predictors) for h in hgbs]
    member_starts = np.cumsum([0] + n_trees[:-1])
    baseline = np.array([float(np.ravel(h._baseline_prediction)[0]) for h in hgbs])
    roots = np.add.reduceat([t["root_value"] for t in trees], member_starts)
    return {
        "feature": np.concatenate([t["feature"] for t in trees]),
        "threshold": np.concatenate([t["threshold"] for t in trees]),
        "left_leaves": np.concatenate([t["left_leaves"] for t in trees]),
        "tree_starts": np.cumsum([0] + [len(t["threshold"]) for t in trees[:-1]]),
        "leaf_starts": np.cumsum([0] + [len(t["leaf_value"]) for t in trees[:-1]]),
        "leaf_value": np.concatenate([t["leaf_value"] for t in trees]),
        "member_starts": member_starts,
        "baseline": baseline,
        # (leaves x features) float64: ~1.5 MB for 200 trees x 31 leaves x 30 features
        "leaf_contributions": np.concatenate([t["contributions"] for t in trees]) / len(hgbs),
        "bias": np.array(np.mean(baseline + roots)),
    }


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
