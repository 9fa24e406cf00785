"""``type: vertex`` on real loopback sockets: the gateway (its own transport) in front of a Vertex AI fake
that also serves the OAuth2 token endpoint of a test service account (an RSA key generated here).

The token endpoint verifies the JWT google-auth signed with that key, so the credentials path is the real
one end to end; the tests count token fetches to show a token is fetched once, reused until it expires
and fetched again after.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import google.auth.jwt
import httpx
import openai
import pytest
from conftest import BUDGETS, KEY_ACME, GatewayFactory, LiveServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gemini_fake import FakeGemini, google_error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from upstreams import HostRouter

from gateway.config.model import ProviderConfig
from gateway.errors import UpstreamStatusError
from gateway.providers.vertex import VertexProvider
from gateway.providers.vertex_auth import REFRESH_MARGIN_S, TokenSource
from gateway.transport import FastTransport

EMAIL = "gateway@demo-project.iam.gserviceaccount.com"
# google-auth signs its JWT for Google's token URI whatever token_uri the file names
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
MODELS = "/v1/projects/demo-project/locations/europe-west4/publishers/google/models/"


class VertexFake:
    """The token endpoint (``/token``) and Vertex's model methods under ``MODELS``, on one server."""

    def __init__(self, public_pem: bytes) -> None:
        self.public_pem = public_pem
        self.gemini = FakeGemini(prefix=MODELS, auth=("authorization", ""))
        self.tokens_issued: list[str] = []
        self.expires_in = 3600
        self.refuse_tokens = False
        self.revoked: set[str] = set()
        self.bearers: list[str] = []
        self.url = ""

    async def token(self, request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode())
        assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        claims = google.auth.jwt.decode(
            form["assertion"][0], certs=self.public_pem, audience=GOOGLE_TOKEN_URI
        )
        assert claims["iss"] == EMAIL and claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
        if self.refuse_tokens:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, 400
            )
        token = f"ya29.test-{len(self.tokens_issued) + 1}"
        self.tokens_issued.append(token)
        return JSONResponse({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    async def model(self, request: Request) -> Response:
        bearer = request.headers.get("authorization", "")
        self.bearers.append(bearer)
        if (
            bearer.removeprefix("Bearer ") not in self.tokens_issued
            or bearer.removeprefix("Bearer ") in self.revoked
        ):
            body = google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            return JSONResponse(body, 401)
        self.gemini.auth = ("authorization", bearer)
        upstream = httpx.Request(
            "POST", str(request.url), headers=request.headers.raw, content=await request.body()
        )
        answer = await self.gemini.handle(upstream)
        await answer.aread()
        return Response(answer.content, answer.status_code, headers=dict(answer.headers))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/token", self.token, methods=["POST"]),
                Route("/v1/{rest:path}", self.model, methods=["POST"]),
            ]
        )


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def vertex(key: rsa.RSAPrivateKey) -> Iterator[VertexFake]:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fake = VertexFake(public)
    server = LiveServer(fake.app(), "httptools").start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def credentials(tmp_path: Path, key: rsa.RSAPrivateKey, vertex: VertexFake) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "demo-project",
        "private_key_id": "test-key-1",
        "private_key": pem,
        "client_email": EMAIL,
        "client_id": "1",
        "token_uri": vertex.url + "/token",
    }
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(info))
    return path


def routes(vertex: VertexFake, credentials: Path, *, project: bool = False) -> str:
    named = "project: demo-project\n    " if project else ""  # else the service account's own project
    return f"""
providers:
  vx:
    type: vertex
    base_url: "{vertex.url}/v1"
    location: europe-west4
    {named}credentials_file: "{credentials}"
defaults:
  retry: {{attempts: 1}}
models:
  gemini-pro:
    provider: vx
    upstream: gemini-2.5-pro
    price: {{input_per_mtok: 1.25, output_per_mtok: 10}}
  vertex-gemini-embed:
    provider: vx
    upstream: gemini-embedding-001
    price: {{input_per_mtok: 0.15, output_per_mtok: 0}}
  vertex-embed:
    provider: vx
    upstream: text-embedding-005
    price: {{input_per_mtok: 0.1, output_per_mtok: 0}}
"""


@pytest.fixture
def gw(gateway_factory: GatewayFactory, vertex: VertexFake, credentials: Path) -> Any:
    return gateway_factory(routes=routes(vertex, credentials), budgets=BUDGETS)


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEY_ACME, max_retries=0)


def test_chat_stream_and_embeddings_share_one_token(gw: Any, vertex: VertexFake) -> None:
    api = client(gw)
    answer = api.chat.completions.create(
        model="gemini-pro",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    )
    assert answer.choices[0].message.content == "Bonjour !"
    chunks = list(
        api.chat.completions.create(
            model="gemini-pro", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Bonjour !"
    vectors = api.embeddings.create(model="vertex-embed", input=["a", "b"])
    assert [d.embedding for d in vectors.data] == [[0.5, -0.25, 1.0]] * 2
    assert vectors.usage.prompt_tokens == 6  # the statistics' token counts, summed

    assert vertex.tokens_issued == ["ya29.test-1"]
    assert vertex.bearers == ["Bearer ya29.test-1"] * 3
    paths = [r.url.path for r in vertex.gemini.requests]
    assert paths == [
        MODELS + "gemini-2.5-pro:generateContent",
        MODELS + "gemini-2.5-pro:streamGenerateContent",
        MODELS + "text-embedding-005:predict",
    ]
    assert vertex.gemini.json(0) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
    }
    assert vertex.gemini.json(2) == {"instances": [{"content": "a"}, {"content": "b"}]}


def test_one_instance_embedding_models_get_one_predict_per_input(gw: Any, vertex: VertexFake) -> None:
    vectors = client(gw).embeddings.create(model="vertex-gemini-embed", input=["a", "bbb", "cc"])
    assert [d.embedding for d in vectors.data] == [[0.5, -0.25, 1.0], [0.5, -0.25, 3.0], [0.5, -0.25, 2.0]]
    assert vectors.usage.prompt_tokens == 9
    bodies = sorted((vertex.gemini.json(i) for i in range(3)), key=lambda b: b["instances"][0]["content"])
    assert bodies == [{"instances": [{"content": text}]} for text in ("a", "bbb", "cc")]
    assert vertex.tokens_issued == ["ya29.test-1"]  # one token for the three calls


def test_an_expired_token_is_fetched_again(
    gateway_factory: GatewayFactory, vertex: VertexFake, credentials: Path
) -> None:
    vertex.expires_in = 0  # expired as soon as it arrives: each request needs a new one
    api = client(gateway_factory(routes=routes(vertex, credentials, project=True), budgets=BUDGETS))
    for _ in range(2):
        api.chat.completions.create(model="gemini-pro", messages=[{"role": "user", "content": "Hi"}])
    assert vertex.tokens_issued == ["ya29.test-1", "ya29.test-2"]
    assert vertex.bearers == ["Bearer ya29.test-1", "Bearer ya29.test-2"]


def test_a_token_vertex_refuses_is_dropped_and_the_next_request_fetches_another(
    gw: Any, vertex: VertexFake
) -> None:
    api = client(gw)
    api.chat.completions.create(model="gemini-pro", messages=[{"role": "user", "content": "Hi"}])
    vertex.revoked.add("ya29.test-1")  # revoked upstream while still within its lifetime
    with pytest.raises(openai.InternalServerError) as caught:
        api.chat.completions.create(model="gemini-pro", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502
    answer = api.chat.completions.create(model="gemini-pro", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == "Bonjour !"
    assert vertex.tokens_issued == ["ya29.test-1", "ya29.test-2"]
    assert vertex.bearers == ["Bearer ya29.test-1", "Bearer ya29.test-1", "Bearer ya29.test-2"]


def test_refused_credentials_are_the_operators_problem(gw: Any, vertex: VertexFake) -> None:
    vertex.refuse_tokens = True
    with pytest.raises(openai.InternalServerError) as caught:
        client(gw).chat.completions.create(model="gemini-pro", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "upstream_auth_error"
    assert vertex.bearers == []  # nothing was sent without a token


def test_vertex_rate_limit_and_messages_api(gw: Any, vertex: VertexFake) -> None:
    api = anthropic.Anthropic(base_url=gw.url, api_key=KEY_ACME, max_retries=0)
    message = api.messages.create(
        model="gemini-pro", max_tokens=32, messages=[{"role": "user", "content": "Hi"}]
    )
    assert [b.text for b in message.content if b.type == "text"] == ["Bonjour !"]
    retry = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.5s"}]
    vertex.gemini.fail_with = httpx.Response(
        429, json=google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", retry)
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client(gw).chat.completions.create(model="gemini-pro", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.response.headers["retry-after"] == "13"
    assert caught.value.response.headers["retry-after-ms"] == "12500"
    assert "Quota exceeded." in caught.value.message


async def test_token_source_reuses_a_token_until_it_is_due_and_refreshes_once(
    vertex: VertexFake, credentials: Path
) -> None:
    """The cache itself, with a clock the test moves: one fetch, reuse, one refresh for many waiters."""
    now = [time.time()]
    transport = FastTransport()
    tokens = TokenSource("vx", transport, str(credentials), clock=lambda: now[0])
    try:
        first = await tokens.authorization()
        assert first == {"authorization": "Bearer ya29.test-1"} and tokens.project == "demo-project"
        now[0] += 3600 - REFRESH_MARGIN_S - 1
        assert await tokens.authorization() is first
        now[0] += 2
        results = await asyncio.gather(*(tokens.authorization() for _ in range(5)))
        assert all(r == {"authorization": "Bearer ya29.test-2"} for r in results)
        assert vertex.tokens_issued == ["ya29.test-1", "ya29.test-2"] and tokens.refreshes == 2
        vertex.refuse_tokens = True
        now[0] += 3600
        with pytest.raises(UpstreamStatusError) as caught:
            await tokens.authorization()
        assert caught.value.status == 401 and "invalid_grant" in caught.value.message
    finally:
        await transport.aclose()


def test_express_mode_uses_the_api_key_and_no_token(gateway_factory: GatewayFactory) -> None:
    fake = FakeGemini(prefix="/v1/publishers/google/models/", auth=("x-goog-api-key", "vx-key"))
    gw = gateway_factory(
        routes="""
providers:
  vx: {type: vertex, api_key: vx-key}
models:
  gemini-flash: {provider: vx, upstream: gemini-2.5-flash, price: {input_per_mtok: 0.3, output_per_mtok: 2.5}}
""",
        budgets=BUDGETS,
        transport=HostRouter(**{"aiplatform.googleapis.com": fake.handle}),
    )
    answer = client(gw).chat.completions.create(
        model="gemini-flash", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.choices[0].message.content == "Bonjour !"
    assert str(fake.requests[0].url) == (
        "https://aiplatform.googleapis.com/v1/publishers/google/models/gemini-2.5-flash:generateContent"
    )
    assert "authorization" not in fake.requests[0].headers


async def test_application_default_credentials(
    vertex: VertexFake, credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without credentials_file, google-auth's ADC chain is used (here: GOOGLE_APPLICATION_CREDENTIALS),
    and the project comes with it."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    transport = FastTransport()
    tokens = TokenSource("vx", transport)
    try:
        assert await tokens.authorization() == {"authorization": "Bearer ya29.test-1"}
        assert tokens.project == "demo-project"
    finally:
        await transport.aclose()


@pytest.mark.parametrize(
    ("location", "model", "url"),
    [
        (
            "europe-west4",
            "gemini-2.5-pro",
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/p1/locations/europe-west4"
            "/publishers/google/models/gemini-2.5-pro:generateContent",
        ),
        (
            "global",
            "gemini-2.5-pro",
            "https://aiplatform.googleapis.com/v1/projects/p1/locations/global"
            "/publishers/google/models/gemini-2.5-pro:generateContent",
        ),
        (  # a tuned model's endpoint, named whole
            "us-central1",
            "projects/p1/locations/us-central1/endpoints/123",
            "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1/endpoints/123"
            ":generateContent",
        ),
    ],
)
async def test_vertex_urls(location: str, model: str, url: str) -> None:
    options = {"project": "p1", "location": location, "credentials_file": ""}
    provider = VertexProvider(ProviderConfig(name="vx", type="vertex", options=options), FastTransport())
    assert await provider.model_url(model, "generateContent") == url
    assert provider.tokens.refreshes == 0  # the project was named: no credentials were needed for the URL
