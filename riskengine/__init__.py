"""riskengine: an open risk-based authentication engine.

event -> enrich -> profile -> features -> score -> decide -> record (see DESIGN.md).
"""

from riskengine.engine import Engine
from riskengine.events import Event, SessionInfo
from riskengine.features import FEATURE_NAMES, FEATURES
from riskengine.policy.decide import Decision, Policy
from riskengine.settings import Settings

__all__ = ["FEATURES", "FEATURE_NAMES", "Decision", "Engine", "Event", "Policy", "SessionInfo", "Settings"]
