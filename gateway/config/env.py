"""``${VAR}`` substitution in parsed YAML, with docker-compose semantics.

Supported inside any string value, several per string: ``${VAR}``, ``${VAR:-default}`` (default when unset
or empty), ``${VAR-default}`` (default only when unset) and ``$$`` for a literal ``$``. An unset variable
with no default becomes ``""`` plus a warning rather than an error, so a shipped file that mentions
``${OPENAI_API_KEY}`` still loads on a machine with no key. Mapping keys are not expanded, and substituted
text is not expanded again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from gateway.config._validate import ROOT, EnvStr, index_path, key_path

# `$$`, a well-formed reference, or a `${` that is neither (reported, left as written).
_REFERENCE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}|(?P<bad>\$\{[^}]*\}?)"
)


def expand(value: object, path: str, warnings: list[str], environ: Mapping[str, str] | None = None) -> object:
    """Return ``value`` with every ``${VAR}`` in its strings replaced, recursing into lists and mappings.

    ``path`` names ``value`` in warnings (``providers.openai.api_key: environment variable X is not set``).
    A string that had a substitution comes back as an ``EnvStr`` so numeric fields may parse it.
    """
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        return _expand_str(value, path, warnings, env)
    if isinstance(value, dict):
        return {k: expand(v, key_path(path, k), warnings, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, index_path(path, i), warnings, env) for i, v in enumerate(value)]
    return value


def _expand_str(text: str, path: str, warnings: list[str], env: Mapping[str, str]) -> str:
    if "$" not in text:
        return text
    substituted = False

    def replace(m: re.Match[str]) -> str:
        nonlocal substituted
        if m.group("bad") is not None:
            warnings.append(f"{path or ROOT}: invalid variable reference {m.group('bad')!r} left as written")
            return m.group("bad")
        name = m.group("name")
        if name is None:  # `$$`
            return "$"
        substituted = True
        current = env.get(name)
        op = m.group("op")
        if op == ":-" and not current:
            return str(m.group("default"))
        if op == "-" and current is None:
            return str(m.group("default"))
        if current is None:
            warnings.append(f"{path or ROOT}: environment variable {name} is not set")
            return ""
        return current

    result = _REFERENCE.sub(replace, text)
    return EnvStr(result) if substituted else result
