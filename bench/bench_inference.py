"""Score step latency: sklearn's predict_proba vs riskengine.scoring.trees, one row at a time.

Run: .venv/bin/python bench/bench_inference.py [--rows 50000] [--samples 2000]. Prints figures,
asserts nothing. Also times the two tree-walk formulations fastpath did not keep, for the record.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from riskengine.scoring.compiler import compile_model


def synthetic(n: int, n_features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels with interactions; 5% missing everywhere, like sparse profile signals."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    logit = X @ rng.normal(size=n_features) / 3 + X[:, 0] * X[:, 1] - 3.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    X[rng.random(X.shape) < 0.05] = np.nan
    return X, y


def latencies_us(fn: Callable, rows: list) -> np.ndarray:
    for row in rows[:50]:  # warm-up
        fn(row)
    out = np.empty(len(rows))
    for k, row in enumerate(rows):
        start = time.perf_counter_ns()
        fn(row)
        out[k] = (time.perf_counter_ns() - start) / 1e3
    return out


def python_walk(hgb: HistGradientBoostingClassifier) -> Callable[[list], float]:
    """Rejected formulation 1: walk each tree node by node in plain Python."""
    trees = [[(int(n["feature_idx"]) if not n["is_leaf"] else -1, float(n["num_threshold"]),
               int(n["left"]), int(n["right"]), bool(n["missing_go_to_left"]), float(n["value"]))
              for n in p.nodes] for (p,) in hgb._predictors]
    baseline = float(hgb._baseline_prediction.ravel()[0])

    def raw(row: list) -> float:
        total = baseline
        for nodes in trees:
            f, t, left, right, nan_left, value = nodes[0]
            while f >= 0:
                x = row[f]
                i = left if x <= t or (x != x and nan_left) else right
                f, t, left, right, nan_left, value = nodes[i]
            total += value
        return total

    return raw


def level_walk(hgb: HistGradientBoostingClassifier) -> Callable[[list], float]:
    """Rejected formulation 2: numpy, all trees advance one level per step (depth steps)."""
    nodes = [p.nodes for (p,) in hgb._predictors]
    offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
    flat = np.concatenate(nodes)
    n_features, leaf = hgb.n_features_in_, flat["is_leaf"].astype(bool)
    node_ids = np.arange(len(flat))
    base = np.repeat(offsets, [len(n) for n in nodes])
    feature = np.where(flat["missing_go_to_left"] == 1, 0, n_features) + flat["feature_idx"]
    threshold = np.where(leaf, np.inf, np.minimum(flat["num_threshold"], np.finfo(float).max))
    children = np.column_stack((np.where(leaf, node_ids, base + flat["left"]),
                                np.where(leaf, node_ids, base + flat["right"]))).ravel()
    depth, baseline = int(flat["depth"].max()), float(hgb._baseline_prediction.ravel()[0])

    def raw(row: list) -> float:
        x = np.minimum(np.asarray(row, dtype=np.float64), np.finfo(float).max)
        xx = np.concatenate((np.fmax(x, -np.inf), np.fmin(x, np.inf)))
        at = offsets
        for _ in range(depth):
            at = children[2 * at + (xx[feature[at]] > threshold[at])]
        return baseline + flat["value"][at].sum()

    return raw


def report(name: str, us: np.ndarray, reference: np.ndarray | None = None) -> None:
    p50, p99 = np.percentile(us, [50, 99])
    speedup = "" if reference is None else f"  x{np.median(reference) / p50:5.1f} vs best sklearn"
    print(f"  {name:38s} p50 {p50:8.1f} µs   p99 {p99:8.1f} µs{speedup}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--samples", type=int, default=2_000)
    args = parser.parse_args()

    X, y = synthetic(args.rows + args.samples, args.features)
    X_train, y_train, X_test = X[: args.rows], y[: args.rows], X[args.rows :]
    hgb = HistGradientBoostingClassifier(max_iter=200, early_stopping=False,
                                         class_weight="balanced", random_state=0)
    calibrated = CalibratedClassifierCV(hgb, method="isotonic", cv=3)
    started = time.perf_counter()
    hgb.fit(X_train, y_train)
    calibrated.fit(X_train, y_train)
    print(f"trained on {args.rows} x {args.features} (positives {y_train.mean():.1%}) "
          f"in {time.perf_counter() - started:.0f} s; {args.samples} held-out rows, one at a time")

    rows = [row.tolist() for row in X_test]  # the service hands over plain lists
    for title, model in (("HGB, 200 trees", hgb),
                         ("CalibratedClassifierCV(HGB, isotonic, cv=3): 3 x 200 trees",
                          calibrated)):
        started = time.perf_counter()
        compiled = compile_model(model)
        print(f"\n{title} (compiled in {(time.perf_counter() - started) * 1e3:.0f} ms)")
        sklearn_one = lambda row: model.predict_proba([row])[0, 1]  # noqa: E731
        sklearn_us = latencies_us(sklearn_one, rows)
        report("sklearn predict_proba", sklearn_us)
        with threadpool_limits(limits=1):  # OpenMP start-up per call is overhead for one row
            single_thread_us = latencies_us(sklearn_one, rows)
        report("sklearn predict_proba, 1 OpenMP thread", single_thread_us)
        if np.median(single_thread_us) < np.median(sklearn_us):
            sklearn_us = single_thread_us  # speed-ups below are against the faster sklearn
        report("fastpath predict_proba_one", latencies_us(compiled.predict_proba_one, rows),
               sklearn_us)
        report("fastpath contributions_one", latencies_us(compiled.contributions_one, rows),
               sklearn_us)
        if model is hgb:
            report("(rejected) pure-Python tree walk", latencies_us(python_walk(hgb), rows),
                   sklearn_us)
            report("(rejected) numpy level-by-level walk", latencies_us(level_walk(hgb), rows),
                   sklearn_us)
        one_by_one = np.array([compiled.predict_proba_one(row) for row in rows])
        expected = model.predict_proba(X_test)[:, 1]
        print(f"  max |fastpath - sklearn|: one row {np.abs(one_by_one - expected).max():.1e}, "
              f"batch {np.abs(compiled.predict_proba(X_test)[:, 1] - expected).max():.1e}")
        worst = max(abs(b + sum(c) - compiled.raw_one(row))
                    for row in rows[:500] for b, c in [compiled.contributions_one(row)])
        print(f"  max |bias + sum(contributions) - raw|: {worst:.1e}")
        for name, fn in (("sklearn", model.predict_proba), ("fastpath", compiled.predict_proba)):
            started = time.perf_counter()
            fn(X_test)
            elapsed = time.perf_counter() - started
            print(f"  batch of {len(X_test)}, {name:8s}: {elapsed * 1e3:7.1f} ms "
                  f"({elapsed / len(X_test) * 1e6:.1f} µs/row)")


if __name__ == "__main__":
    main()
