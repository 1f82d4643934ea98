"""Schemathesis hooks for the OpenAPI conformance run (tests/test_openapi_fuzz.py, and the CLI run in
README.md through ``SCHEMATHESIS_HOOKS=tests.schemathesis_hooks``).

One rule of the contract depends on the server's clock, which JSON Schema cannot name: a time more
than the allowed clock skew ahead of it is refused with ``422`` (API.md, ``timestamp``). A generated
``9999-01-01T00:00:00Z`` is schema-valid and rightly refused, so that one refusal, and only it, is
not held against the service; any other rejected valid request still fails the run.
"""

from __future__ import annotations

from typing import Any

import schemathesis

#: the message every clock-skew refusal carries (events.py)
AHEAD_OF_CLOCK = "ahead of the server's clock"


def only_ahead_of_clock(response: Any) -> bool:
    """Whether a 422 names, for every field it names, a time ahead of the server's clock."""
    if response.status_code != 422:
        return False
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return False
    return (isinstance(detail, list) and bool(detail)
            and all(isinstance(e, dict) and AHEAD_OF_CLOCK in str(e.get("message", "")) for e in detail))


@schemathesis.hook
def filter_failure(context: schemathesis.HookContext, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but "schema-valid request rejected" (ST202) for a time ahead of the clock."""
    return not (failure.code == "ST202" and only_ahead_of_clock(response))
