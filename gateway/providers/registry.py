"""The provider registry: the one list of provider types, their adapter class and their options.

``gateway check`` (``gateway/config/_routes.py``) reads it to check a ``providers:`` entry, and
``gateway.providers.build_provider`` to build one. A row names its adapter by module and class, so this
module imports no adapter: checking a config stays cheap, and an adapter's dependencies (google-auth,
botocore…) load only when a config uses its type.

Adding a provider type is one module and one row:

1. ``gateway/providers/<name>.py``: a class implementing ``base.Provider`` whose
   ``__init__(config: ProviderConfig, transport: httpx.AsyncBaseTransport)`` reads its type's options
   from ``config.options`` (every option of the row is there, parsed, its default filled in);
2. a row in ``PROVIDERS``: ``"<type>": ProviderType("gateway.providers.<name>", "<Class>",
   options=(text("region", nonempty=True), …), base_url=REQUIRED | OPTIONAL, default_base_url=…)``;
3. the type's rows in ``tests/config/test_provider_registry.py`` (a valid entry with every documented
   option, and a misspelled one).

The options common to every type (``type``, ``base_url``, ``api_key``, ``headers``, ``timeout_s``,
``limits``, ``tls``) are parsed by the config parser itself and are not listed here.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.config._validate import Checker, key_path

OptionParser = Callable[[Checker, dict[str, object], str], object]
"""``(checker, entry, path) -> value``: the option's value from a provider entry (``entry[name]``
may be absent: then its default), errors recorded on the checker with their path."""

DefaultUrl = Callable[[Mapping[str, object], Mapping[str, object]], str]
"""``(entry, options) -> base_url`` for a type whose default URL depends on its options."""

BaseUrl = Literal["required", "optional"]
REQUIRED: BaseUrl = "required"
OPTIONAL: BaseUrl = "optional"


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    parse: OptionParser


@dataclass(frozen=True, slots=True)
class ProviderType:
    module: str
    """The adapter's module, imported when a provider of this type is built."""
    cls: str
    """The adapter class in ``module``."""
    options: tuple[Option, ...] = ()
    """Options of this type beyond the common ones; anything else in its entry is an error."""
    base_url: BaseUrl = OPTIONAL
    default_base_url: str | DefaultUrl = ""
    """The ``base_url`` used when the entry gives none (empty: the adapter has no default), or a
    function of the entry and its parsed options when the URL depends on them (vertex's location):
    the URL is known at check time either way, so egress picks the proxy for the host really used."""
    native: tuple[str, ...] = ()
    """Client wire formats the upstream speaks as they are (``anthropic``: a ``/v1/messages`` body goes
    upstream as the client sent it); every other format is translated through OpenAI chat."""


# -- option parsers ---------------------------------------------------------------------------------------


def text(name: str, default: str = "", *, nonempty: bool = False) -> Option:
    return Option(name, lambda c, d, path: c.text(d, path, name, default, nonempty=nonempty))


def date_text(name: str, default: str) -> Option:
    """A version string such as ``2024-10-21``, which YAML reads as a date when written bare."""

    def parse(c: Checker, d: dict[str, object], path: str) -> object:
        value = d.get(name)
        if isinstance(value, datetime.date):
            d = {**d, name: value.isoformat()}
        return c.text(d, path, name, default, nonempty=True)

    return Option(name, parse)


def number(
    name: str, default: float, *, gt: float | None = None, ge: float | None = None, le: float | None = None
) -> Option:
    return Option(name, lambda c, d, path: c.number(d, path, name, default, gt=gt, ge=ge, le=le))


def integer(name: str, default: int, *, ge: int) -> Option:
    return Option(name, lambda c, d, path: c.integer(d, path, name, default, ge=ge))


def choice(name: str, values: tuple[str, ...], default: str) -> Option:
    def parse(c: Checker, d: dict[str, object], path: str) -> object:
        value = d.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            d = {**d, name: str(value)}  # `fault: 429` is how anyone would write it
        return c.choice(d, path, name, values, default)

    return Option(name, parse)


def google_credentials(name: str) -> Option:
    """A Google credentials file (``vertex``): readable now and a JSON object with a ``type``, so a
    wrong path or a pasted key fails ``check`` rather than the first request. With ``api_key`` (Vertex
    AI express mode) there are no credentials to load, so both at once is a slip."""

    def parse(c: Checker, d: dict[str, object], path: str) -> object:
        if "api_key" in d and name in d:
            c.error(key_path(path, name), "set api_key (express mode) or credentials_file, not both")
        value = c.text(d, path, name, "", nonempty=True)
        if not value:
            return ""
        where = key_path(path, name)
        if not os.access(value, os.R_OK):
            c.error(where, f"cannot read {value!r}")
            return value
        try:
            with open(value, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError) as exc:
            c.error(where, f"{value!r} is not a JSON credentials file: {exc}")
            return value
        kind = info.get("type") if isinstance(info, dict) else None
        if kind not in GOOGLE_CREDENTIAL_TYPES:
            c.error(
                where,
                f"{value!r}: credentials of type {kind!r} are not supported "
                f"(use {' or '.join(GOOGLE_CREDENTIAL_TYPES)})",
            )
        return value

    return Option(name, parse)


def aws_key(name: str, *, needs: tuple[str, ...]) -> Option:
    """One of a set of explicit AWS credentials: text, and an error unless the fields it needs are set
    too (a key id without its secret would silently fall back to the machine's credential chain)."""

    def parse(c: Checker, d: dict[str, object], path: str) -> object:
        value = c.text(d, path, name)
        for other in needs:
            if value and not d.get(other):
                c.error(key_path(path, name), f"needs {other} too")
        return value

    return Option(name, parse)


def vertex_base_url(location: str, express: bool) -> str:
    """Vertex AI's regional endpoint; the global one for ``location: global`` and express mode (api_key)."""
    if location == "global" or express:
        return "https://aiplatform.googleapis.com/v1"
    return f"https://{location}-aiplatform.googleapis.com/v1"


# -- the registry -----------------------------------------------------------------------------------------

MOCK_FAULTS = ("none", "429", "500", "503", "timeout", "disconnect")
AZURE_API_VERSION = "2024-10-21"
ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_MAX_TOKENS = 4096
GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
VERTEX_LOCATION = "us-central1"
GOOGLE_CREDENTIAL_TYPES = ("service_account", "authorized_user")

_AZURE_OPTIONS = (date_text("api_version", AZURE_API_VERSION),)

PROVIDERS: Mapping[str, ProviderType] = {
    "openai": ProviderType("gateway.providers.openai", "OpenAIProvider", base_url=REQUIRED),
    "openai_responses": ProviderType(
        "gateway.providers.openai_responses", "OpenAIResponsesProvider", base_url=REQUIRED
    ),
    "azure": ProviderType("gateway.providers.azure", "AzureProvider", _AZURE_OPTIONS, base_url=REQUIRED),
    "azure_responses": ProviderType(
        "gateway.providers.azure", "AzureResponsesProvider", _AZURE_OPTIONS, base_url=REQUIRED
    ),
    "anthropic": ProviderType(
        "gateway.providers.anthropic",
        "AnthropicProvider",
        # max_tokens sent when an OpenAI-format client gave none (Anthropic requires one)
        (integer("default_max_tokens", ANTHROPIC_MAX_TOKENS, ge=1),),
        default_base_url=ANTHROPIC_BASE_URL,
        native=("anthropic",),
    ),
    "gemini": ProviderType("gateway.providers.gemini", "GeminiProvider", default_base_url=GEMINI_BASE_URL),
    "vertex": ProviderType(
        "gateway.providers.vertex",
        "VertexProvider",
        (
            text("project"),  # else the credentials' own project
            text("location", VERTEX_LOCATION, nonempty=True),
            google_credentials("credentials_file"),  # else Application Default Credentials
        ),
        default_base_url=lambda entry, options: vertex_base_url(str(options["location"]), "api_key" in entry),
    ),
    "bedrock": ProviderType(
        "gateway.providers.bedrock",
        "BedrockProvider",
        # empty: the standard AWS chain (AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID, files, metadata);
        # base_url defaults to https://bedrock-runtime.{region}.amazonaws.com
        (
            text("region"),
            text("profile"),
            aws_key("aws_access_key_id", needs=("aws_secret_access_key",)),
            aws_key("aws_secret_access_key", needs=("aws_access_key_id",)),
            aws_key("aws_session_token", needs=("aws_access_key_id", "aws_secret_access_key")),
        ),
    ),
    "mock": ProviderType(
        "gateway.providers.mock",
        "MockProvider",
        (
            number("latency_ms", 0.0, ge=0),
            choice("fault", MOCK_FAULTS, "none"),
            number("fault_rate", 1.0, ge=0, le=1),
        ),
    ),
}
PROVIDER_TYPES = tuple(PROVIDERS)


def types_with(option: str) -> tuple[str, ...]:
    """The provider types that take ``option`` (for "only valid for type …" messages)."""
    return tuple(kind for kind, row in PROVIDERS.items() if any(o.name == option for o in row.options))


def all_options() -> tuple[str, ...]:
    """Every type-specific option of every type, each once, in registry order."""
    names: dict[str, None] = {}
    for row in PROVIDERS.values():
        names.update((o.name, None) for o in row.options)
    return tuple(names)
