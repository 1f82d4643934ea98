"""riskengine: an open risk-based authentication engine.

event -> enrich -> profile -> features -> score -> decide -> record (see DESIGN.md).

The names below load on first use (PEP 562), so ``riskengine --help`` and other light commands
never import scikit-learn, pandas or pydantic.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from riskengine.engine import Engine
    from riskengine.events import Event, SessionInfo
    from riskengine.features import FEATURE_NAMES, FEATURES
    from riskengine.policy.decide import Decision, Policy
    from riskengine.settings import Settings

_HOMES = {"Engine": "riskengine.engine", "Event": "riskengine.events", "SessionInfo": "riskengine.events",
          "FEATURES": "riskengine.features", "FEATURE_NAMES": "riskengine.features",
          "Decision": "riskengine.policy.decide", "Policy": "riskengine.policy.decide",
          "Settings": "riskengine.settings"}

__all__ = ["FEATURES", "FEATURE_NAMES", "Decision", "Engine", "Event", "Policy", "SessionInfo", "Settings"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'riskengine' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value                     # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
