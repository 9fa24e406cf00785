"""``tools.yaml``: the HTTP endpoints this sidecar serves as MCP tools, loaded once and checked with paths.

::

    tools:
      - name: get_order                       # the MCP tool's name: letters, digits, '_' and '-'
        description: Look up an order by its id.
        method: GET                           # GET (default) | POST | PUT | PATCH | DELETE
        url: "https://orders.internal/api/orders/{order_id}"   # {arg}: the argument, URL-encoded
        headers: {Authorization: "Bearer ${ORDERS_TOKEN}"}     # ${VAR} / ${VAR:-default} from the env
        input_schema:                         # JSON Schema (2020-12) for the arguments
          type: object
          properties: {order_id: {type: string, pattern: "^[0-9]+$"}}
          required: [order_id]
        idempotent: true                      # safe to repeat (shown to clients as idempotentHint)
        timeout_s: 10                         # default 10
        max_response_bytes: 1048576           # default 1 MiB; past it the body is cut, with a marker

Arguments not used by the URL template go in the query string (GET, DELETE) or as the JSON body (POST,
PUT, PATCH). ``${VAR}`` is expanded in ``url`` and header values only, never in what a caller sent.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODY_METHODS = ("POST", "PUT", "PATCH")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FIELDS = {
    "name",
    "description",
    "method",
    "url",
    "headers",
    "input_schema",
    "idempotent",
    "timeout_s",
    "max_response_bytes",
}


class RegistryError(Exception):
    """``tools.yaml`` cannot be used; ``errors`` lists every problem, each ``path: message``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class HttpTool:
    name: str
    description: str
    method: str
    url: str
    """With ``{arg}`` placeholders; ``${VAR}`` already expanded."""
    input_schema: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = False
    timeout_s: float = 10.0
    max_response_bytes: int = 1024 * 1024
    path_args: tuple[str, ...] = ()
    """The arguments the URL template names."""
    validator: Any = None
    """The compiled JSON Schema validator of ``input_schema``."""


def load(path: str | Path, env: Mapping[str, str] | None = None) -> tuple[HttpTool, ...]:
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegistryError([f"{file.name}: cannot read {file}: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise RegistryError([f"{file.name}: invalid YAML: {exc}"]) from None
    return parse(data, file.name, os.environ if env is None else env)


def parse(data: object, file: str, env: Mapping[str, str]) -> tuple[HttpTool, ...]:
    errors: list[str] = []
    entries = data.get("tools") if isinstance(data, dict) else None
    if not isinstance(data, dict) or set(data) - {"tools"} or not isinstance(entries, list):
        raise RegistryError([f"{file}: must be a mapping with one key, tools: a list of tools"])
    tools: list[HttpTool] = []
    for i, entry in enumerate(entries):
        tool = _tool(entry, f"{file}: tools[{i}]", env, errors)
        if tool is not None and any(t.name == tool.name for t in tools):
            errors.append(f"{file}: tools[{i}].name: duplicate tool {tool.name!r}")
        elif tool is not None:
            tools.append(tool)
    if errors:
        raise RegistryError(errors)
    return tuple(tools)


def _tool(entry: object, path: str, env: Mapping[str, str], errors: list[str]) -> HttpTool | None:
    if not isinstance(entry, dict):
        errors.append(f"{path}: must be a mapping")
        return None
    before = len(errors)
    for key in sorted(set(entry) - _FIELDS, key=str):
        errors.append(f"{path}: unknown field {key!r}")
    for key in ("name", "url", "input_schema"):
        if key not in entry:
            errors.append(f"{path}.{key}: is required")
    name = entry.get("name")
    if "name" in entry and not (isinstance(name, str) and _NAME.fullmatch(name)):
        errors.append(f"{path}.name: must be 1-64 letters, digits, '_' or '-'")
    method = str(entry.get("method", "GET")).upper()
    if method not in METHODS:
        errors.append(f"{path}.method: must be one of {', '.join(METHODS)}")
    url = _expand(entry.get("url"), env)
    if "url" in entry and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        errors.append(f"{path}.url: must be an http:// or https:// URL")
    headers = entry.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        errors.append(f"{path}.headers: must map names to strings")
        headers = {}
    schema = entry.get("input_schema")
    validator = _validator(schema, f"{path}.input_schema", errors) if "input_schema" in entry else None
    path_args = _template_args(url, f"{path}.url", errors) if isinstance(url, str) else ()
    if isinstance(schema, dict) and path_args:
        required = schema.get("required") or []
        for arg in path_args:
            if arg not in required:
                errors.append(f"{path}.url: {{{arg}}} must be a required property of input_schema")
    idempotent = entry.get("idempotent", False)
    if not isinstance(idempotent, bool):
        errors.append(f"{path}.idempotent: must be true or false")
    timeout_s = _number(entry, "timeout_s", 10.0, path, errors)
    limit = _number(entry, "max_response_bytes", 1024 * 1024, path, errors)
    if len(errors) > before:
        return None
    assert isinstance(name, str) and isinstance(url, str) and isinstance(schema, dict)
    return HttpTool(
        name=name,
        description=str(entry.get("description") or ""),
        method=method,
        url=url,
        input_schema=schema,
        headers={str(k): _expand(v, env) for k, v in headers.items()},
        idempotent=idempotent,
        timeout_s=float(timeout_s),
        max_response_bytes=int(limit),
        path_args=path_args,
        validator=validator,
    )


def _validator(schema: object, path: str, errors: list[str]) -> Any:
    if not isinstance(schema, dict) or schema.get("type") != "object":
        errors.append(f"{path}: must be a JSON Schema with type: object (MCP tool arguments are an object)")
        return None
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        errors.append(f"{path}{'.' + where if where else ''}: invalid JSON Schema: {exc.message}")
        return None
    return cls(schema)


def _template_args(url: str, path: str, errors: list[str]) -> tuple[str, ...]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(url) if f is not None]
    except ValueError as exc:
        errors.append(f"{path}: bad template: {exc}")
        return ()
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        errors.append(f"{path}: placeholders must be {{argument_name}}, not {bad[0]!r}")
        return ()
    return tuple(dict.fromkeys(names))


def _number(entry: dict[str, Any], key: str, default: float, path: str, errors: list[str]) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        errors.append(f"{path}.{key}: must be a positive number")
        return default
    return value


def _expand(value: object, env: Mapping[str, str]) -> Any:
    if not isinstance(value, str):
        return value
    return _ENV.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
