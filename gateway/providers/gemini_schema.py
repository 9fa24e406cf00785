"""JSON Schema → the OpenAPI-3.0 ``Schema`` subset Gemini takes (``responseSchema``, tool parameters).

Pure: no I/O. Gemini's ``Schema`` knows ``type`` (one, upper case), ``format``, ``title``,
``description``, ``nullable``, ``enum``, ``items``, ``properties``, ``required``, ``anyOf``, the
min/max bounds, ``pattern``, ``default`` and ``propertyOrdering``; it refuses ``$ref``, ``$defs``,
``additionalProperties``, ``const``, ``allOf`` and type arrays with a 400 that names none of the
client's fields. So the schema is rewritten here: local ``$ref`` inlined (recursion refused, Gemini
cannot express it), ``["T", "null"]`` → ``type: T, nullable: true``, ``const`` → a one-value ``enum``,
``oneOf`` → ``anyOf`` (Gemini validates nothing stricter), an ``anyOf`` with a lone ``null`` branch →
``nullable``; keywords outside the subset (``additionalProperties``, ``$schema``, ``strict``…) are
dropped, which only loosens what the model is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import BadRequest

_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})
_COPIED = (
    "format",
    "title",
    "description",
    "nullable",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "pattern",
    "default",
    "example",
)
# Gemini's string formats; others (``uri``, ``email``…) are refused upstream, so they are dropped.
_FORMATS = frozenset({"enum", "date-time", "date", "time", "int32", "int64", "float", "double"})
_MAX_DEPTH = 64


def to_gemini_schema(schema: Any, path: str, *, ordered: bool = False) -> dict[str, Any]:
    """``schema`` in Gemini's subset; ``ordered`` adds ``propertyOrdering`` (the client's key order,
    which Gemini otherwise replaces by alphabetical order in its JSON answers). ``path`` names the
    request field in a ``BadRequest``."""
    if not isinstance(schema, Mapping):
        raise BadRequest(f"{path}: must be a JSON Schema object", param=path)
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        found = schema.get(key)
        if isinstance(found, Mapping):
            defs.update((f"#/{key}/{name}", value) for name, value in found.items())
    return _convert(schema, path, defs, (), ordered)


def _convert(
    schema: Any, path: str, defs: Mapping[str, Any], seen: tuple[str, ...], ordered: bool
) -> dict[str, Any]:
    if len(seen) > _MAX_DEPTH:
        raise BadRequest(f"{path}: schema nests too deeply", param=path)
    if schema is True or schema == {}:
        return {}
    if not isinstance(schema, Mapping):
        raise BadRequest(f"{path}: must be a JSON Schema object", param=path)
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            raise BadRequest(
                f"{path}: recursive $ref {ref!r} cannot be expressed for Gemini models", param=path
            )
        target = defs.get(ref)
        if target is None:
            raise BadRequest(f"{path}: $ref {ref!r} does not name a local $defs entry", param=path)
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _convert(merged, path, defs, (*seen, ref), ordered)

    out: dict[str, Any] = {}
    nullable = False
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        nullable = len(kinds) < len(kind)
        if len(kinds) > 1:  # several types: only anyOf can say it
            branches = [_convert({**schema, "type": k}, path, defs, seen, ordered) for k in kinds]
            return {"anyOf": branches, **({"nullable": True} if nullable else {})}
        kind = kinds[0] if kinds else "null"
    if isinstance(kind, str):
        if kind not in _TYPES:
            raise BadRequest(f"{path}.type: unknown JSON Schema type {kind!r}", param=f"{path}.type")
        out["type"] = kind.upper()
    for key in _COPIED:
        if key in schema:
            out[key] = schema[key]
    if "format" in out and out["format"] not in _FORMATS:
        del out["format"]
    if "const" in schema:
        out["enum"] = [schema["const"]]
    elif isinstance(schema.get("enum"), list):
        out["enum"] = list(schema["enum"])
    if "enum" in out:
        # Gemini's enums are strings only; a non-string enum is asked for in words instead.
        if all(isinstance(v, str) for v in out["enum"]):
            out.setdefault("type", "STRING")
        else:
            values = ", ".join(str(v) for v in out.pop("enum"))
            out["description"] = (str(out.get("description", "")) + f" One of: {values}.").strip()

    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        out["properties"] = {
            name: _convert(sub, f"{path}.properties.{name}", defs, seen, ordered)
            for name, sub in properties.items()
        }
        if ordered and len(properties) > 1:
            out["propertyOrdering"] = list(properties)
        required = schema.get("required")
        if isinstance(required, list):
            out["required"] = [r for r in required if isinstance(r, str) and r in properties]
    if "items" in schema and isinstance(schema["items"], Mapping | bool):
        out["items"] = _convert(schema["items"], f"{path}.items", defs, seen, ordered)

    branches = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(branches, list):
        kept = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")]
        nullable = nullable or len(kept) < len(branches)
        converted = [_convert(b, f"{path}.anyOf[{i}]", defs, seen, ordered) for i, b in enumerate(kept)]
        if len(converted) == 1:
            out.update(converted[0])
        elif converted:
            out["anyOf"] = converted
    all_of = schema.get("allOf")
    if isinstance(all_of, list):  # a conjunction of object shapes: merged, which is what it means
        for i, part in enumerate(all_of):
            merged = _convert(part, f"{path}.allOf[{i}]", defs, seen, ordered)
            props = {**out.get("properties", {}), **merged.pop("properties", {})}
            required = [*out.get("required", []), *merged.pop("required", [])]
            out.update(merged)
            if props:
                out["properties"] = props
            if required:
                out["required"] = list(dict.fromkeys(required))
    if nullable:
        out["nullable"] = True
    return out
