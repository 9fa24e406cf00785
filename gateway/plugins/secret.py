"""Where the delegation secret lives at run time (gateway/delegation.py signs and checks the tokens).

``GATEWAY_DELEGATION_SECRET`` (at least 32 characters), shared by every worker and replica. Without it a
process that runs alone (one worker, no Redis) makes its own at start: tokens it hands out come back to
it and to no one else. A process that does not run alone cannot make one up (another worker or replica
would refuse its tokens), so it has none: that is fine until a route uses a plugin, which ``require``
then refuses, at start and on reload, with an error that says what to set.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config.model import RoutesConfig
from gateway.config.parse import ConfigError
from gateway.delegation import MIN_SECRET_BYTES, SECRET_ENV, new_secret


def from_env(env: Mapping[str, str], *, alone: bool) -> bytes | None:
    """The secret from the environment, else one of our own when ``alone``, else None. A comma-separated
    value is a rotation (gateway/delegation.py ``parse_secrets``): its first secret signs."""
    value = env.get(SECRET_ENV, "").split(",")[0].strip()
    if value:
        secret = value.encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError([f"{SECRET_ENV}: must be at least {MIN_SECRET_BYTES} characters"])
        return secret
    return new_secret() if alone else None


def require(routes: RoutesConfig, secret: bytes | None) -> None:
    """Refuse a config whose routes call plugins when there is no secret to sign their tokens with."""
    if secret is not None:
        return
    hooked = [r.name for r in routes.routes if r.plugins or r.memory]  # memory: its summarizer call
    if hooked or any(p.api for p in routes.plugins.values()):
        raise ConfigError(
            [
                f"{SECRET_ENV} is not set: with several workers or a shared Redis every process must sign "
                "delegation tokens with the same secret, and plugins (or conversation memory) are configured "
                f"(routes: {', '.join(hooked) or 'none'}); set it to a random string of at least "
                f"{MIN_SECRET_BYTES} characters, the same on every replica"
            ]
        )
