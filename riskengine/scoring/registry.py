"""The model registry: one folder per version under ``models/``, plus a champion pointer.

A version is data, never code: ``model.npz`` (the compiled trees, read with
``allow_pickle=False``) and ``metadata.json`` (feature names, calibrator parameters, the
archive's sha256, library versions, metrics), signed with HMAC-SHA256 under a registry key
kept outside ``models/`` (default ``var/registry.key``). Whoever can write ``models/`` but
not read the key cannot get a model served; anything refused is refused with a reason.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import platform
import secrets
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy

from riskengine.features import FEATURE_NAMES
from riskengine.scoring.scorers import as_compiled
from riskengine.scoring.trees import FORMAT, CompiledModel, InvalidModelData

if TYPE_CHECKING:
    from riskengine.settings import Settings

MODEL_FILE = "model.npz"
METADATA_FILE = "metadata.json"
CHAMPION_FILE = "champion"
HISTORY_FILE = "champion.history"
KEY_FILE = "registry.key"
_SIGNATURE = "hmac-sha256:"
_KEY_BYTES = 32


class ModelRefused(Exception):
    """The artefact is missing, unsigned, altered, not a model, or built for other features."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version: str
    path: Path
    metadata: dict[str, Any]


def library_versions() -> dict[str, str]:
    import sklearn          # registering is the lab's (riskengine[lab]); serving never imports it

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__, "numpy": numpy.__version__}


def sign(key: bytes, metadata: dict[str, Any]) -> str:
    """HMAC-SHA256 of the metadata (all of it but the signature) as canonical JSON."""
    body = {k: v for k, v in metadata.items() if k != "signature"}
    message = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return _SIGNATURE + hmac.new(key, message, hashlib.sha256).hexdigest()


def read_key(path: Path, *, create: bool = False) -> bytes:
    """The registry key: made once (0600) when a model is first registered; a missing, short or
    shared key refuses loading rather than trusting an unsigned model."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:                       # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(_KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
    try:
        mode, key = path.stat().st_mode, path.read_bytes()
    except FileNotFoundError:
        raise ModelRefused(f"the registry key ({path.name}) is missing: models cannot be verified; restore it, "
                           "or retrain so that a new key signs the new model") from None
    if mode & 0o077:
        raise ModelRefused(f"the registry key ({path.name}) is readable by others (mode {mode & 0o777:o}): "
                           "chmod 600 it")
    if len(key) < _KEY_BYTES:
        raise ModelRefused(f"the registry key ({path.name}) is {len(key)} bytes; at least {_KEY_BYTES} expected")
    return key


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _write_atomically(path: Path, data: str | bytes) -> None:
    """Readers never see half a file: write beside it, fsync, rename over it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ModelRegistry:
    """Versions under ``root``; ``key_file`` signs and verifies them (default: ``../var/registry.key``,
    beside the audit key, so a copy of ``models/`` never carries the key)."""

    def __init__(self, root: Path, key_file: Path | None = None) -> None:
        self.root = Path(root)
        self.key_file = Path(key_file) if key_file is not None else self.root.parent / "var" / KEY_FILE

    @classmethod
    def open(cls, settings: Settings) -> "ModelRegistry":
        """The home's registry, with ``RISKENGINE_REGISTRY_KEY_FILE`` when set."""
        return cls(settings.models, settings.registry_key_file or settings.var / KEY_FILE)

    # -- writing ------------------------------------------------------------
    def register(self, model: Any, metadata: dict[str, Any] | None = None, promote: bool = False) -> ModelVersion:
        """Compile a fitted model to arrays, save them with signed metadata; optionally promote.

        A model the compiler cannot reproduce exactly raises ``UnsupportedModel`` and nothing is written.
        """
        spec, arrays = as_compiled(model).to_data()
        key = read_key(self.key_file, create=True)
        buffer = io.BytesIO()
        numpy.savez(buffer, allow_pickle=False, **arrays)
        blob = buffer.getvalue()
        created = datetime.now(timezone.utc)
        version = f"{created:%Y-%m-%dT%H-%M-%SZ}-{secrets.token_hex(2)}"
        folder = self.root / version
        folder.mkdir(parents=True)
        _write_atomically(folder / MODEL_FILE, blob)
        meta = {**(metadata or {}), "version": version, "created_at": created.isoformat().replace("+00:00", "Z"),
                "feature_names": list(FEATURE_NAMES), "libraries": library_versions(), "format": FORMAT,
                "model_file": MODEL_FILE, "sha256": hashlib.sha256(blob).hexdigest(), "trees": spec,
                "git_commit": _git_commit(), "anomaly_floor": getattr(model, "anomaly_floor", None),
                "anomaly_input": bool(getattr(model, "anomaly_input", False)),
                "floor_signals": (None if (signals := getattr(model, "floor_signals", None)) is None
                                  else [str(name) for name in signals]),
                "monotonic_cst": _listed(getattr(model, "monotonic_cst", None))}
        meta = json.loads(json.dumps(meta, default=float))   # what is signed is what is read back
        meta["signature"] = sign(key, meta)
        _write_atomically(folder / METADATA_FILE, json.dumps(meta, indent=2))
        registered = ModelVersion(version, folder, meta)
        if promote:
            self.promote(version)
        return registered

    def promote(self, version: str) -> None:
        self.get(version)                                   # refuse to point at nothing
        previous = self.champion_version()
        if previous == version:
            return
        if previous:
            with open(self.root / HISTORY_FILE, "a") as history:
                history.write(previous + "\n")
        _write_atomically(self.root / CHAMPION_FILE, version + "\n")

    def rollback(self) -> str:
        """Point the champion back at the one before it."""
        history_path = self.root / HISTORY_FILE
        history = history_path.read_text().split() if history_path.exists() else []
        if not history:
            raise ModelRefused("no earlier champion to roll back to")
        previous = history.pop()
        self.get(previous)
        _write_atomically(self.root / CHAMPION_FILE, previous + "\n")
        _write_atomically(history_path, "".join(v + "\n" for v in history))
        return previous

    # -- reading ------------------------------------------------------------
    def champion_version(self) -> str | None:
        path = self.root / CHAMPION_FILE
        return path.read_text().strip() or None if path.exists() else None

    def champion_stamp(self) -> tuple[str | None, float]:
        """What the watcher compares: the pointer's content and its modification time."""
        path = self.root / CHAMPION_FILE
        try:
            return path.read_text().strip() or None, path.stat().st_mtime
        except FileNotFoundError:
            return None, 0.0

    def get(self, version: str) -> ModelVersion:
        folder = self.root / version
        try:
            metadata = json.loads((folder / METADATA_FILE).read_text())
        except FileNotFoundError:
            raise ModelRefused(f"model {version}: no {METADATA_FILE}") from None
        except ValueError as exc:
            raise ModelRefused(f"model {version}: {METADATA_FILE} is not valid JSON ({exc})") from None
        if not isinstance(metadata, dict):
            raise ModelRefused(f"model {version}: {METADATA_FILE} is not a JSON object")
        return ModelVersion(version, folder, metadata)

    def versions(self) -> list[ModelVersion]:
        if not self.root.is_dir():
            return []
        found = []
        for folder in sorted(self.root.iterdir()):
            if (folder / METADATA_FILE).is_file():
                found.append(self.get(folder.name))
        return found

    def load(self, version: str) -> tuple[CompiledModel, ModelVersion]:
        """Signature, format, features and checksum first; then the arrays, read without pickle."""
        entry = self.get(version)
        meta = entry.metadata
        signature = meta.get("signature")
        if not isinstance(signature, str):
            legacy = " (a pickled model.joblib from an earlier riskengine: retrain it)" if (
                entry.path / "model.joblib").exists() else ""
            raise ModelRefused(f"model {version}: unsigned{legacy}")
        try:
            key = read_key(self.key_file)
        except ModelRefused as exc:
            raise ModelRefused(f"model {version}: {exc}") from None
        if not hmac.compare_digest(signature.encode(), sign(key, meta).encode()):
            raise ModelRefused(f"model {version}: signature does not match; {METADATA_FILE} was altered "
                               "or signed with another registry key")
        if meta.get("format") != FORMAT or meta.get("model_file") != MODEL_FILE:
            raise ModelRefused(f"model {version}: artefact format {meta.get('format')!r:.40}; "
                               f"this engine reads {FORMAT!r}")
        names = meta.get("feature_names")
        if not _known_features(names):
            unknown = sorted(set(names) - set(FEATURE_NAMES)) if isinstance(names, list) and all(
                isinstance(n, str) for n in names) else []
            raise ModelRefused(f"model {version}: trained on other features than this engine computes "
                               f"({len(names) if isinstance(names, list) else 0} vs {len(FEATURE_NAMES)}"
                               f"{'; unknown: ' + ', '.join(unknown[:5]) if unknown else ''}); retrain it")
        try:
            blob = (entry.path / MODEL_FILE).read_bytes()   # read once: what is checked is what is parsed
        except FileNotFoundError:
            raise ModelRefused(f"model {version}: {MODEL_FILE} is missing") from None
        actual = hashlib.sha256(blob).hexdigest()
        if not hmac.compare_digest(actual, str(meta.get("sha256"))):
            raise ModelRefused(f"model {version}: checksum mismatch (file {actual[:12]}…, "
                               f"registry {str(meta.get('sha256'))[:12]}…); the file was altered")
        try:
            with numpy.load(io.BytesIO(blob), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except Exception as exc:                           # any parse failure of untrusted bytes: refuse
            raise ModelRefused(f"model {version}: {MODEL_FILE} is not an array archive "
                               f"({type(exc).__name__}: {str(exc)[:120]})") from None
        try:
            model = CompiledModel.from_data(meta.get("trees"), arrays)
        except InvalidModelData as exc:
            raise ModelRefused(f"model {version}: {exc}") from None
        if model.n_features != len(names) + bool(meta.get("anomaly_input")):     # + the stacked anomaly column
            raise ModelRefused(f"model {version}: trained on other features than this engine computes "
                               f"({model.n_features} columns, {len(names)} feature names); retrain it")
        return model, entry


class ChampionWatcher:
    """Polls the champion pointer and hands each newly promoted, verified model to ``on_load``.

    Loading happens on this background thread, so requests in flight keep the model
    they started with and none waits for a load. A refused model leaves the old one serving.
    """

    def __init__(self, registry: ModelRegistry, on_load: Callable[[Any, ModelVersion], None],
                 on_error: Callable[[str], None], interval: float = 1.0) -> None:
        self.registry, self.on_load, self.on_error, self.interval = registry, on_load, on_error, interval
        self._seen: tuple[str | None, float] = (None, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Load the champion if the pointer changed since the last look; never raises."""
        try:
            stamp = self.registry.champion_stamp()
            if stamp == self._seen or stamp[0] is None:
                return
            self._seen = stamp
            model, entry = self.registry.load(stamp[0])
            self.on_load(model, entry)
        except ModelRefused as refused:
            self.on_error(str(refused))
        except Exception as exc:                      # whatever a file holds, the watcher lives on
            self.on_error(f"model {self._seen[0]}: could not be loaded ({type(exc).__name__}: {str(exc)[:200]})")

    def start(self) -> "ChampionWatcher":
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _known_features(names: Any) -> bool:
    """A model's feature names this engine can feed: its own, or an older model's (a subset of them
    without repeats, in any order: a feature added later is left out of its rows, ``TrainedScorer``)."""
    return (isinstance(names, list) and bool(names) and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names) and set(names) <= set(FEATURE_NAMES))


def _listed(values: Any) -> list[int] | None:
    """Training parameters as JSON (the served trees do not carry them): what the metadata records."""
    return None if values is None else [int(v) for v in values]
