"""The signals file (``RISKENGINE_SIGNALS``): which receivers get which outcomes, validated like a policy.

```yaml
webhooks:
  - url: https://hooks.example.com/riskengine
    secret_file: /run/secrets/webhook      # or secret_env: NAME; never the secret itself in the file
    events: [deny, step_up_failed, confirmed_fraud]
caep:
  issuer: https://risk.example.com         # the `iss` of every SET and the SSF configuration
  key_file: var/ssf-signing.jwk            # EC P-256 private JWK, created (0600) when missing
  subject: opaque                          # opaque: the audit pseudonym; user_id: the app's id
  receivers:
    - {url: https://idp.example.com/ssf/push, audience: https://idp.example.com}
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, model_validator

WEBHOOK_EVENTS = ("deny", "step_up", "step_up_failed", "step_up_passed", "confirmed_fraud", "confirmed_legit")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Webhook(_Strict):
    url: HttpUrl
    secret_file: Path | None = None
    secret_env: str | None = None
    events: tuple[Literal[WEBHOOK_EVENTS], ...] = ("deny", "step_up_failed", "confirmed_fraud")  # type: ignore[valid-type]
    max_attempts: int = Field(6, ge=1, le=20)

    @model_validator(mode="after")
    def _one_secret(self) -> "Webhook":
        if (self.secret_file is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret_file or secret_env")
        return self

    def secret(self) -> bytes:
        """Read at start: a missing secret stops the service rather than sending unsigned calls."""
        if self.secret_env is not None:
            value = os.environ.get(self.secret_env, "")
            if not value:
                raise ValueError(f"webhook secret_env {self.secret_env} is not set")
            return value.encode()
        assert self.secret_file is not None
        return self.secret_file.read_bytes().strip()


class Receiver(_Strict):
    url: HttpUrl
    audience: str = Field(min_length=1)
    max_attempts: int = Field(6, ge=1, le=20)


class Caep(_Strict):
    issuer: str = Field(min_length=1)
    key_file: Path = Path("var/ssf-signing.jwk")
    subject: Literal["opaque", "user_id"] = "opaque"
    receivers: tuple[Receiver, ...] = ()


class SignalsConfig(_Strict):
    webhooks: tuple[Webhook, ...] = ()
    caep: Caep | None = None


class SignalsError(ValueError):
    """A broken signals file: names the file, the field and the reason."""


def load_config(path: Path) -> SignalsConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        config = SignalsConfig.model_validate(data)
        for hook in config.webhooks:
            hook.secret()
        return config
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SignalsError(f"{path.name} {field}: {first['msg']}") from None
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise SignalsError(f"{path.name}: {exc}") from None
