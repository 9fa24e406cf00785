"""OpenAI ``/v1/embeddings`` on Bedrock through InvokeModel, for the two embedding families whose bodies
are documented and stable: Amazon Titan (``amazon.titan-embed-*``: one text per call, so a list of
inputs is several calls, at most ``_PARALLEL`` at a time) and Cohere (``cohere.embed-*``: up to 96 texts
per call). Other model ids are refused with a 400 naming the supported ones.

Titan reports ``inputTextTokenCount`` per text (summed into usage); Cohere reports no token count, so
usage is left to the gateway's estimate.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import BadRequest, UpstreamUnavailable
from gateway.providers import http
from gateway.providers.base import UpstreamRequest, UpstreamResponse, Usage, token_count
from gateway.providers.bedrock_response import error_from_response

if TYPE_CHECKING:
    from gateway.providers.bedrock import BedrockProvider

_PARALLEL = 8
_COHERE_BATCH = 96
_COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")


def _family(model: str) -> str:
    # An inference profile id carries a region prefix ("us.cohere.embed-v4:0"); an ARN ends with the id.
    tail = model.rsplit("/", 1)[-1]
    for family in ("amazon.titan-embed", "cohere.embed"):
        if tail.startswith(family) or f".{family}" in tail:
            return family
    return ""


async def embed(provider: BedrockProvider, request: UpstreamRequest) -> UpstreamResponse:
    body = request.body
    model = body.get("model")
    family = _family(model) if isinstance(model, str) else ""
    if not family:
        raise BadRequest(
            f"model {model!r}: Bedrock embeddings are served for amazon.titan-embed-* and cohere.embed-* "
            "models only",
            param="model",
        )
    texts = _texts(body.get("input"))
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest("encoding_format: must be 'float' or 'base64'", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)):
        raise BadRequest("dimensions: must be an integer", param="dimensions")
    usage: Usage | None
    if family == "amazon.titan-embed":
        vectors, tokens = await _titan(provider, request, str(model), texts, dimensions)
        usage = Usage(prompt_tokens=tokens)
    else:
        vectors = await _cohere(provider, request, str(model), texts, body.get("input_type"))
        usage = None
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(vector, fmt)}
        for i, vector in enumerate(vectors)
    ]
    answer: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if usage is not None:
        answer["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
    return UpstreamResponse(body=orjson.dumps(answer), usage=usage, status=200)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise BadRequest(
            "input: Bedrock embeds text: a non-empty string or an array of non-empty strings (not tokens)",
            param="input",
        )
    return value


def _encoded(vector: Sequence[float], fmt: str) -> Any:
    if fmt == "float":
        return vector
    # OpenAI's base64 form: the float32 values, little-endian, as the openai SDK decodes them.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def _invoke(provider: BedrockProvider, request: UpstreamRequest, model: str, payload: Any) -> Any:
    url = provider.url(model, "invoke")
    content = orjson.dumps(payload)
    _, answer = await http.post_json(
        provider.transport,
        provider.name,
        url,
        body=content,
        headers=await provider.headers(url, content, "application/json"),
        timeout_s=request.timeout_s,
        on_error=error_from_response,
        limits=provider.config.limits,
    )
    if not isinstance(answer, dict):
        raise UpstreamUnavailable(f"upstream '{provider.name}' sent a malformed body")
    return answer


async def _titan(
    provider: BedrockProvider, request: UpstreamRequest, model: str, texts: list[str], dimensions: int | None
) -> tuple[list[list[float]], int]:
    extra = {"dimensions": dimensions} if dimensions is not None else {}
    vectors: list[list[float]] = []
    tokens = 0
    for start in range(0, len(texts), _PARALLEL):
        batch = texts[start : start + _PARALLEL]
        calls = [_invoke(provider, request, model, {"inputText": text, **extra}) for text in batch]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            vectors.append(_vector(provider, answer.get("embedding")))
            tokens += token_count(answer.get("inputTextTokenCount")) or 0
    return vectors, tokens


async def _cohere(
    provider: BedrockProvider, request: UpstreamRequest, model: str, texts: list[str], input_type: Any
) -> list[list[float]]:
    kind = input_type if input_type is not None else "search_document"
    if kind not in _COHERE_INPUT_TYPES:
        raise BadRequest(f"input_type: must be one of {', '.join(_COHERE_INPUT_TYPES)}", param="input_type")
    vectors: list[list[float]] = []
    for start in range(0, len(texts), _COHERE_BATCH):
        batch = texts[start : start + _COHERE_BATCH]
        answer = await _invoke(provider, request, model, {"texts": batch, "input_type": kind})
        found = answer.get("embeddings")
        if isinstance(found, dict):  # embed-v4 answers {"float": [...]} by type
            found = found.get("float")
        if not isinstance(found, list) or len(found) != len(batch):
            raise UpstreamUnavailable(f"upstream '{provider.name}' sent a malformed embeddings body")
        vectors.extend(_vector(provider, v) for v in found)
    return vectors


def _vector(provider: BedrockProvider, value: Any) -> list[float]:
    if not isinstance(value, list) or not all(isinstance(x, int | float) for x in value):
        raise UpstreamUnavailable(f"upstream '{provider.name}' sent a malformed embedding")
    return value
