"""The HTTP layer: thin over the Engine."""

from riskengine.api.app import create_app

__all__ = ["create_app"]
