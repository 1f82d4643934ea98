import functools
import io
import json

import numpy as np
import pytest
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from riskengine.scoring.compiler import SKLEARN_VERSIONS, UnsupportedModel, compile_model
from riskengine.scoring.trees import CompiledModel, Sigmoid

N_FEATURES = 12


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels; feature 2's missingness is itself a signal, so trees split on NaN."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    signal_missing = rng.random(n) < 0.3
    logit = 1.5 * X[:, 0] - X[:, 1] * X[:, 3] + 2.0 * signal_missing - 2.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    X[signal_missing, 2] = np.nan
    X[rng.random(X.shape) < 0.08] = np.nan  # missing everywhere, train and test
    X[:, 11] = 0.0  # constant: no tree can split on it
    return X, y


X_TRAIN, Y_TRAIN = _data(2000, seed=1)
X_TEST, _ = _data(400, seed=2)
X_TEST_INF = X_TEST.copy()
X_TEST_INF[:5, 0], X_TEST_INF[5:10, 2] = np.inf, -np.inf  # legal HGB input, not StandardScaler's


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """Tiny fits: OpenMP start-up costs more than it saves, and far more on a busy machine."""
    with threadpool_limits(limits=1):
        yield


def _hgb(**params) -> HistGradientBoostingClassifier:
    defaults = dict(max_iter=50, class_weight="balanced", random_state=0)
    return HistGradientBoostingClassifier(**defaults | params)


def _calibrated(method: str, ensemble: bool) -> CalibratedClassifierCV:
    return CalibratedClassifierCV(_hgb(), method=method, cv=3, ensemble=ensemble)


def _prefit_sigmoid() -> CalibratedClassifierCV:
    """Calibrate an already trained model on later rows (what cv="prefit" used to do)."""
    frozen = FrozenEstimator(_hgb().fit(X_TRAIN[:1000], Y_TRAIN[:1000]))
    return CalibratedClassifierCV(frozen, method="sigmoid").fit(X_TRAIN[1000:], Y_TRAIN[1000:])


MODELS = {
    "hgb": lambda: _hgb(),
    "sigmoid-ensemble": lambda: _calibrated("sigmoid", ensemble=True),
    "sigmoid-single": lambda: _calibrated("sigmoid", ensemble=False),
    "isotonic-ensemble": lambda: _calibrated("isotonic", ensemble=True),
    "isotonic-single": lambda: _calibrated("isotonic", ensemble=False),
    "pipeline": lambda: make_pipeline(SimpleImputer(strategy="median"), "passthrough",
                                      StandardScaler(), _calibrated("isotonic", ensemble=True)),
    "prefit-sigmoid": _prefit_sigmoid,
    "monotonic": lambda: CalibratedClassifierCV(_hgb(monotonic_cst=[1, -1] + [0] * (N_FEATURES - 2)),
                                                method="sigmoid", cv=3),
}


@functools.cache
def _fitted(name: str):
    model = MODELS[name]()
    return model if name == "prefit-sigmoid" else model.fit(X_TRAIN, Y_TRAIN)


@pytest.fixture(params=MODELS)
def fitted(request):
    return _fitted(request.param)


def _members(model) -> list[HistGradientBoostingClassifier]:
    model = model[-1] if hasattr(model, "steps") else model
    if isinstance(model, HistGradientBoostingClassifier):
        return [model]
    return [getattr(c.estimator, "estimator", c.estimator) for c in model.calibrated_classifiers_]


def test_the_test_data_exercises_missing_values_and_nan_splits():
    hgb = _fitted("hgb")
    nodes = np.concatenate([p.nodes for (p,) in hgb._predictors])
    splits = nodes[nodes["is_leaf"] == 0]
    assert np.isnan(X_TEST).any(axis=1).mean() > 0.5
    assert np.isinf(splits["num_threshold"]).any()  # "split on NaN" nodes
    assert splits["missing_go_to_left"].any() and not splits["missing_go_to_left"].all()


def test_probabilities_equal_sklearn(fitted):
    compiled, X = compile_model(fitted), X_TEST if hasattr(fitted, "steps") else X_TEST_INF
    expected = fitted.predict_proba(X)[:, 1]
    assert expected.std() > 0.05  # not a constant model, so equality says something
    one_by_one = np.array([compiled.predict_proba_one(row.tolist()) for row in X])
    np.testing.assert_allclose(one_by_one, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(compiled.predict_proba(X), fitted.predict_proba(X),
                               rtol=0, atol=1e-9)
    restored = _through_npz(compiled)
    np.testing.assert_array_equal(restored.predict_proba(X), compiled.predict_proba(X))
    assert [restored.score_one(row) for row in X[:20]] == [compiled.score_one(row) for row in X[:20]]


def _through_npz(compiled: CompiledModel) -> CompiledModel:
    """The registry's round trip: JSON for the spec, an .npz read back without pickle."""
    spec, arrays = compiled.to_data()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as archive:
        return CompiledModel.from_data(json.loads(json.dumps(spec)), dict(archive))


def test_raw_is_mean_of_member_decision_functions(fitted):
    compiled = compile_model(fitted)
    X = X_TEST if not hasattr(fitted, "steps") else fitted[:-1].transform(X_TEST)
    expected = np.mean([hgb.decision_function(X) for hgb in _members(fitted)], axis=0)
    raw = np.array([compiled.raw_one(row) for row in X_TEST])
    np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-9)


def test_contributions_add_up_to_raw(fitted):
    compiled = compile_model(fitted)
    for row in X_TEST[:100]:
        bias, contributions = compiled.contributions_one(row)
        assert len(contributions) == N_FEATURES
        assert bias + sum(contributions) == pytest.approx(compiled.raw_one(row), abs=1e-9)
        assert contributions[11] == 0.0  # constant feature, never split on


def test_score_one_is_probability_and_contributions_in_one_pass(fitted):
    compiled = compile_model(fitted)
    for row in X_TEST[:50]:
        risk, contributions = compiled.score_one(row)
        assert risk == compiled.predict_proba_one(row)
        assert contributions == compiled.contributions_one(row)[1]


def _saabas_by_walking(hgb: HistGradientBoostingClassifier, row: np.ndarray):
    """Independent reference: walk each tree as sklearn's predictor does."""
    def mean_value(nodes, i):  # internal node: count-weighted mean of its children
        if nodes["is_leaf"][i]:
            return nodes["value"][i]
        lo, hi = nodes["left"][i], nodes["right"][i]
        return ((nodes["count"][lo] * mean_value(nodes, lo) + nodes["count"][hi]
                 * mean_value(nodes, hi)) / (nodes["count"][lo] + nodes["count"][hi]))

    bias, contributions = float(hgb._baseline_prediction.ravel()[0]), np.zeros(len(row))
    for (predictor,) in hgb._predictors:
        nodes, i = predictor.nodes, 0
        bias += mean_value(nodes, 0)
        while not nodes["is_leaf"][i]:
            x = row[nodes["feature_idx"][i]]
            left = nodes["missing_go_to_left"][i] if np.isnan(x) else x <= nodes["num_threshold"][i]
            child = nodes["left"][i] if left else nodes["right"][i]
            credit = mean_value(nodes, child) - mean_value(nodes, i)
            contributions[nodes["feature_idx"][i]] += credit
            i = child
    return bias, contributions


def test_contributions_match_a_tree_walk():
    hgb = _hgb(max_iter=15).fit(X_TRAIN, Y_TRAIN)
    compiled = compile_model(hgb)
    for row in X_TEST[:25]:
        bias, contributions = compiled.contributions_one(row)
        expected_bias, expected = _saabas_by_walking(hgb, row)
        assert bias == pytest.approx(expected_bias, abs=1e-12)
        np.testing.assert_allclose(contributions, expected, rtol=0, atol=1e-12)
    assert np.abs(expected).max() > 0.1


def test_ensemble_contributions_are_the_member_mean():
    model = _fitted("sigmoid-ensemble")
    compiled, row = compile_model(model), X_TEST[0]
    walks = [_saabas_by_walking(hgb, row) for hgb in _members(model)]
    bias, contributions = compiled.contributions_one(row)
    assert bias == pytest.approx(np.mean([b for b, _ in walks]), abs=1e-12)
    np.testing.assert_allclose(contributions, np.mean([c for _, c in walks], axis=0), atol=1e-12)


def test_single_leaf_trees_and_64_leaf_trees_compile():
    for leaves, model in ((1, _hgb(max_iter=3, min_samples_leaf=1500)),  # no split possible
                          (64, _hgb(max_iter=5, max_leaf_nodes=64, min_samples_leaf=2))):
        model.fit(X_TRAIN, Y_TRAIN)
        assert max(p.get_n_leaf_nodes() for (p,) in model._predictors) == leaves
        compiled, expected = compile_model(model), model.predict_proba(X_TRAIN)
        one_by_one = [compiled.predict_proba_one(row) for row in X_TRAIN]  # reaches every leaf
        np.testing.assert_allclose(one_by_one, expected[:, 1], rtol=0, atol=1e-9)
        np.testing.assert_allclose(compiled.predict_proba(X_TRAIN), expected, rtol=0, atol=1e-9)


def test_rows_of_the_wrong_width_are_refused():
    compiled = compile_model(_hgb(max_iter=5).fit(X_TRAIN, Y_TRAIN))
    assert isinstance(compiled, CompiledModel) and compiled.n_features == N_FEATURES
    with pytest.raises(ValueError, match="12 features"):
        compiled.predict_proba_one([0.0] * 11)
    with pytest.raises(ValueError, match="12 features"):
        compiled.predict_proba(np.zeros((3, 13)))


def _multiclass():
    return _hgb(max_iter=5).fit(X_TRAIN, np.arange(len(X_TRAIN)) % 3)


def _categorical():
    X = X_TRAIN.copy()
    X[:, 0] = np.abs(np.nan_to_num(X[:, 0]) * 3).astype(int) % 5
    return _hgb(max_iter=5, categorical_features=[0]).fit(X, Y_TRAIN)


#: temperature scaling exists from scikit-learn 1.8; the lowest supported versions (.ci/lowest) cannot
#: make such a model, so there is nothing for the compiler to refuse and the case is not generated
HAS_TEMPERATURE = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8)


def _temperature():
    return CalibratedClassifierCV(_hgb(max_iter=5), method="temperature", cv=2).fit(X_TRAIN, Y_TRAIN)


UNSUPPORTED = [  # (what, fitted model, expected message)
    ("linear", lambda: LogisticRegression().fit(np.nan_to_num(X_TRAIN), Y_TRAIN),
     "LogisticRegression is not supported"),
    ("regressor", lambda: HistGradientBoostingRegressor(max_iter=5).fit(X_TRAIN, Y_TRAIN),
     "HistGradientBoostingRegressor is not supported"),
    ("multiclass", _multiclass, "3 classes"),
    ("categorical", _categorical, "categorical"),
    ("unfitted", lambda: _hgb(), "is not fitted"),
    *([("temperature", _temperature, "temperature")] if HAS_TEMPERATURE else []),
    ("big trees", lambda: _hgb(max_iter=2, max_leaf_nodes=100, min_samples_leaf=2).fit(
        X_TRAIN, Y_TRAIN), "leaves"),
    ("indicator", lambda: make_pipeline(SimpleImputer(add_indicator=True), _hgb(max_iter=5)).fit(
        X_TRAIN, Y_TRAIN), "add_indicator"),
    ("unfitted step", lambda: make_pipeline(StandardScaler(), _fitted("hgb")), "not fitted"),
    ("calibrated pipeline", lambda: CalibratedClassifierCV(
        make_pipeline(StandardScaler(), _hgb(max_iter=5)), cv=2).fit(X_TRAIN, Y_TRAIN),
     "wraps a Pipeline"),
]


@pytest.mark.parametrize(("factory", "message"), [case[1:] for case in UNSUPPORTED],
                         ids=[case[0] for case in UNSUPPORTED])
def test_unsupported_models_raise_with_a_clear_message(factory, message):
    with pytest.raises(UnsupportedModel, match=message):
        compile_model(factory())
    assert issubclass(UnsupportedModel, ValueError)  # callers may catch either


def test_the_single_row_sigmoid_matches_scipy_without_overflowing() -> None:
    from scipy.special import expit

    for raw in (-1e6, -800.0, -36.5, -1.0, 0.0, 1e-12, 2.5, 40.0, 800.0, 1e6):
        assert Sigmoid(a=-1.7, b=0.3).one(raw) == pytest.approx(float(expit(-(-1.7 * raw + 0.3))), rel=1e-15,
                                                                  abs=1e-300)


@pytest.mark.parametrize("version", ["1.5.2", "1.10.0", "1.10.dev0", "2.0.0", "0.24.2", "nightly"])
def test_a_scikit_learn_the_compiler_does_not_know_is_refused_not_misread(version, monkeypatch):
    """The compiler reads private tree attributes: outside the checked versions it says so."""
    import sklearn

    model = _fitted("sigmoid-single")
    monkeypatch.setattr(sklearn, "__version__", version)
    with pytest.raises(UnsupportedModel, match=rf"scikit-learn {version} is outside .* \(1\.6 to 1\.9\)"):
        compile_model(model)
    monkeypatch.undo()
    assert compile_model(model).predict_proba_one(X_TEST[0]) == pytest.approx(model.predict_proba(X_TEST[:1])[0, 1])


def test_pyproject_allows_exactly_the_scikit_learn_versions_the_compiler_knows():
    import re
    from pathlib import Path

    import sklearn

    (lo_major, lo_minor), (hi_major, hi_minor) = SKLEARN_VERSIONS
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.findall(r'"scikit-learn([^"]*)"', pyproject) == [f">={lo_major}.{lo_minor},<{hi_major}.{hi_minor + 1}"]
    installed = tuple(int(p) for p in sklearn.__version__.split(".")[:2])
    assert SKLEARN_VERSIONS[0] <= installed <= SKLEARN_VERSIONS[1]


def test_monotonic_constraints_hold_in_the_compiled_model():
    """A constrained model compiles like any other, and the constraint survives compilation."""
    model = _fitted("monotonic")
    compiled, rows = compile_model(model), np.repeat(X_TEST[:20], 9, axis=0)
    rows[:, 0] = np.tile(np.linspace(-3, 3, 9), 20)
    risk = compiled.predict_proba(rows)[:, 1].reshape(20, 9)
    assert (np.diff(risk, axis=1) >= -1e-12).all() and (risk[:, -1] > risk[:, 0]).any()
