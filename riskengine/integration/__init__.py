"""What an app drops in to use riskengine: a client for the HTTP contract (client.py) and an ASGI
middleware that guards sensitive routes with it (guard.py)."""

from riskengine.integration.client import Assessment, AsyncRiskClient, EngineUnavailable, RiskClient
from riskengine.integration.guard import RiskGuard, Subject

__all__ = ["Assessment", "AsyncRiskClient", "EngineUnavailable", "RiskClient", "RiskGuard", "Subject"]
