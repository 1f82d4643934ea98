"""Step 5, score, fast path: the trained model as flat numpy arrays, so one event gets its risk
and per-feature contributions (for reasons) in tens of µs instead of sklearn's ~1 ms.

A ``CompiledModel`` is data only: ``to_data()`` gives JSON parameters and named arrays, and
``from_data`` rebuilds one after checking every array's type, shape and bounds, so the registry
stores it as ``.npz`` + JSON and nothing read from disk runs code. ``scoring.compiler`` makes
one from a fitted scikit-learn model, with the same probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

__all__ = ["FORMAT", "CompiledModel", "InvalidModelData", "Impute", "Isotonic", "Logistic", "Sigmoid",
           "Standardize", "model_data"]

FORMAT = "riskengine-trees/1"  # bump when the arrays below change meaning
_FMAX = np.finfo(np.float64).max
_MAX_LEAVES = 64  # one uint64 bitmask per tree (uint32 when every tree fits)
_BATCH_CELLS = 1 << 21  # rows x splits evaluated at once by predict_proba(X): bounds memory


class InvalidModelData(ValueError):
    """Arrays or parameters that do not describe a model this evaluator can run exactly."""


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


# -- preprocessing steps and calibrators: small, typed, and nothing but numbers ---------------
@dataclass(frozen=True, eq=False)
class Standardize:
    """StandardScaler's arithmetic: X -= mean_; X /= scale_."""

    kind: ClassVar[str] = "standardize"
    mean: np.ndarray
    scale: np.ndarray

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale


@dataclass(frozen=True, eq=False)
class Impute:
    """SimpleImputer with missing_values=NaN: each column's fitted statistic fills its NaN."""

    kind: ClassVar[str] = "impute"
    fill: np.ndarray

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(X), self.fill, X)


@dataclass(frozen=True)
class Logistic:
    """An uncalibrated classifier's own link: P = expit(raw)."""

    kind: ClassVar[str] = "logistic"

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return _expit(raw)

    def one(self, raw: float) -> float:
        return _expit_one(raw)


@dataclass(frozen=True)
class Sigmoid:
    """Platt scaling, sklearn's expression: P = expit(-(a * raw + b))."""

    kind: ClassVar[str] = "sigmoid"
    a: float
    b: float

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return _expit(-(self.a * raw + self.b))

    def one(self, raw: float) -> float:
        return _expit_one(-(self.a * raw + self.b))


@dataclass(frozen=True, eq=False)
class Isotonic:
    """Isotonic regression with out_of_bounds="clip": its interpolation, clamped at the ends."""

    kind: ClassVar[str] = "isotonic"
    x: np.ndarray
    y: np.ndarray

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return np.interp(raw, self.x, self.y)

    def one(self, raw: float) -> float:
        return float(np.interp(raw, self.x, self.y))


Step = Standardize | Impute
Calibrator = Logistic | Sigmoid | Isotonic
_STEPS: dict[str, type] = {c.kind: c for c in (Standardize, Impute)}
_CALIBRATORS: dict[str, type] = {c.kind: c for c in (Logistic, Sigmoid, Isotonic)}


def _expit(z: np.ndarray) -> np.ndarray:
    """scipy.special.expit's values without scipy (the serving install has none): 1 / (1 + e^-z),
    from e^-|z| so neither side overflows."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _expit_one(z: float) -> float:
    """scipy's expit on a Python float (numpy's per-call cost is most of a scalar's time),
    without overflow either side."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# -- the forest ------------------------------------------------------------------------------
#: the stored arrays: name -> (dtype kinds accepted, ndim). Everything else is derived on load.
_ARRAYS: dict[str, tuple[str, int]] = {
    "feature": ("iu", 1),  # per split: column of the doubled row (f, or f + n_features if NaN->right)
    "threshold": ("f", 1),  # per split: num_threshold, +inf replaced by the largest float
    "left_leaves": ("u", 1),  # per split: bitmask of the leaves in its left subtree
    "tree_starts": ("iu", 1),  # first split of each tree (a leaf-only tree gets a no-op split)
    "leaf_starts": ("iu", 1),  # first leaf of each tree in leaf_value
    "leaf_value": ("f", 1),  # leaves left to right, learning rate already applied by sklearn
    "member_starts": ("iu", 1),  # first tree of each calibrated member
    "baseline": ("f", 1),  # per member: HGB's baseline prediction
    "leaf_contributions": ("f", 2),  # (leaf, feature): Saabas credit of its path / n members
    "bias": ("f", 0),  # mean over members of baseline + root values: the Saabas bias
}


@dataclass(frozen=True)
class _Forest:
    """Every tree of every calibrated member, packed; member m owns trees member_starts[m]:."""

    feature: np.ndarray
    threshold: np.ndarray
    left_leaves: np.ndarray  # uint32 when every tree has <= 32 leaves: ~20% faster bit ops
    tree_starts: np.ndarray
    padded: tuple[np.ndarray, np.ndarray, np.ndarray]  # the 3 above as (tree, split) for batches
    leaf_offset: np.ndarray  # = leaf_starts
    exponent_offset: np.ndarray  # leaf_offset - 1023: a power of two's exponent bits -> its leaf
    leaf_value: np.ndarray
    member_starts: np.ndarray
    baseline: np.ndarray
    leaf_contributions: np.ndarray
    bias: float

    def arrays(self) -> dict[str, np.ndarray]:
        return {"feature": self.feature, "threshold": self.threshold,
                "left_leaves": self.left_leaves.astype(np.uint64), "tree_starts": self.tree_starts,
                "leaf_starts": self.leaf_offset, "leaf_value": self.leaf_value,
                "member_starts": self.member_starts, "baseline": self.baseline,
                "leaf_contributions": self.leaf_contributions, "bias": np.array(self.bias)}


_KIND_NAMES = {"f": "floating-point", "iu": "integer", "u": "unsigned integer"}


def _array(arrays: Mapping[str, Any], name: str, kinds: str, ndim: int) -> np.ndarray:
    value = arrays.get(name)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds or value.ndim != ndim:
        found = (f"{value.dtype} with {value.ndim} dimension(s)" if isinstance(value, np.ndarray)
                 else type(value).__name__)
        raise InvalidModelData(f"array {name!r}: expected {_KIND_NAMES[kinds]} numbers in {ndim} dimension(s), "
                               f"found {found}")
    if value.dtype.kind == "f" and not np.isfinite(value).all() and name != "threshold":
        raise InvalidModelData(f"array {name!r}: not finite")
    return value


def _starts(name: str, starts: np.ndarray, total: int) -> np.ndarray:
    """Offsets into an array of ``total`` items: from 0, strictly increasing, each in range."""
    if len(starts) == 0 or starts[0] != 0 or (np.diff(starts) <= 0).any() or starts[-1] >= total:
        raise InvalidModelData(f"array {name!r}: not increasing offsets from 0 into {total} items")
    return starts.astype(np.intp)


def _forest(arrays: Mapping[str, Any], n_features: int) -> _Forest:
    """Check the stored arrays against each other, then derive what evaluation uses."""
    a = {name: _array(arrays, name, kinds, ndim) for name, (kinds, ndim) in _ARRAYS.items()}
    n_splits, n_leaves = len(a["feature"]), len(a["leaf_value"])
    if n_splits == 0 or len(a["threshold"]) != n_splits or len(a["left_leaves"]) != n_splits:
        raise InvalidModelData("arrays 'feature', 'threshold', 'left_leaves': lengths differ or are 0")
    if np.isnan(a["threshold"]).any() or not ((a["feature"] >= 0) & (a["feature"] < 2 * n_features)).all():
        raise InvalidModelData(f"arrays 'feature'/'threshold': NaN threshold or column outside 0..{2 * n_features - 1}")
    tree_starts = _starts("tree_starts", a["tree_starts"], n_splits)
    leaf_starts = _starts("leaf_starts", a["leaf_starts"], n_leaves)
    member_starts = _starts("member_starts", a["member_starts"], len(tree_starts))
    if len(leaf_starts) != len(tree_starts) or len(a["baseline"]) != len(member_starts):
        raise InvalidModelData("arrays 'leaf_starts'/'baseline': one entry per tree/member expected")
    if a["leaf_contributions"].shape != (n_leaves, n_features):
        raise InvalidModelData(f"array 'leaf_contributions': shape {a['leaf_contributions'].shape}, "
                               f"expected {(n_leaves, n_features)}")
    leaves_per_tree = np.diff(np.append(leaf_starts, n_leaves))
    splits_per_tree = np.diff(np.append(tree_starts, n_splits))
    if leaves_per_tree.max() > _MAX_LEAVES:
        raise InvalidModelData(f"a tree has {leaves_per_tree.max()} leaves; at most {_MAX_LEAVES} are supported")
    # the rightmost leaf is in no left subtree, so the lowest surviving bit is always a leaf of the tree
    ceiling = np.left_shift(np.uint64(1), np.repeat(leaves_per_tree - 1, splits_per_tree).astype(np.uint64))
    if (a["left_leaves"].astype(np.uint64) >= ceiling).any():
        raise InvalidModelData("array 'left_leaves': a bitmask names a leaf its tree does not have")
    dtype = np.uint32 if leaves_per_tree.max() <= 32 else np.uint64
    left_leaves = a["left_leaves"].astype(dtype)
    feature, threshold = a["feature"].astype(np.intp), a["threshold"].astype(np.float64)
    width = int(splits_per_tree.max())
    padded = (np.zeros((len(tree_starts), width), dtype=np.intp),  # padding: never goes right
              np.full((len(tree_starts), width), np.inf), np.zeros((len(tree_starts), width), dtype=dtype))
    for k, (start, count) in enumerate(zip(tree_starts, splits_per_tree)):
        for array, flat in zip(padded, (feature, threshold, left_leaves)):
            array[k, :count] = flat[start : start + count]
    return _Forest(feature=feature, threshold=threshold, left_leaves=left_leaves, tree_starts=tree_starts,
                   padded=padded, leaf_offset=leaf_starts, exponent_offset=leaf_starts - 1023,
                   leaf_value=a["leaf_value"].astype(np.float64), member_starts=member_starts,
                   baseline=a["baseline"].astype(np.float64),
                   leaf_contributions=a["leaf_contributions"].astype(np.float64), bias=float(a["bias"]))


def _parts(prefix: str, specs: Any, kinds: dict[str, type], arrays: Mapping[str, Any], n_features: int | None) -> list:
    """Steps or calibrators from their JSON specs: scalars from JSON, arrays from the archive."""
    if not isinstance(specs, list) or not all(isinstance(s, dict) and s.get("kind") in kinds for s in specs):
        raise InvalidModelData(f"{prefix}: expected a list of {{'kind': {' | '.join(kinds)}, ...}}, found {specs!r:.80}")
    parts = []
    for i, spec in enumerate(specs):
        cls, values = kinds[spec["kind"]], {}
        for f in fields(cls):
            where = f"{prefix}[{i}].{f.name}"
            if f.type == "float":
                value = spec.get(f.name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise InvalidModelData(f"{where}: expected a finite number, found {value!r:.40}")
                values[f.name] = float(value)
            else:
                value = _array(arrays, f"{prefix}.{i}.{f.name}", "f", 1).astype(np.float64)
                if n_features is not None and len(value) != n_features:
                    raise InvalidModelData(f"{where}: {len(value)} values for {n_features} features")
                values[f.name] = value
        part = cls(**values)
        if isinstance(part, Isotonic) and (len(part.x) < 1 or len(part.x) != len(part.y)
                                           or (np.diff(part.x) < 0).any()):
            raise InvalidModelData(f"{prefix}[{i}]: isotonic x and y must be equally long, x non-decreasing")
        parts.append(part)
    return parts


def model_data(n_features: int, steps: Sequence[Step], calibrators: Sequence[Calibrator],
               forest: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A model's data form: a JSON spec (format, steps, calibrators' scalars) and named arrays."""
    step_specs, step_arrays = _part_data("steps", steps)
    cal_specs, cal_arrays = _part_data("calibrators", calibrators)
    spec = {"format": FORMAT, "n_features": n_features, "steps": step_specs, "calibrators": cal_specs}
    return spec, {**forest, **step_arrays, **cal_arrays}


def _part_data(prefix: str, parts: Sequence[Any]) -> tuple[list[dict], dict[str, np.ndarray]]:
    specs, arrays = [], {}
    for i, part in enumerate(parts):
        spec: dict[str, Any] = {"kind": part.kind}
        for f in fields(part):
            value = getattr(part, f.name)
            if isinstance(value, np.ndarray):
                arrays[f"{prefix}.{i}.{f.name}"] = value
            else:
                spec[f.name] = value
        specs.append(spec)
    return specs, arrays


class CompiledModel:
    """A fitted model as flat arrays; probabilities equal sklearn's ``predict_proba[:, 1]``.

    Immutable and allocating per call, so threads may share one instance. Built only through
    ``from_data``, which checks what it is given whether it comes from the compiler or a file.
    """

    def __init__(self, n_features: int, steps: list[Step], forest: _Forest, calibrators: list[Calibrator]) -> None:
        self.n_features = n_features
        self._steps = steps  # Pipeline preprocessing, applied to the row in order
        self._forest = forest
        self._calibrators = calibrators  # per member: raw log-odds -> P(class 1)
        self._scalar_calibrators: list[Callable[[float], float]] = [c.one for c in calibrators]

    @classmethod
    def from_data(cls, spec: Mapping[str, Any], arrays: Mapping[str, Any]) -> "CompiledModel":
        """Rebuild from ``to_data()``'s output; ``InvalidModelData`` names what does not fit."""
        if not isinstance(spec, Mapping) or spec.get("format") != FORMAT:
            found = spec.get("format") if isinstance(spec, Mapping) else type(spec).__name__
            raise InvalidModelData(f"format {found!r:.60}; this engine reads {FORMAT!r}")
        n_features = spec.get("n_features")
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise InvalidModelData(f"n_features: expected a positive integer, found {n_features!r:.40}")
        forest = _forest(arrays, n_features)
        steps = _parts("steps", spec.get("steps"), _STEPS, arrays, n_features)
        calibrators = _parts("calibrators", spec.get("calibrators"), _CALIBRATORS, arrays, None)
        if len(calibrators) != len(forest.member_starts):
            raise InvalidModelData(f"{len(calibrators)} calibrators for {len(forest.member_starts)} members")
        used = {f"{p}.{i}.{f.name}" for p, parts in (("steps", steps), ("calibrators", calibrators))
                for i, part in enumerate(parts) for f in fields(part) if f.type != "float"}
        if unknown := set(arrays) - set(_ARRAYS) - used:
            raise InvalidModelData(f"unexpected arrays: {', '.join(sorted(unknown))[:120]}")
        return cls(n_features, steps, forest, calibrators)

    def to_data(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able spec, named arrays): everything ``from_data`` needs, and nothing that runs."""
        return model_data(self.n_features, self._steps, self._calibrators, self._forest.arrays())

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


