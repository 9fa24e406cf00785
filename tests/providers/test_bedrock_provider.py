"""BedrockProvider against the loopback Bedrock (SigV4 verified): credentials from the standard chain,
profiles, explicit keys, API keys, refresh off the event loop; the event-stream reader's limits and
corruption handling; and the test encoder checked against botocore's parser."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from bedrock_upstream import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    SESSION_TOKEN,
    FakeBedrock,
    aws_env,
    converse_answer,
    event,
    exception,
    frame,
    stream_response,
    text_stream,
    verify_sigv4,
)
from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from starlette.responses import JSONResponse

from gateway.config.model import ProviderConfig, UpstreamLimits
from gateway.errors import UpstreamAuthError, UpstreamStatusError, UpstreamUnavailable
from gateway.providers import http
from gateway.providers.base import Operation, UpstreamRequest
from gateway.providers.bedrock import BedrockProvider
from gateway.providers.bedrock_auth import sign
from gateway.transport import FastTransport

MODEL = "amazon.nova-lite-v1:0"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeBedrock]:
    aws_env(monkeypatch, tmp_path, keys=False)
    upstream = FakeBedrock().start()
    upstream.default = lambda got: JSONResponse(converse_answer([{"text": "ok"}]))
    yield upstream
    upstream.stop()


@pytest.fixture
async def transport() -> AsyncIterator[FastTransport]:
    t = FastTransport(max_connections=8, max_idle=8, keepalive_expiry=5)
    yield t
    await t.aclose()


def provider(fake: FakeBedrock, transport: FastTransport, **options: Any) -> BedrockProvider:
    opts = {"region": REGION, **options}
    api_key = opts.pop("api_key", "")
    limits = opts.pop("limits", UpstreamLimits())
    config = ProviderConfig(
        name="aws", type="bedrock", base_url=fake.url, api_key=api_key, options=opts, limits=limits
    )
    return BedrockProvider(config, transport)


def chat(stream: bool = False) -> UpstreamRequest:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return UpstreamRequest(Operation.CHAT, body, timeout_s=5.0)


# --- the test's own encoder and verifier can fail ---------------------------------------------------


def test_encoder_frames_parse_with_botocore() -> None:
    data = event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}) + exception(
        "validationException", "bad input"
    )
    buffer = EventStreamBuffer()
    buffer.add_data(data[:5])
    assert list(buffer) == []  # not even a prelude yet
    buffer.add_data(data[5:])
    first, second = list(buffer)
    assert first.headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert orjson.loads(first.payload)["delta"] == {"text": "héllo"}
    assert second.headers[":message-type"] == "exception"
    assert second.headers[":exception-type"] == "validationException"
    corrupt = bytearray(frame({":message-type": "event"}, b"{}"))
    corrupt[-6] ^= 1  # a payload byte: the message CRC no longer matches
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(corrupt))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


def test_the_verifier_rejects_what_was_not_signed() -> None:
    url, body = "http://127.0.0.1:9/model/m%3A0/converse", b'{"messages": []}'
    credentials = ReadOnlyCredentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)
    headers = sign(url, {"content-type": "application/json"}, body, credentials, REGION)
    args = ("POST", "127.0.0.1:9", "/model/m%3A0/converse")
    assert verify_sigv4(*args, headers, body, SECRET_KEY, SESSION_TOKEN) == ""
    assert verify_sigv4(*args, headers, body + b" ", SECRET_KEY, SESSION_TOKEN) == "signature mismatch"
    assert verify_sigv4(*args, headers, body, "another-secret", SESSION_TOKEN) == "signature mismatch"
    changed = {**headers, "content-type": "text/plain"}
    assert verify_sigv4(*args, changed, body, SECRET_KEY, SESSION_TOKEN) == "signature mismatch"
    assert verify_sigv4(
        "POST", "127.0.0.1:9", "/model/m:0/converse", headers, body, SECRET_KEY, SESSION_TOKEN
    )


# --- credentials ------------------------------------------------------------------------------------


async def test_credentials_from_environment_variables(
    fake: FakeBedrock, transport: FastTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_REGION", REGION)
    config = ProviderConfig(name="aws", type="bedrock", base_url=fake.url, options={"region": ""})
    answer = await BedrockProvider(config, transport).send(chat())
    assert orjson.loads(answer.body)["choices"][0]["message"]["content"] == "ok"
    [got] = fake.received
    assert got.signature_ok, got.problem


async def test_credentials_from_a_profile_in_the_shared_files(
    fake: FakeBedrock, transport: FastTransport, tmp_path: Path
) -> None:
    folder = tmp_path / "aws"
    (folder / "credentials").write_text(
        f"[default]\naws_access_key_id = AKIDWRONGDEFAULT\naws_secret_access_key = nope\n\n"
        f"[bedrock-team]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    (folder / "config").write_text(f"[profile bedrock-team]\nregion = {REGION}\n")
    fake.token = None
    bedrock = provider(fake, transport, region="", profile="bedrock-team")
    assert bedrock.region == REGION  # from the profile's config section
    await bedrock.send(chat())
    [got] = fake.received
    assert got.signature_ok, got.problem
    assert "x-amz-security-token" not in got.headers


async def test_an_inference_profile_arn_is_one_escaped_path_segment(
    fake: FakeBedrock, transport: FastTransport
) -> None:
    """The model id is a single URI label: an ARN's ':' and '/' are percent-encoded, and the signature
    covers the path as sent (SigV4 encodes it once more in the canonical request)."""
    arn = (
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0"
    )
    keys = {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}
    request = chat()
    request.body["model"] = arn
    await provider(fake, transport, **keys, aws_session_token=SESSION_TOKEN).send(request)
    [got] = fake.received
    assert got.signature_ok, got.problem
    assert got.raw_path == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
        "us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    )


async def test_explicit_keys_win_over_the_environment(
    fake: FakeBedrock, transport: FastTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMTHEENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    keys = {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}
    await provider(fake, transport, **keys, aws_session_token=SESSION_TOKEN).send(chat())
    [got] = fake.received
    assert got.signature_ok, got.problem


async def test_no_credentials_is_an_operator_error_not_a_guess(
    fake: FakeBedrock, transport: FastTransport
) -> None:
    with pytest.raises(UpstreamAuthError, match="no AWS credentials found"):
        await provider(fake, transport).send(chat())
    assert fake.received == []


async def test_a_missing_profile_is_named(fake: FakeBedrock, transport: FastTransport) -> None:
    with pytest.raises(UpstreamAuthError, match=r"could not be loaded: .*no-such-team"):
        await provider(fake, transport, profile="no-such-team").send(chat())
    assert fake.received == []


async def test_a_wrong_secret_is_refused_by_the_upstream(fake: FakeBedrock, transport: FastTransport) -> None:
    keys = {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": "not-the-secret"}
    with pytest.raises(UpstreamStatusError) as info:
        await provider(fake, transport, **keys, aws_session_token=SESSION_TOKEN).send(chat())
    assert info.value.status == 403  # dispatch turns it into the client's 502 upstream_auth_error
    [got] = fake.received
    assert got.problem == "signature mismatch"


async def test_a_bedrock_api_key_is_a_bearer_token(fake: FakeBedrock, transport: FastTransport) -> None:
    fake.bearer = "bedrock-api-key-123"
    await provider(fake, transport, api_key="bedrock-api-key-123").send(chat())
    [got] = fake.received
    assert got.signature_ok and "x-amz-date" not in got.headers


async def test_expiring_credentials_are_refreshed_off_the_event_loop(
    fake: FakeBedrock, transport: FastTransport
) -> None:
    """Temporary credentials (instance role, SSO, assume-role) are refreshed by botocore as they near
    expiry; the refresh may do network I/O, so it must run in a worker thread, never on the loop."""
    refreshes: list[str] = []
    loop_thread = threading.get_ident()

    def refresh() -> dict[str, str]:
        assert threading.get_ident() != loop_thread, "refresh ran on the event loop"
        refreshes.append(f"token-{len(refreshes)}")
        # Expiring in 1 minute: inside botocore's 15-minute advisory window, so each use refreshes again.
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
        return {
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "token": refreshes[-1],
            "expiry_time": expiry.isoformat(),
        }

    bedrock = provider(fake, transport)
    expired = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    first = {
        "access_key": ACCESS_KEY,
        "secret_key": "old",
        "token": "old",
        "expiry_time": expired.isoformat(),
    }
    bedrock._credentials._source = RefreshableCredentials.create_from_metadata(
        first, refresh_using=refresh, method="test"
    )
    for expected in ("token-0", "token-1"):
        fake.token = expected
        await bedrock.send(chat())
        assert fake.received[-1].signature_ok, fake.received[-1].problem
        assert fake.received[-1].headers["x-amz-security-token"] == expected
    assert refreshes == ["token-0", "token-1"]


async def test_concurrent_first_requests_resolve_credentials_once(
    fake: FakeBedrock, transport: FastTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    bedrock = provider(fake, transport)
    calls = 0
    original = bedrock._credentials._freeze

    def counted() -> ReadOnlyCredentials:
        nonlocal calls
        calls += 1
        return original()

    monkeypatch.setattr(bedrock._credentials, "_freeze", counted)
    await asyncio.gather(*(bedrock.send(chat()) for _ in range(5)))
    assert calls == 1
    assert len(fake.received) == 5 and all(g.signature_ok for g in fake.received)


async def test_no_region_is_a_clear_configuration_error(fake: FakeBedrock, transport: FastTransport) -> None:
    config = ProviderConfig(name="aws", type="bedrock", options={"region": ""})
    with pytest.raises(UpstreamUnavailable, match="no AWS region"):
        await BedrockProvider(config, transport).send(chat())
    named = BedrockProvider(
        ProviderConfig(name="aws", type="bedrock", options={"region": "eu-west-3"}), transport
    )
    assert (
        named.url(MODEL, "converse")
        == "https://bedrock-runtime.eu-west-3.amazonaws.com/model/amazon.nova-lite-v1%3A0/converse"
    )


# --- the event-stream reader ------------------------------------------------------------------------


@pytest.fixture
def keyed(fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)


async def collect(bedrock: BedrockProvider) -> list[bytes]:
    stream = await bedrock.open_stream(chat(stream=True))
    frames: list[bytes] = []
    try:
        async for f in stream:
            frames.append(f)
    finally:
        await stream.aclose()
    return frames


@pytest.mark.usefixtures("keyed")
async def test_a_corrupted_frame_is_a_malformed_stream(fake: FakeBedrock, transport: FastTransport) -> None:
    frames = text_stream(["a", "b"])
    bad = bytearray(frames[1])
    bad[-5] ^= 0x20
    fake.default = lambda got: stream_response([frames[0], bytes(bad), *frames[2:]])
    with pytest.raises(UpstreamUnavailable, match="malformed event stream: ChecksumMismatch"):
        await collect(provider(fake, transport))


@pytest.mark.usefixtures("keyed")
async def test_an_event_past_max_event_bytes_is_refused(fake: FakeBedrock, transport: FastTransport) -> None:
    frames = text_stream(["x" * 4000])
    fake.default = lambda got: stream_response(frames, chunk=512)
    small = UpstreamLimits(max_event_bytes=2048)
    with pytest.raises(UpstreamUnavailable, match="stream event larger than the gateway's limit"):
        await collect(provider(fake, transport, limits=small))
    fake.default = lambda got: stream_response(text_stream(["y" * 100] * 40), chunk=512)
    with pytest.raises(UpstreamUnavailable, match="stream larger than the gateway's limit"):
        await collect(provider(fake, transport, limits=UpstreamLimits(max_stream_bytes=4096)))


@pytest.mark.usefixtures("keyed")
async def test_usage_and_the_last_frame_arrive_together(fake: FakeBedrock, transport: FastTransport) -> None:
    usage = {"inputTokens": 7, "outputTokens": 2, "totalTokens": 12, "cacheWriteInputTokens": 3}
    fake.default = lambda got: stream_response(text_stream(["hi"], usage=usage))
    bedrock = provider(fake, transport)
    stream = await bedrock.open_stream(chat(stream=True))
    frames = [f async for f in stream]
    await stream.aclose()
    assert stream.usage is not None
    assert (stream.usage.prompt_tokens, stream.usage.cache_write_tokens, stream.usage.completion_tokens) == (
        10,
        3,
        2,
    )
    assert stream.usage_frame is not None and b'"choices":[]' in stream.usage_frame
    assert len(frames) == 3  # role, "hi", finish


@pytest.mark.usefixtures("keyed")
async def test_an_error_message_frame_is_a_server_error(fake: FakeBedrock, transport: FastTransport) -> None:
    error_frame = frame(
        {":error-code": "InternalFailure", ":error-message": "boom", ":message-type": "error"}, b""
    )
    fake.default = lambda got: stream_response([event("messageStart", {"role": "assistant"}), error_frame])
    with pytest.raises(UpstreamStatusError) as info:
        await collect(provider(fake, transport))
    assert (info.value.status, info.value.message, info.value.code) == (500, "boom", "InternalFailure")


def test_signed_headers_are_not_kept_in_the_wire_memo() -> None:
    """Each signed request has headers of its own: memoizing them would only push the long-lived
    provider headers out of the memo (and hold the dead ones)."""
    before = dict(http._wires._entries)
    for i in range(100):
        wire = http._wire(http.OneOff({"authorization": f"AWS4-HMAC-SHA256 Signature={i:064x}"}))
        assert (b"authorization", f"AWS4-HMAC-SHA256 Signature={i:064x}".encode()) in wire
    assert http._wires._entries == before
    kept = {"authorization": "Bearer k"}
    assert http._wire(kept) is http._wire(kept)  # a provider's own headers are still encoded once
