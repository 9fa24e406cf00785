"""Output validation: an answer to a ``response_format: json_schema`` request must match its schema.

The validator is ``jsonschema`` (the schema's own ``$schema`` draft, 2020-12 when it names none). On a
mismatch the guard makes ONE repair call through the gateway, as the caller (delegation token): the
original messages, the invalid answer, and the validator's message; the same model and response format.
Still invalid → the hook rejects with 502 ``invalid_output``.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from plugins.sdk.protocol import JSONObject


def response_schema(request: JSONObject) -> JSONObject | None:
    """The schema a ``response_format: {type: json_schema, json_schema: {schema}}`` request asks for."""
    fmt = request.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def check_schema(schema: JSONObject) -> str | None:
    """None when ``schema`` is a valid JSON Schema, else why not (then answers are not checked)."""
    try:
        validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        return exc.message
    return None


def problem(content: Any, schema: JSONObject) -> str | None:
    """None when ``content`` is JSON matching ``schema``, else the validator's message (with its path)."""
    if not isinstance(content, str):
        return "the answer has no text content"
    try:
        value = json.loads(content)
    except ValueError as exc:
        return f"the answer is not JSON: {exc}"
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"at '/{where}': {error.message}" if where else error.message


def repair_request(request: JSONObject, invalid: str, why: str) -> JSONObject:
    """The delegated repair call: the original request, one answer, told what was wrong with the last."""
    body = {k: v for k, v in request.items() if k not in ("stream", "stream_options", "n")}
    body["messages"] = [
        *request.get("messages", []),
        {"role": "assistant", "content": invalid},
        {
            "role": "user",
            "content": "Your previous answer does not match the required JSON schema: "
            f"{why}. Answer again with only JSON that matches the schema.",
        },
    ]
    return body


def first_content(response: JSONObject) -> Any:
    try:
        return response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
