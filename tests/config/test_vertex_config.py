"""``gateway check`` on ``vertex`` entries: the credentials file is read now, not at the first request, and
api_key (express mode) alone is accepted."""

from __future__ import annotations

import json
from pathlib import Path

from config_snippets import provider_errors, routes_ok

from gateway.egress import Egress
from gateway.transport import FastTransport

CREDENTIALS = Path(__file__).parent / "fixtures" / "google-credentials.json"


def test_express_mode_and_defaults() -> None:
    config, _ = routes_ok(
        "providers: {v: {type: vertex, api_key: k}, g: {type: gemini}}\nmodels: {m: {provider: v}}"
    )
    assert config.providers["v"].api_key == "k"
    assert dict(config.providers["v"].options) == {
        "project": "",
        "location": "us-central1",
        "credentials_file": "",
    }
    assert config.providers["g"].base_url == "https://generativelanguage.googleapis.com/v1beta"
    assert config.providers["v"].base_url == "https://aiplatform.googleapis.com/v1"  # express mode


def test_the_default_url_is_the_locations_so_egress_sees_the_real_host() -> None:
    config, _ = routes_ok(
        "providers:\n"
        "  eu: {type: vertex, location: europe-west4}\n"
        "  gl: {type: vertex, location: global}\n"
        "  own: {type: vertex, base_url: 'http://127.0.0.1:9/v1'}\n"
        "models: {m: {provider: eu}}"
    )
    assert config.providers["eu"].base_url == "https://europe-west4-aiplatform.googleapis.com/v1"
    assert config.providers["gl"].base_url == "https://aiplatform.googleapis.com/v1"
    assert config.providers["own"].base_url == "http://127.0.0.1:9/v1"


def test_credentials_file_problems_are_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert provider_errors(f"{{type: vertex, credentials_file: '{missing}'}}") == [
        f"routes.yaml: providers.x.credentials_file: cannot read '{missing}'"
    ]
    broken = tmp_path / "broken.json"
    broken.write_text("-----BEGIN PRIVATE KEY-----")
    [error] = provider_errors(f"{{type: vertex, credentials_file: '{broken}'}}")
    assert error.startswith(
        f"routes.yaml: providers.x.credentials_file: '{broken}' is not a JSON credentials file"
    )
    other = tmp_path / "external.json"
    other.write_text(json.dumps({"type": "external_account", "audience": "x"}))
    assert provider_errors(f"{{type: vertex, credentials_file: '{other}'}}") == [
        f"routes.yaml: providers.x.credentials_file: '{other}': credentials of type 'external_account' "
        "are not supported (use service_account or authorized_user)"
    ]
    assert provider_errors(f"{{type: vertex, api_key: k, credentials_file: '{CREDENTIALS}'}}") == [
        "routes.yaml: providers.x.credentials_file: set api_key (express mode) or credentials_file, not both"
    ]
    assert provider_errors("{type: vertex, location: ''}") == [
        "routes.yaml: providers.x.location: must not be empty"
    ]


async def test_vertex_and_gemini_go_through_the_proxy_like_every_provider() -> None:
    config, _ = routes_ok(
        "providers: {v: {type: vertex, location: europe-west4}, g: {type: gemini, api_key: k}}\n"
        "models: {m: {provider: v}}"
    )
    direct = FastTransport()
    egress = Egress(direct, {"https": "http://proxy.internal:3128", "no": "127.0.0.1"})
    try:
        for name in ("v", "g"):
            assert egress.transport_for(config.providers[name]) is not direct, name
    finally:
        await egress.aclose()
