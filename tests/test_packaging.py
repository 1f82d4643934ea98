"""Packaging and deployment: the serving install works without the lab's libraries, `riskengine --help`
stays quick, the deployment files run the command the tests run, and the repository documents every path.

The real slim install (`pip install .` into a fresh venv, then `riskengine serve`) is `.ci/slim`;
here the lab's libraries are blocked in a subprocess, which is quick enough for every run.
"""

from __future__ import annotations

import json
import re
import shlex
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import yaml

from riskengine.cli import _LAB_MODULES, build_parser
from riskengine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# Run in a child interpreter: every lab library is refused at import, as if it were not installed.
_BLOCK = """
import sys
class _NotInstalled:
    blocked = set(sys.argv[1].split(","))
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the serving install)", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""

_SERVE_WITHOUT_LAB = _BLOCK + """
import os, sys
from pathlib import Path
from fastapi.testclient import TestClient
from riskengine.api import create_app
from riskengine.cli import _bootstrap
from riskengine.settings import Settings

home = Path(sys.argv[2])
settings = Settings(home=home, api_keys="tests:k")
_bootstrap(settings)                          # no model and no lab: says so and returns
with TestClient(create_app(settings)) as client:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200, client.get("/readyz").text
    answer = client.post("/score", headers={"Authorization": "Bearer k"},
                         json={"user_id": "alice", "action": "login", "ip": "129.240.2.3", "device_id": "d1"})
    assert answer.status_code == 200, answer.text
    print("MODEL", answer.json()["model_version"])
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in sys.argv[1].split(","))
print("LOADED", loaded)
"""


def _run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, ",".join(_LAB_MODULES), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_serving_modules_import_without_the_lab():
    """Everything `riskengine serve` and the integration client import, with pandas, pyarrow, scipy,
    scikit-learn and matplotlib uninstallable."""
    modules = ["riskengine.api.app", "riskengine.cli", "riskengine.engine", "riskengine.scoring.registry",
               "riskengine.scoring.scorers", "riskengine.integration.client", "riskengine.integration.guard",
               "riskengine.signals.routes", "riskengine.audit.commands", "riskengine.stores.redis",
               "riskengine.stores.sqlite"]
    done = _run(_BLOCK + f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('OK')")
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr


def test_a_registered_model_serves_without_the_lab(tmp_path):
    """The registry's compiled trees load and score with numpy only: no scikit-learn, no scipy."""
    import numpy as np

    from riskengine.features import FEATURE_NAMES
    from riskengine.scoring.model import RiskModel
    from riskengine.scoring.registry import ModelRegistry

    rng = np.random.default_rng(7)
    X = rng.normal(size=(600, len(FEATURE_NAMES)))
    y = (X[:, 0] + rng.normal(scale=0.5, size=600) > 1.0).astype(int)
    model = RiskModel(max_iter=5, calibration="sigmoid").fit(X, y)
    settings = Settings(home=tmp_path, api_keys="tests:k")
    version = ModelRegistry.open(settings).register(model, promote=True).version
    done = _run(_SERVE_WITHOUT_LAB, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"MODEL {version}" in done.stdout
    assert "LOADED []" in done.stdout


def test_serve_without_the_lab_falls_back_to_the_statistical_score(tmp_path):
    done = _run(_SERVE_WITHOUT_LAB, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "MODEL freeman-statistical@1" in done.stdout
    assert "cannot train one" in done.stderr and "pip install 'riskengine[lab]'" in done.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_a_lab_command_without_the_lab_names_the_extra(tmp_path):
    done = _run(_BLOCK + "import sys\nfrom riskengine.cli import main\n"
                "sys.exit(main(['generate', '--out', sys.argv[2] + '/x.parquet', '--users', '5', '--days', '1']))",
                str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert "riskengine generate: needs" in done.stderr and "pip install 'riskengine[lab]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_is_quick():
    """`riskengine --help` imports no web framework, numpy or pydantic: median of 5 runs under 0.5 s
    (about 0.1 s here; a single run under load can take longer, hence the median)."""
    script = Path(sys.executable).with_name("riskengine")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "riskengine"]
    times = []
    for _ in range(5):
        started = time.perf_counter()
        done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=30)
        times.append(time.perf_counter() - started)
        assert done.returncode == 0 and "serve" in done.stdout, done.stderr
    assert statistics.median(times) < 0.5, times
    heavy = subprocess.run([sys.executable, "-c", "import sys, riskengine.cli; print(sorted(m for m in "
                            "('fastapi', 'numpy', 'pydantic', 'pandas', 'sklearn', 'uvicorn') if m in sys.modules))"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert heavy.stdout.strip() == "[]", heavy.stdout + heavy.stderr


# -- pyproject, constraints ---------------------------------------------------------------------
def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_serving_install_leaves_out_the_lab():
    project = _project()
    core = {_name(r) for r in project["dependencies"]}
    lab = {_name(r) for r in project["optional-dependencies"]["lab"]}
    assert {"pandas", "pyarrow", "scipy", "scikit-learn", "matplotlib"} <= lab
    assert not core & lab
    assert "riskengine[lab]" in project["optional-dependencies"]["dev"]     # make install: training works


def test_constraints_pin_every_dependency_of_the_images():
    """constraints.txt (Dockerfile) pins the core and the lab extra, each pin inside pyproject's range."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            pins[_name(name)] = version.split(";")[0].strip()
    project = _project()
    for text in project["dependencies"] + project["optional-dependencies"]["lab"]:
        requirement = Requirement(text)
        name = _name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt: regenerate it (make constraints)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(requirement))


# -- Dockerfile, compose.yaml -------------------------------------------------------------------
def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _dockerfile_cmd() -> list[str]:
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    return json.loads(lines[-1].removeprefix("CMD "))


def _multiprocess_command() -> list[str]:
    """The argv tests/test_multiprocess.py starts each service process with (the script, then literals)."""
    source = (ROOT / "tests" / "test_multiprocess.py").read_text()
    found = re.search(r"Popen\(\[str\(riskengine\), ((?:\"[^\"]+\", )+)", source)
    assert found, "tests/test_multiprocess.py no longer starts `riskengine serve` as this test expects"
    return ["riskengine", *json.loads("[" + found.group(1).rstrip(", ") + "]")]


def test_compose_runs_the_command_the_image_and_the_multiprocess_tests_run():
    service = _compose()["services"]["riskengine"]
    command = service["command"]
    assert command == _dockerfile_cmd()
    assert command[:2] == _multiprocess_command()[:2] == ["riskengine", "serve"]
    args = build_parser().parse_args(command[1:])                 # options the CLI really has
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8000)
    fields = {name.upper() for name in Settings.model_fields}
    for name in service["environment"]:
        assert name.startswith("RISKENGINE_") and name.removeprefix("RISKENGINE_") in fields, name
    assert service["environment"]["RISKENGINE_STORE"].startswith("redis://redis:6379/")
    assert service["deploy"]["replicas"] >= 2
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert "/livez" in (ROOT / "Dockerfile").read_text().split("HEALTHCHECK", 1)[1]


def test_compose_redis_persists_every_write():
    redis = _compose()["services"]["redis"]
    command = redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    options = dict(zip(command[1::2], command[2::2]))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in ("always", "everysec")
    assert any(volume.endswith(":" + options.get("--dir", "/data")) for volume in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_compose_makes_the_shared_keys_before_a_replica_starts():
    """On Redis, serve refuses to start without the audit and pseudonym keys (found by running the
    compose file: every replica exited); the init job makes them in the volume the replicas mount."""
    services = _compose()["services"]
    init, replica = services["init"], services["riskengine"]
    assert replica["depends_on"]["init"]["condition"] == "service_completed_successfully"
    script = init["command"][-1]
    assert script.startswith("riskengine init ||")          # exits 1 when all exist: a later `up` still passes
    assert build_parser().parse_args(["init"]).command == "init"
    var = [v for v in replica["volumes"] if v.endswith(":/srv/riskengine/var")]
    assert var and var[0] in init["volumes"] and init["image"] == replica["image"]


def test_the_image_is_slim_and_not_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("FROM ") >= 2                                     # build stage, runtime stage
    assert "-c constraints.txt" in dockerfile
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")


# -- docs/ --------------------------------------------------------------------------------------
def test_docs_api_names_every_path_the_service_serves(tmp_path):
    from riskengine.api import create_app

    api = (ROOT / "docs" / "API.md").read_text()
    paths = create_app(Settings(home=tmp_path, api_keys="tests:k")).openapi()["paths"]
    assert paths
    missing = [path for path in paths if path.removeprefix("/v1") not in api]
    assert not missing, f"docs/API.md does not document {missing}"
    if any(path.startswith("/v1/") for path in paths):
        assert "/v1/" in api
    readme = (ROOT / "README.md").read_text()
    assert "docs/API.md" in readme and "shared folder" not in readme
