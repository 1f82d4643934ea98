"""The model registry: artefacts are data (arrays + signed JSON); whatever is refused, the service lives on.

Each attack writes real files into a real registry the way someone with write access to
``models/`` (but not the registry key) could, and checks the refusal and its reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import stat
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from riskengine.api import create_app
from riskengine.features import FEATURE_NAMES
from riskengine.scoring.model import RiskModel
from riskengine.scoring.registry import ModelRefused, ModelRegistry, ModelVersion, read_key, sign
from tests.conftest import API_KEY


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the engine's width: two signals carry the label, a few values are missing."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURE_NAMES)))
    y = (rng.random(n) < 1 / (1 + np.exp(-(2 * X[:, 0] - X[:, 1] - 2.5)))).astype(int)
    X[rng.random(X.shape) < 0.05] = np.nan
    return X, y


X, Y = _data(3000, seed=3)


@pytest.fixture(scope="module")
def models() -> tuple[RiskModel, RiskModel]:
    """Two small, really trained models that score differently."""
    with threadpool_limits(limits=1):
        return (RiskModel(max_iter=15, calibration="sigmoid").fit(X, Y),
                RiskModel(max_iter=8, calibration="isotonic", random_state=1).fit(X, Y))


class _RunsCode:
    """Unpickling this creates ``marker``: what a malicious model.joblib did in the service."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rewrite(entry: ModelVersion, **fields) -> None:
    """Change metadata.json without the key, as an attacker could."""
    path = entry.path / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _resign(registry: ModelRegistry, entry: ModelVersion, **fields) -> None:
    """Change metadata.json *with* the key: a signed artefact that is still not a model."""
    meta = {**json.loads((entry.path / "metadata.json").read_text()), **fields}
    meta["signature"] = sign(read_key(registry.key_file), meta)
    (entry.path / "metadata.json").write_text(json.dumps(meta))


def _arrays(entry: ModelVersion) -> dict[str, np.ndarray]:
    with np.load(entry.path / "model.npz", allow_pickle=False) as archive:
        return dict(archive)


def _save(entry: ModelVersion, payload: bytes | dict) -> str:
    """Put bytes (or arrays) in place of model.npz; returns their sha256."""
    if isinstance(payload, dict):
        buffer = io.BytesIO()
        np.savez(buffer, **payload)
        payload = buffer.getvalue()
    (entry.path / "model.npz").write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


def test_a_registered_model_is_arrays_and_signed_json_and_scores_like_sklearn(models, tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    entry = registry.register(models[0])
    assert sorted(p.name for p in entry.path.iterdir()) == ["metadata.json", "model.npz"]
    with zipfile.ZipFile(entry.path / "model.npz") as archive:           # only .npy arrays inside
        assert all(name.endswith(".npy") for name in archive.namelist())
    assert all(a.dtype != object for a in _arrays(entry).values())
    meta = entry.metadata
    assert meta["format"] == "riskengine-trees/1" and meta["signature"].startswith("hmac-sha256:")
    assert [c["kind"] for c in meta["trees"]["calibrators"]] == ["sigmoid"]
    assert meta["sha256"] == hashlib.sha256((entry.path / "model.npz").read_bytes()).hexdigest()
    key = tmp_path / "var" / "registry.key"                                # outside models/, owner-only
    assert registry.key_file == key and stat.S_IMODE(key.stat().st_mode) == 0o600
    compiled, loaded = registry.load(entry.version)
    assert loaded.version == entry.version
    np.testing.assert_allclose(compiled.predict_proba(X[:500]), models[0].predict_proba(X[:500]), rtol=0, atol=1e-9)


def test_the_registry_key_comes_from_the_settings(tmp_path, settings):
    settings = settings.model_copy(update={"registry_key_file": tmp_path / "elsewhere" / "signing.key"})
    registry = ModelRegistry.open(settings)
    registry.register(RiskModel(max_iter=3).fit(X, Y))
    assert (tmp_path / "elsewhere" / "signing.key").is_file() and not (settings.var / "registry.key").exists()
    assert ModelRegistry(settings.models).key_file == settings.var / "registry.key"


# each attack: (id, what it does to a registered version, what the refusal says)
Attack = Callable[[ModelRegistry, ModelVersion, Path], None]
ATTACKS: list[tuple[str, Attack, str]] = [
    ("unsigned", lambda r, e, t: _rewrite(e, signature=None), "unsigned"),
    ("metadata rewritten", lambda r, e, t: _rewrite(e, feature_names=list(FEATURE_NAMES)[::-1]),
     "signature does not match"),
    ("tampered array", lambda r, e, t: _save(e, {**_arrays(e), "leaf_value": _arrays(e)["leaf_value"] + 1.0}),
     "checksum mismatch"),
    ("tampered array, checksum rewritten",
     lambda r, e, t: _rewrite(e, sha256=_save(e, {**_arrays(e), "baseline": _arrays(e)["baseline"] + 5.0})),
     "signature does not match"),
    ("truncated", lambda r, e, t: _save(e, (e.path / "model.npz").read_bytes()[:1000]), "checksum mismatch"),
    ("truncated, checksum rewritten",
     lambda r, e, t: _rewrite(e, sha256=_save(e, (e.path / "model.npz").read_bytes()[:1000])),
     "signature does not match"),
    ("pickle, checksum rewritten",
     lambda r, e, t: _rewrite(e, sha256=_save(e, pickle.dumps(_RunsCode(t / "ran"))), format="joblib"),
     "signature does not match"),
    ("pickle, signed with the key", lambda r, e, t: _resign(r, e, sha256=_save(e, pickle.dumps(_RunsCode(t / "ran")))),
     "not an array archive"),
    ("not a model, signed", lambda r, e, t: _resign(r, e, sha256=_save(e, b"#!/bin/sh\nrm -rf /\n")),
     "not an array archive"),
    ("object array, signed",
     lambda r, e, t: _resign(r, e, sha256=_save(e, {**_arrays(e), "leaf_value": np.array([{"x": 1}], dtype=object)})),
     "not an array archive"),
    ("integer leaves, signed",
     lambda r, e, t: _resign(r, e, sha256=_save(e, {**_arrays(e), "leaf_value": _arrays(e)["leaf_value"].astype(int)})),
     "'leaf_value': expected floating-point"),
    ("leaf out of its tree, signed",
     lambda r, e, t: _resign(r, e, sha256=_save(e, {**_arrays(e), "left_leaves": _arrays(e)["left_leaves"] | (1 << 40)})),
     "names a leaf its tree does not have"),
    ("unknown calibrator, signed",
     lambda r, e, t: _resign(r, e, trees={**e.metadata["trees"], "calibrators": [{"kind": "eval", "a": 1}]}),
     "calibrators: expected"),
    ("other format, signed", lambda r, e, t: _resign(r, e, format="joblib"), "artefact format 'joblib'"),
    ("key missing", lambda r, e, t: r.key_file.unlink(), "registry key .* is missing"),
    ("key readable by others", lambda r, e, t: r.key_file.chmod(0o644), "readable by others"),
    ("another key", lambda r, e, t: r.key_file.write_bytes(b"k" * 32), "signature does not match"),
    ("archive missing", lambda r, e, t: (e.path / "model.npz").unlink(), "model.npz is missing"),
    ("metadata not JSON", lambda r, e, t: (e.path / "metadata.json").write_text("{"), "not valid JSON"),
]


@pytest.mark.parametrize(("attack", "reason"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_an_altered_artefact_is_refused_with_a_reason_and_runs_nothing(attack, reason, models, tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    entry = registry.register(models[0])
    attack(registry, entry, tmp_path)
    with pytest.raises(ModelRefused, match=reason) as refused:
        registry.load(entry.version)
    assert str(tmp_path) not in str(refused.value)                       # no paths in a reason shown by /health
    assert not (tmp_path / "ran").exists()


def test_the_pickle_payload_is_live(tmp_path):
    """The attack's payload really runs code when unpickled: its absence above means something."""
    pickle.loads(pickle.dumps(_RunsCode(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


def _health_after(client: TestClient, condition: Callable[[dict], bool], seconds: float = 15.0) -> dict:
    deadline = time.monotonic() + seconds
    while not condition(health := client.get("/health").json()):
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    return health


SERVICE_ATTACKS = ["pickle, checksum rewritten", "pickle, signed with the key", "not a model, signed",
                   "tampered array, checksum rewritten", "integer leaves, signed", "key missing"]


def test_the_service_refuses_each_bad_promotion_keeps_serving_and_loads_the_next_good_one(models, settings,
                                                                                           tmp_path):
    registry = ModelRegistry.open(settings)
    good = registry.register(models[0], promote=True)
    body = {"user_id": "u1", "action": "login", "ip": "129.240.2.3", "timestamp": "2026-01-05T08:00:00Z"}
    attacks = {name: attack for name, attack, _ in ATTACKS}
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        first = client.post("/score", json=body).json()
        assert first["model_version"] == good.version
        key = registry.key_file.read_bytes()
        for n, name in enumerate(SERVICE_ATTACKS):
            bad = registry.register(models[1])
            attacks[name](registry, bad, tmp_path)
            registry.promote(bad.version)
            health = _health_after(client, lambda h: bad.version in (h.get("model_error") or ""))
            assert health["model_version"] == good.version, name
            answer = client.post("/score", json={**body, "event_id": f"after-{n}"})
            assert answer.status_code == 200 and answer.json()["model_version"] == good.version, name
            if not registry.key_file.exists():
                registry.key_file.write_bytes(key)
                registry.key_file.chmod(0o600)
        assert not (tmp_path / "ran").exists()
        better = registry.register(models[1], promote=True)
        health = _health_after(client, lambda h: h["model_version"] == better.version)
        assert "model_error" not in health or health["model_error"] is None
        answer = client.post("/score", json={**body, "event_id": "after-good"}).json()
        assert answer["model_version"] == better.version
