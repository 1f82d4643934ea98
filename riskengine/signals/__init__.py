"""Signals out: what the engine tells other systems after a decision or a label is durably recorded.

Webhooks (webhooks.py, HMAC-signed) and an OpenID Shared Signals / CAEP transmitter (caep.py,
signed Security Event Tokens pushed per RFC 8935) share one background outbox (outbox.py), so
``/score`` never waits on a receiver. ``Transmitter`` (transmitter.py) turns a recorded event into
those messages; the configuration is a YAML file (config.py, ``RISKENGINE_SIGNALS``).
"""
