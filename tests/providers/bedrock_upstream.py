"""A Bedrock Runtime upstream on loopback for the bedrock provider's wire tests.

- ``frame``: an AWS event-stream message encoder (prelude, headers, CRCs), written from the format's
  specification and checked against botocore's parser in the tests; ``event``/``exception``/``error``
  build ConverseStream's messages with it.
- ``FakeBedrock``: a Starlette app served by uvicorn on 127.0.0.1 that VERIFIES each request's SigV4
  signature (recomputed with botocore from the bytes and headers received and the test's
  credentials), records what it got, and answers from a script of handlers.
- ``aws_env``: credentials from environment variables only; the machine's real AWS config, shared
  credentials and instance metadata are out of reach.
"""

from __future__ import annotations

import binascii
import json
import re
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from conftest import LiveServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ACCESS_KEY = "AKIDBEDROCKTEST0001"
SECRET_KEY = "bedrock/test/secret+key"
SESSION_TOKEN = "session-token-for-tests"
REGION = "us-east-1"
EVENT_STREAM = "application/vnd.amazon.eventstream"

_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CREDENTIAL_EXPIRATION",
)


def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, keys: bool = True) -> Path:
    """Empty temp AWS config/credentials files, instance metadata off, and (``keys``) the test's keys in
    the environment. Returns the folder holding the two files, for tests that write profiles."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "aws"
    folder.mkdir(exist_ok=True)
    (folder / "config").write_text("")
    (folder / "credentials").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(folder / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if keys:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    return folder


# --- AWS event-stream framing -----------------------------------------------------------------------


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: total length, headers length, prelude CRC32, headers (each: name
    length u8, name, type 7 = string, value length u16, value), payload, CRC32 of all before it."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack("!B", len(raw_name)) + raw_name
        encoded += struct.pack("!BH", 7, len(raw_value)) + raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message))


def event(kind: str, payload: dict[str, Any]) -> bytes:
    """A ConverseStream event as Bedrock sends it (its ``p`` field pads the size; clients ignore it)."""
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps({**payload, "p": "abcdefgh"}).encode())


def exception(kind: str, message: str) -> bytes:
    headers = {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, json.dumps({"message": message}).encode())


def error(code: str, message: str) -> bytes:
    return frame({":error-code": code, ":error-message": message, ":message-type": "error"}, b"")


def text_stream(
    words: Iterable[str], *, stop: str = "end_turn", usage: dict[str, int] | None = None
) -> list[bytes]:
    frames = [event("messageStart", {"role": "assistant"})]
    frames += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}}) for w in words]
    frames += [
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": stop}),
    ]
    counts = usage or {"inputTokens": 12, "outputTokens": 4, "totalTokens": 16}
    frames.append(event("metadata", {"usage": counts, "metrics": {"latencyMs": 321}}))
    return frames


def converse_answer(
    content: list[dict[str, Any]], *, stop: str = "end_turn", usage: dict[str, int] | None = None
) -> dict[str, Any]:
    counts = usage or {"inputTokens": 10, "outputTokens": 3, "totalTokens": 13}
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": counts,
        "metrics": {"latencyMs": 120},
    }


def aws_error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error as Bedrock answers it: the exception in ``x-amzn-errortype``, ``{"message"}`` as body."""
    errortype = f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    return JSONResponse(
        {"message": message},
        status_code=status,
        headers={"x-amzn-errortype": errortype, "x-amzn-requestid": "req-1", **(headers or {})},
    )


def stream_response(frames: list[bytes], *, chunk: int = 0, tail: bytes = b"") -> Response:
    """Frames as a ConverseStream body, re-cut into ``chunk``-byte writes (0: one write per frame) so
    messages straddle reads; ``tail`` (a part of a frame) is sent last, as a cut connection leaves it."""
    body = b"".join(frames)

    async def chunks() -> AsyncIterator[bytes]:
        pieces = frames if not chunk else [body[i : i + chunk] for i in range(0, len(body), chunk)]
        for piece in pieces:
            yield piece
        if tail:
            yield tail

    return StreamingResponse(chunks(), media_type=EVENT_STREAM, headers={"x-amzn-requestid": "req-s"})


# --- the upstream -----------------------------------------------------------------------------------

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/"
    r"aws4_request, SignedHeaders=(?P<signed>[^,]+), Signature=(?P<signature>[0-9a-f]{64})"
)


@dataclass
class Received:
    """One request as it arrived: the raw path (percent-encoding intact), headers, body bytes."""

    raw_path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    problem: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def model(self) -> str:
        return self.raw_path.split("/")[2]

    @property
    def action(self) -> str:
        return self.raw_path.rsplit("/", 1)[-1]


Handler = Callable[[Received], Response]


def verify_sigv4(
    method: str,
    host: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes,
    secret: str,
    token: str | None,
) -> str:
    """ "" if the Authorization header is the SigV4 signature of exactly this request, else why not.

    The signature is recomputed from what arrived: the signed headers' received values, the raw path
    and the body bytes, with the test's credentials and the request's own ``x-amz-date``."""
    match = _AUTH.fullmatch(headers.get("authorization", ""))
    if match is None:
        return f"authorization is not SigV4: {headers.get('authorization')!r}"
    if (match["key"], match["region"], match["service"]) != (ACCESS_KEY, REGION, "bedrock"):
        return f"wrong credential scope: {match.group(0)}"
    if headers.get("x-amz-security-token") != token:
        return "session token missing or wrong"
    amz_date = headers.get("x-amz-date", "")
    if not amz_date.startswith(match["date"]):
        return "x-amz-date does not match the credential scope"
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return f"host or x-amz-date not signed: {signed}"
    request = AWSRequest(
        method=method,
        url=f"http://{host}{raw_path}",
        data=body,
        headers={name: headers[name] for name in signed if name in headers},
    )
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(ReadOnlyCredentials(ACCESS_KEY, secret, token), "bedrock", REGION)
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    return "" if expected == match["signature"] else "signature mismatch"


@dataclass
class FakeBedrock:
    """Loopback Bedrock Runtime: verifies SigV4 (unless ``bearer`` is set: then that API key), records
    requests, answers with ``script`` (handlers taken in order) or ``default``."""

    secret: str = SECRET_KEY
    token: str | None = SESSION_TOKEN
    bearer: str | None = None
    received: list[Received] = field(default_factory=list)
    script: list[Handler] = field(default_factory=list)
    default: Handler | None = None
    server: LiveServer | None = None

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
        raw_path = request.scope["raw_path"].decode()
        if self.bearer is not None:
            good = headers.get("authorization") == f"Bearer {self.bearer}"
            problem = "" if good else "bearer token missing or wrong"
        else:
            problem = verify_sigv4("POST", headers["host"], raw_path, headers, body, self.secret, self.token)
        got = Received(raw_path, headers, body, signature_ok=not problem, problem=problem)
        self.received.append(got)
        if problem:
            return aws_error(403, "InvalidSignatureException", problem)
        handler = self.script.pop(0) if self.script else self.default
        if handler is None:
            return aws_error(500, "InternalServerException", "the test scripted no answer")
        return handler(got)

    def start(self) -> FakeBedrock:
        app = Starlette(routes=[Route("/{rest:path}", self.handle, methods=["POST"])])
        self.server = LiveServer(app, http="h11").start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url
