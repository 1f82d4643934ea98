"""The model registry: one folder per version under ``models/``, plus a champion pointer.

A model file is loaded only after its sha256, feature list and library
versions match its ``metadata.json``; anything else is refused with a reason.
"""

from __future__ import annotations

import hashlib
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
from typing import Any

import joblib
import numpy
import sklearn

from riskengine.features import FEATURE_NAMES

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
CHAMPION_FILE = "champion"
HISTORY_FILE = "champion.history"


class ModelRefused(Exception):
    """The file is missing, altered, or was built for other features or library versions."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version: str
    path: Path
    metadata: dict[str, Any]


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__, "numpy": numpy.__version__,
            "joblib": joblib.__version__}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _write_atomically(path: Path, text: str) -> None:
    """Readers never see half a file: write beside it, fsync, rename over it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- writing ------------------------------------------------------------
    def register(self, model: Any, metadata: dict[str, Any] | None = None, promote: bool = False) -> ModelVersion:
        """Save a fitted model with its metadata; optionally make it the champion."""
        created = datetime.now(timezone.utc)
        version = f"{created:%Y-%m-%dT%H-%M-%SZ}-{secrets.token_hex(2)}"
        folder = self.root / version
        folder.mkdir(parents=True)
        joblib.dump(model, folder / MODEL_FILE)
        meta = {**(metadata or {}), "version": version, "created_at": created.isoformat().replace("+00:00", "Z"),
                "feature_names": list(FEATURE_NAMES), "libraries": library_versions(),
                "sha256": sha256_file(folder / MODEL_FILE), "git_commit": _git_commit()}
        _write_atomically(folder / METADATA_FILE, json.dumps(meta, indent=2, default=float))
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
            raise ModelRefused(f"model {version}: no {METADATA_FILE} in {folder}") from None
        except ValueError as exc:
            raise ModelRefused(f"model {version}: {METADATA_FILE} is not valid JSON ({exc})") from None
        return ModelVersion(version, folder, metadata)

    def versions(self) -> list[ModelVersion]:
        if not self.root.is_dir():
            return []
        found = []
        for folder in sorted(self.root.iterdir()):
            if (folder / METADATA_FILE).is_file():
                found.append(self.get(folder.name))
        return found

    def load(self, version: str) -> tuple[Any, ModelVersion]:
        """Checksum, feature list and library versions first; only then unpickle."""
        entry = self.get(version)
        meta, file = entry.metadata, entry.path / MODEL_FILE
        if not file.is_file():
            raise ModelRefused(f"model {version}: {MODEL_FILE} is missing")
        actual = sha256_file(file)
        if actual != meta.get("sha256"):
            raise ModelRefused(f"model {version}: checksum mismatch (file {actual[:12]}…, "
                               f"registry {str(meta.get('sha256'))[:12]}…); the file was altered")
        if meta.get("feature_names") != list(FEATURE_NAMES):
            raise ModelRefused(f"model {version}: trained on other features than this engine computes "
                               f"({len(meta.get('feature_names') or [])} vs {len(FEATURE_NAMES)}); retrain it")
        built = meta.get("libraries", {})
        for name in ("scikit-learn", "numpy"):
            if _minor(built.get(name, "?")) != _minor(library_versions()[name]):
                raise ModelRefused(f"model {version}: built with {name} {built.get(name)}, "
                                   f"running {library_versions()[name]}; retrain it")
        return joblib.load(file), entry


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
        """Load the champion if the pointer changed since the last look."""
        stamp = self.registry.champion_stamp()
        if stamp == self._seen or stamp[0] is None:
            return
        self._seen = stamp
        try:
            model, entry = self.registry.load(stamp[0])
        except ModelRefused as refused:
            self.on_error(str(refused))
            return
        except Exception as exc:                      # a corrupt pickle must not kill the watcher
            self.on_error(f"model {stamp[0]}: could not be loaded ({type(exc).__name__}: {exc})")
            return
        self.on_load(model, entry)

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
