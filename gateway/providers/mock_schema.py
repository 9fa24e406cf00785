"""Schema-valid sample values for the mock provider: JSON that satisfies a (common subset of) JSON Schema.

So ``responses.parse``, ``chat.completions.parse`` and agent loops work against ``mock`` in demos and
tests: a ``json_schema`` answer and a tool call's arguments validate against the schema asked for.
Covers what structured outputs use: ``type`` (one or a list), ``properties``/``required``, ``items``,
``enum``/``const``, ``anyOf``/``oneOf``/``allOf`` (first branch), local ``$ref`` (``#/$defs/…``,
``#/definitions/…``), ``minimum``, ``minLength``, ``minItems``, ``format`` (date, date-time, email, uuid).
Deterministic, and bounded in depth so a recursive schema still ends.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 8

_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "mock@example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
}


def sample(schema: object, root: object = None, depth: int = 0) -> Any:
    """A value valid under ``schema`` (``root`` resolves ``$ref``; the schema itself when omitted)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return sample(_resolve(root, ref), root, depth + 1)
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            # prefer a branch that is not null: a value says more than a null does
            chosen = next(
                (b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")), branches[0]
            )
            return sample(chosen, root, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, Any] = {}
        for branch in all_of:
            branch = (
                _resolve(root, branch["$ref"]) if isinstance(branch, dict) and "$ref" in branch else branch
            )
            if isinstance(branch, dict):
                merged = _merge(merged, branch)
        return sample(merged, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    return _typed(str(kind), schema, root, depth)


def _typed(kind: str, schema: dict[str, Any], root: object, depth: int) -> Any:
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        return {name: sample(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        least = schema.get("minItems")
        count = least if isinstance(least, int) and least > 0 else 1
        return [sample(schema.get("items", {}), root, depth + 1) for _ in range(min(count, 16))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        value: int | float = 1
        if isinstance(low, int | float) and not isinstance(low, bool) and value < low:
            value = low + (1 if "exclusiveMinimum" in schema else 0)
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    fmt = schema.get("format")
    text = _FORMATS.get(fmt, "mock") if isinstance(fmt, str) else "mock"
    least = schema.get("minLength")
    if isinstance(least, int) and len(text) < least:
        text = text + "x" * (least - len(text))
    return text


def _resolve(root: object, ref: str) -> object:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {**a, **b}
    if isinstance(a.get("properties"), dict) and isinstance(b.get("properties"), dict):
        out["properties"] = {**a["properties"], **b["properties"]}
    return out
