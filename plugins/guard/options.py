"""A route's guard options (the hook call's ``config``), checked on every call: routes.yaml may change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from plugins.guard.pii import TYPES
from plugins.sdk import ProtocolError
from plugins.sdk.protocol import JSONObject

PiiMode = Literal["redact", "block", "mask", "off"]
InjectionMode = Literal["block", "flag", "off"]

PII_MODES = ("redact", "block", "mask", "off")
INJECTION_MODES = ("block", "flag", "off")
KNOWN = {"pii", "injection", "pii_types", "validate_output"}


@dataclass(frozen=True, slots=True)
class Options:
    pii: PiiMode = "redact"
    injection: InjectionMode = "flag"
    pii_types: tuple[str, ...] = TYPES
    validate_output: bool | None = None
    """``None``: validate whenever the request asks for a ``json_schema`` response format."""


def parse(config: JSONObject) -> Options:
    """The options, or ProtocolError naming the bad one (the gateway logs it as this plugin's failure)."""
    unknown = set(config) - KNOWN
    if unknown:
        raise ProtocolError(f"guard: unknown option(s) {sorted(unknown)}; known: {sorted(KNOWN)}")
    pii = config.get("pii", "redact")
    if pii not in PII_MODES:
        raise ProtocolError(f"guard: pii must be one of {list(PII_MODES)}, not {pii!r}")
    injection = config.get("injection", "flag")
    if injection not in INJECTION_MODES:
        raise ProtocolError(f"guard: injection must be one of {list(INJECTION_MODES)}, not {injection!r}")
    types = config.get("pii_types", TYPES)
    if not isinstance(types, list | tuple) or not types or any(t not in TYPES for t in types):
        raise ProtocolError(f"guard: pii_types must be a non-empty list of {list(TYPES)}, not {types!r}")
    validate = config.get("validate_output")
    if validate is not None and not isinstance(validate, bool):
        raise ProtocolError(f"guard: validate_output must be true or false, not {validate!r}")
    return Options(
        pii=cast(PiiMode, pii),
        injection=cast(InjectionMode, injection),
        pii_types=tuple(types),
        validate_output=validate,
    )
