"""Gemini → OpenAI: answers, usage, streamed chunks, embeddings and errors (pure, no I/O).

Gemini's function calls carry no id before its newest versions (and Vertex's v1 none at all), so a
tool call's id is made here, stable for one answer: ``call_`` and a hash of the answer's
``responseId``, the call's position, name and arguments; an id Gemini did send is kept. Tool
results are matched back to calls by that id → function name (``gemini_translate``), which is how
Gemini pairs them. A call's thought signature travels in ``extra_content.google.thought_signature``
(where Google's own OpenAI-compatible endpoint puts it), so a client that sends the assistant
message back unchanged keeps Gemini 3's reasoning across tool turns.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import UpstreamStatusError, UpstreamUnavailable
from gateway.providers.base import Usage, token_count
from gateway.providers.gemini_translate import GOOGLE_EXTRA
from gateway.sse import Event, data_frame

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
    "OTHER": "stop",
}


def finish_reason(reason: Any, called: bool) -> str:
    """Gemini's ``finishReason`` as OpenAI's; a STOP after function calls is ``tool_calls``."""
    mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if called and mapped == "stop" else mapped


def usage_from_gemini(raw: Any) -> Usage:
    """``usageMetadata`` → ``Usage``. ``promptTokenCount`` already includes the cached part; tool-use
    prompt tokens are input too; thinking tokens are billed as output, so they count as completion."""
    counts = raw if isinstance(raw, Mapping) else {}
    prompt, tool, cached, candidates, thoughts = (
        token_count(counts.get(k))
        for k in (
            "promptTokenCount",
            "toolUsePromptTokenCount",
            "cachedContentTokenCount",
            "candidatesTokenCount",
            "thoughtsTokenCount",
        )
    )
    malformed = None in (prompt, tool, cached, candidates, thoughts)
    return Usage(
        prompt_tokens=(prompt or 0) + (tool or 0),
        completion_tokens=(candidates or 0) + (thoughts or 0),
        cached_tokens=cached or 0,
        malformed=malformed,
    )


def _completion_id(response_id: Any) -> str:
    if isinstance(response_id, str) and response_id:
        return "chatcmpl-" + response_id
    return "chatcmpl-" + uuid.uuid4().hex


def _call_id(call: Mapping[str, Any], seed: str, position: int, arguments: str) -> str:
    given = call.get("id")
    if isinstance(given, str) and given:
        return given
    digest = hashlib.sha256(f"{seed}\x00{position}\x00{call.get('name')}\x00{arguments}".encode())
    return "call_" + digest.hexdigest()[:24]


def _tool_call(part: Mapping[str, Any], seed: str, position: int) -> dict[str, Any]:
    call = part["functionCall"]
    arguments = orjson.dumps(call.get("args") or {}).decode()
    out: dict[str, Any] = {
        "id": _call_id(call, seed, position, arguments),
        "type": "function",
        "function": {"name": call.get("name"), "arguments": arguments},
    }
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        out[GOOGLE_EXTRA] = {"google": {"thought_signature": signature}}
    return out


def _candidate(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    candidates = data.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], Mapping):
        return candidates[0]
    return None


def _parts(candidate: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    content = candidate.get("content") if candidate is not None else None
    parts = content.get("parts") if isinstance(content, Mapping) else None
    return [p for p in parts if isinstance(p, Mapping)] if isinstance(parts, list) else []


def _blocked(data: Mapping[str, Any]) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, Mapping) and bool(feedback.get("blockReason"))


def to_openai_response(
    data: Mapping[str, Any], *, model: str, created: int | None = None
) -> tuple[dict[str, Any], Usage]:
    """A ``GenerateContentResponse`` as an OpenAI ``chat.completion`` and its ``Usage``.

    Text parts are joined into ``content`` (thought summaries, ``thought: true``, are left out);
    ``functionCall`` parts become ``tool_calls``. A prompt Gemini blocked (no candidate,
    ``promptFeedback.blockReason``) is an empty answer with ``finish_reason: content_filter``.
    """
    candidate = _candidate(data)
    if candidate is None and not _blocked(data):
        raise UpstreamUnavailable("malformed upstream body: no candidates")
    seed = str(data.get("responseId") or "")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in _parts(candidate):
        if isinstance(part.get("functionCall"), Mapping):
            calls.append(_tool_call(part, seed, len(calls)))
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    reason = (
        "content_filter" if candidate is None else finish_reason(candidate.get("finishReason"), bool(calls))
    )
    usage = usage_from_gemini(data.get("usageMetadata"))
    completion = {
        "id": _completion_id(data.get("responseId")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
        "usage": usage.to_openai(),
    }
    return completion, usage


# --- streams ----------------------------------------------------------------------------------------


class StreamTranslator:
    """``streamGenerateContent?alt=sse`` events in, OpenAI ``chat.completion.chunk`` frames out.

    Each event is a whole ``GenerateContentResponse`` holding the next parts; a function call
    arrives whole in one part, so it becomes one tool-call delta (id, name and all arguments).
    ``done`` turns true with the first ``finishReason`` (or a blocked prompt); Gemini then closes
    the stream, so a stream that closes before it was cut. ``usageMetadata`` comes on every event,
    with the output counted so far; ``usage``/``usage_frame`` are set from the latest once the
    stream is done, so a cut stream reports none and is billed on the gateway's count of the text
    it did pass on, not on an early event's zero output.
    """

    def __init__(self, *, model: str, created: int) -> None:
        self.model = model
        self.created = created
        self.usage: Usage | None = None
        self.usage_frame: bytes | None = None
        self.done = False
        self._id: str | None = None
        self._seed = ""
        self._calls = 0
        self._raw_usage: Mapping[str, Any] | None = None

    def feed(self, event: Event) -> list[bytes]:
        """Translate one event; an ``error`` object raises ``UpstreamStatusError``."""
        try:
            data = orjson.loads(event.data) if event.data else None
        except orjson.JSONDecodeError:
            raise UpstreamUnavailable("malformed upstream stream event") from None
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, dict):
            raise UpstreamUnavailable("malformed upstream stream event")
        if isinstance(data.get("error"), dict):
            raise status_error(data["error"].get("code") or 500, data["error"], {})
        frames: list[bytes] = []
        if self._id is None:
            self._id = _completion_id(data.get("responseId"))
            self._seed = str(data.get("responseId") or "")
            frames.append(self._chunk({"role": "assistant", "content": ""}))
        raw_usage = data.get("usageMetadata")
        if isinstance(raw_usage, Mapping):
            self._raw_usage = raw_usage
        if self.done:
            self._publish_usage()
            return frames
        candidate = _candidate(data)
        for part in _parts(candidate):
            if isinstance(part.get("functionCall"), Mapping):
                call = {"index": self._calls, **_tool_call(part, self._seed, self._calls)}
                self._calls += 1
                frames.append(self._chunk({"tool_calls": [call]}))
            elif isinstance(part.get("text"), str) and part["text"] and not part.get("thought"):
                frames.append(self._chunk({"content": part["text"]}))
        reason = candidate.get("finishReason") if candidate is not None else None
        if reason or (candidate is None and _blocked(data)):
            self.done = True
            finish = finish_reason(reason, self._calls > 0) if reason else "content_filter"
            frames.append(self._chunk({}, finish))
            self._publish_usage()
        return frames

    def _publish_usage(self) -> None:
        raw = self._raw_usage
        if raw is None:
            return
        self.usage = usage_from_gemini(raw)
        chunk = {**self._envelope(), "choices": [], "usage": self.usage.to_openai()}
        self.usage_frame = data_frame(orjson.dumps(chunk))

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return data_frame(orjson.dumps({**self._envelope(), "choices": [choice], "usage": None}))


# --- embeddings -------------------------------------------------------------------------------------


def embeddings_response(vectors: list[Any], model: str, prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's embeddings list; a vector that is not a list of numbers is a 502."""
    data = []
    for i, values in enumerate(vectors):
        if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
            raise UpstreamUnavailable("upstream returned an embedding that is not a vector of numbers")
        data.append({"object": "embedding", "index": i, "embedding": values})
    if not data:
        raise UpstreamUnavailable("upstream returned no embeddings")
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def batch_embed_vectors(data: Any, expected: int) -> list[Any]:
    """The vectors of a ``batchEmbedContents`` answer, one per input."""
    embeddings = data.get("embeddings") if isinstance(data, dict) else None
    if not isinstance(embeddings, list) or len(embeddings) != expected:
        raise UpstreamUnavailable("malformed upstream body: embeddings do not match the inputs")
    return [e.get("values") if isinstance(e, dict) else None for e in embeddings]


def predict_vectors(data: Any, expected: int) -> tuple[list[Any], int | None]:
    """The vectors of a Vertex ``predict`` answer and the token count its statistics report."""
    predictions = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(predictions, list) or len(predictions) != expected:
        raise UpstreamUnavailable("malformed upstream body: predictions do not match the inputs")
    vectors: list[Any] = []
    tokens: int | None = 0
    for prediction in predictions:
        embedding = prediction.get("embeddings") if isinstance(prediction, dict) else None
        embedding = embedding if isinstance(embedding, dict) else {}
        vectors.append(embedding.get("values"))
        stats = embedding.get("statistics")
        count = token_count(stats.get("token_count")) if isinstance(stats, dict) else None
        tokens = None if tokens is None or count is None else tokens + count
    return vectors, tokens


# --- errors -----------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_CONTEXT = re.compile(r"input token count.*exceeds", re.IGNORECASE | re.DOTALL)


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamStatusError:
    """A Google error answer (``{error: {code, message, status, details}}``, alone or in a one-element
    array as streaming endpoints send it) as ``UpstreamStatusError`` with the upstream's status and
    message; a body that is not Google's envelope is quoted, truncated."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        text = body.decode("utf-8", "replace").strip()
        error = {"message": text[:500] if text else f"upstream answered HTTP {status}"}
    return status_error(status, error, headers)


def status_error(status: Any, error: Mapping[str, Any], headers: Mapping[str, str]) -> UpstreamStatusError:
    code = status if isinstance(status, int) and 400 <= status <= 599 else 500
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    message = message or f"upstream answered HTTP {code}"
    google_status = error.get("status") if isinstance(error.get("status"), str) else None
    raw_details = error.get("details")
    details: list[Any] = raw_details if isinstance(raw_details, list) else []
    reasons = {d.get("reason") for d in details if isinstance(d, dict)}
    if code == 400 and "API_KEY_INVALID" in reasons:
        code = 401  # Google says 400 for a bad key; it is the operator's credential that failed
    kind = "context_length_exceeded" if code == 400 and _CONTEXT.search(message) else google_status
    retry_after = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if retry_after is None:
        retry_after = _retry_delay(details)
    return UpstreamStatusError(code, message, code=kind, retry_after=retry_after)


def _retry_delay(details: list[Any]) -> str | None:
    """``google.rpc.RetryInfo``'s ``retryDelay`` (a Duration such as ``"29s"`` or ``"1.5s"``)."""
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return match.group(1)
    return None
