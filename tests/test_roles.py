"""Roles, key allow-lists and expiry, the admin audit log, and delegation tokens, on a live gateway.

The role matrix runs every kind of caller against every admin endpoint, both kinds of plugin API
(``review`` and another) and the proxy endpoints, with a real sidecar process behind the plugin APIs.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from conftest import Gateway, GatewayFactory, free_port
from sidecars import (
    ADMIN,
    BUDGETS,
    DELEGATION_SECRET,
    KEYS,
    Sidecar,
    bearer,
    routes_with_plugins,
)

from gateway import delegation

CHAT = {"model": "mock-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
_ids = itertools.count(1)


@dataclass
class Env:
    gw: Gateway
    sidecar: Sidecar

    def token(self, key_id: str = "acme-user", tenant: str = "acme", expires_in: float = 60) -> str:
        d = delegation.Delegation(tenant, key_id, "req_parent_1", int(time.time() + expires_in))
        return delegation.mint(DELEGATION_SECRET.encode(), d)


@pytest.fixture
def env(gateway_factory: GatewayFactory) -> Iterator[Env]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gw = gateway_factory(
        routes=routes_with_plugins(url, f"http://127.0.0.1:{free_port()}"),
        budgets=BUDGETS,
        admin_key=ADMIN,
        delegation_secret=DELEGATION_SECRET,
    )
    sidecar = Sidecar(gw.url, port)
    yield Env(gw, sidecar)
    sidecar.stop()


# -- the role matrix ---------------------------------------------------------------------------------

CALLERS = ("operator", "admin", "admin_other", "reviewer", "user", "token", "forged", "expired_key")


def _headers(env: Env, caller: str) -> dict[str, str]:
    if caller == "operator":
        return bearer(ADMIN)
    if caller in ("admin", "admin_other"):
        return bearer(KEYS["acme-admin"])
    if caller == "reviewer":
        return bearer(KEYS["acme-rev"])
    if caller == "user":
        return bearer(KEYS["acme-user"])
    if caller == "token":
        return bearer(env.token())
    if caller == "forged":
        d = delegation.Delegation("acme", "acme-user", "req_x", int(time.time() + 60))
        return bearer(delegation.mint(b"f" * 40, d))
    assert caller == "expired_key"
    return bearer(KEYS["acme-expired"])


def _tenant(caller: str) -> str:
    """The tenant a call acts on: ``admin_other`` is acme's admin key reaching for globex."""
    return "globex" if caller == "admin_other" else "acme"


Call = Callable[[Env, str], httpx.Response]


def _create(env: Env, caller: str) -> httpx.Response:
    body = {"tenant": _tenant(caller), "id": f"matrix-{next(_ids)}"}
    return httpx.post(env.gw.url + "/admin/keys", json=body, headers=_headers(env, caller))


def _list(env: Env, caller: str) -> httpx.Response:
    return httpx.get(
        env.gw.url + "/admin/keys", params={"tenant": _tenant(caller)}, headers=_headers(env, caller)
    )


def _delete(env: Env, caller: str) -> httpx.Response:
    key_id = f"victim-{next(_ids)}"
    made = httpx.post(
        env.gw.url + "/admin/keys", json={"tenant": _tenant(caller), "id": key_id}, headers=bearer(ADMIN)
    )
    assert made.status_code == 201
    return httpx.delete(f"{env.gw.url}/admin/keys/{key_id}", headers=_headers(env, caller))


def _spend(env: Env, caller: str) -> httpx.Response:
    return httpx.get(
        env.gw.url + "/admin/spend", params={"tenant": _tenant(caller)}, headers=_headers(env, caller)
    )


def _reload(env: Env, caller: str) -> httpx.Response:
    return httpx.post(env.gw.url + "/admin/reload", headers=_headers(env, caller))


def _explain(env: Env, caller: str) -> httpx.Response:
    return httpx.post(
        env.gw.url + "/admin/explain", json={"body": {"model": "mock-chat"}}, headers=_headers(env, caller)
    )


def _review_api(env: Env, caller: str) -> httpx.Response:
    return httpx.get(env.gw.url + "/v1/plugins/review/echo/queue", headers=_headers(env, caller))


def _other_api(env: Env, caller: str) -> httpx.Response:
    return httpx.post(
        env.gw.url + "/v1/plugins/rag/echo/docs", json={"text": "x"}, headers=_headers(env, caller)
    )


def _chat(env: Env, caller: str) -> httpx.Response:
    return httpx.post(env.gw.url + "/v1/chat/completions", json=CHAT, headers=_headers(env, caller))


def _models(env: Env, caller: str) -> httpx.Response:
    return httpx.get(env.gw.url + "/v1/models", headers=_headers(env, caller))


# Expected status per caller, in CALLERS order.
MATRIX: dict[str, tuple[Call, tuple[int, ...]]] = {
    #                                 operator admin other reviewer user token forged expired
    "POST /admin/keys": (_create, (201, 201, 403, 403, 403, 403, 401, 401)),
    "GET /admin/keys": (_list, (200, 200, 403, 403, 403, 403, 401, 401)),
    "DELETE /admin/keys/{id}": (_delete, (200, 200, 404, 403, 403, 403, 401, 401)),
    "GET /admin/spend": (_spend, (200, 200, 403, 403, 403, 403, 401, 401)),
    "POST /admin/reload": (_reload, (200, 403, 403, 403, 403, 403, 401, 401)),
    "POST /admin/explain": (_explain, (200, 403, 403, 403, 403, 403, 401, 401)),
    "GET /v1/plugins/review/...": (_review_api, (403, 200, 200, 200, 403, 403, 401, 401)),
    "POST /v1/plugins/rag/...": (_other_api, (403, 200, 200, 403, 200, 403, 401, 401)),
    "POST /v1/chat/completions": (_chat, (401, 200, 200, 403, 200, 200, 401, 401)),
    "GET /v1/models": (_models, (401, 200, 200, 403, 200, 200, 401, 401)),
}


def test_role_matrix(env: Env) -> None:
    """One gateway and one sidecar for the whole matrix (starting them per cell would cost minutes);
    every mismatch is collected, so a failure shows the whole picture."""
    wrong = []
    for endpoint, (call, expected) in MATRIX.items():
        for caller, status in zip(CALLERS, expected, strict=True):
            r = call(env, caller)
            if r.status_code != status:
                wrong.append(f"{endpoint} as {caller}: {r.status_code} (expected {status}) {r.text[:200]}")
                continue
            if status in (401, 403, 404):
                error = r.json()["error"]
                kind = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error"}
                if error["type"] != kind[status]:
                    wrong.append(f"{endpoint} as {caller}: error type {error['type']}")
    assert not wrong, "\n".join(wrong)


def test_an_admin_key_sees_and_manages_only_its_own_tenant(env: Env) -> None:
    url, admin = env.gw.url, bearer(KEYS["acme-admin"])
    made = httpx.post(url + "/admin/keys", json={"id": "acme-new"}, headers=admin)  # tenant: its own
    assert made.status_code == 201 and made.json()["tenant"] == "acme"
    listed = httpx.get(url + "/admin/keys", headers=admin).json()["data"]
    assert {k["tenant"] for k in listed} == {"acme"}
    assert {"acme-new", "acme-admin", "acme-user"} <= {k["id"] for k in listed}
    globex_key = httpx.post(
        url + "/admin/keys", json={"tenant": "globex", "id": "g-rt"}, headers=bearer(ADMIN)
    )
    assert globex_key.status_code == 201
    # another tenant's key is answered like a missing one, and stays
    assert httpx.delete(url + "/admin/keys/g-rt", headers=admin).json()["error"]["code"] == "key_not_found"
    assert any(
        k["id"] == "g-rt" for k in httpx.get(url + "/admin/keys", headers=bearer(ADMIN)).json()["data"]
    )
    # an admin key may not mint admin keys; the operator may
    refused = httpx.post(url + "/admin/keys", json={"id": "acme-admin-2", "role": "admin"}, headers=admin)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    by_operator = {"tenant": "acme", "id": "acme-admin-2", "role": "admin"}
    assert httpx.post(url + "/admin/keys", json=by_operator, headers=bearer(ADMIN)).status_code == 201
    # the new admin key (a run-time one) gets its tenant's admin API at once
    secret = httpx.post(url + "/admin/keys", json={"id": "acme-rt-user"}, headers=admin).json()["secret"]
    assert httpx.get(url + "/admin/keys", headers=bearer(secret)).status_code == 403


# -- key allow-lists and expiry ----------------------------------------------------------------------


def test_a_keys_models_narrow_its_tenants(env: Env) -> None:
    narrow = bearer(KEYS["acme-narrow"])
    ids = {m["id"] for m in httpx.get(env.gw.url + "/v1/models", headers=narrow).json()["data"]}
    assert ids == {"mock-chat"}
    r = httpx.post(env.gw.url + "/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini"}, headers=narrow)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert httpx.post(env.gw.url + "/v1/chat/completions", json=CHAT, headers=narrow).status_code == 200


def test_run_time_keys_carry_models_and_expiry(env: Env) -> None:
    url, op = env.gw.url, bearer(ADMIN)
    body = {
        "tenant": "acme",
        "id": "rt-narrow",
        "models": ["mock-chat"],
        "expires_at": "2999-01-01T00:00:00Z",
    }
    made = httpx.post(url + "/admin/keys", json=body, headers=op)
    assert made.status_code == 201, made.text
    assert made.json()["models"] == ["mock-chat"] and made.json()["expires_at"] > time.time()
    key = bearer(made.json()["secret"])
    chat = httpx.post(url + "/v1/chat/completions", json={**CHAT, "model": "gpt-4o-mini"}, headers=key)
    assert chat.status_code == 403
    # inside the tenant's allow-list only, and in the future only
    outside = httpx.post(
        url + "/admin/keys", json={"tenant": "globex", "id": "x1", "models": ["gpt-*"]}, headers=op
    )
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "models"
    past = httpx.post(
        url + "/admin/keys", json={"tenant": "acme", "id": "x2", "expires_at": "2020-01-01"}, headers=op
    )
    assert past.status_code == 400 and past.json()["error"]["param"] == "expires_at"
    soon = httpx.post(
        url + "/admin/keys", json={"tenant": "acme", "id": "x3", "expires_at": time.time() + 1.5}, headers=op
    )
    assert soon.status_code == 201
    soon_key = bearer(soon.json()["secret"])
    deadline = time.monotonic() + 10
    while httpx.get(url + "/v1/models", headers=soon_key).status_code == 200:  # until it expires
        assert time.monotonic() < deadline
        time.sleep(0.2)
    r = httpx.get(url + "/v1/models", headers=soon_key)
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_an_expired_key_gets_a_clear_401(env: Env) -> None:
    r = httpx.post(env.gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(KEYS["acme-expired"]))
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "This API key expired at 2020-01-01T00:00:00+00:00."


# -- the audit log -----------------------------------------------------------------------------------


def _audit(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.audit"]


def test_admin_calls_are_audited_without_secrets(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    url = env.gw.url
    made = httpx.post(url + "/admin/keys", json={"id": "audited-1"}, headers=bearer(KEYS["acme-admin"]))
    secret = made.json()["secret"]
    httpx.delete(url + "/admin/keys/audited-1", headers={**bearer(ADMIN), "x-request-id": "req-from-ops-1"})
    httpx.post(url + "/admin/reload", headers=bearer(KEYS["acme-user"]))
    lines = _audit(caplog)
    assert [(line["audit"], line["who"], line["role"], line["status"]) for line in lines] == [
        ("key.create", "acme/acme-admin", "admin", 201),
        ("key.delete", "operator", "operator", 200),
        ("config.reload", "acme/acme-user", "user", 403),
    ]
    assert lines[0]["target"] == {"tenant": "acme", "key": "audited-1"}
    assert lines[1]["target"] == {"tenant": "acme", "key": "audited-1"}
    assert lines[1]["request_id"] == "req-from-ops-1"
    assert all(line["time"] and line["request_id"] for line in lines)
    text = caplog.text
    assert secret not in text and ADMIN not in text and KEYS["acme-admin"] not in text


# -- delegation tokens -------------------------------------------------------------------------------


def _metric(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _spent(gw: Gateway, **params: str) -> float:
    r = httpx.get(gw.url + "/admin/spend", params=params, headers=bearer(ADMIN))
    return float(r.json()["spent_usd"])


def test_a_delegated_call_is_the_callers_in_spend_metrics_and_log(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The sidecar calls back with the token it was handed: the call is acme-user's."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = env.gw
    before_key, before_tenant = _spent(gw, tenant="acme", key="acme-user"), _spent(gw, tenant="acme")
    before_metric = _metric(gw, "gateway_requests_total", tenant="acme")
    r = httpx.post(
        gw.url + "/v1/plugins/rag/delegate", json=CHAT, headers=bearer(KEYS["acme-user"]), timeout=20
    )
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"
    parent = r.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while _spent(gw, tenant="acme", key="acme-user") == before_key:  # settlement runs after the answer
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _spent(gw, tenant="acme", key="acme-user") > before_key
    assert _spent(gw, tenant="acme") > before_tenant
    assert _spent(gw, tenant="globex") == 0
    assert _metric(gw, "gateway_requests_total", tenant="acme") == before_metric + 1
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "gateway.access"]
    delegated = [line for line in lines if line.get("parent_request_id")]
    assert len(delegated) == 1
    assert delegated[0]["parent_request_id"] == parent
    assert (delegated[0]["tenant"], delegated[0]["key_id"]) == ("acme", "acme-user")


def test_tokens_refused(env: Env) -> None:
    url = env.gw.url
    chat = url + "/v1/chat/completions"
    forged_payload = delegation.mint(
        b"z" * 40, delegation.Delegation("acme", "acme-user", "p", int(time.time() + 60))
    )
    tampered = env.token().rsplit(".", 1)[0] + "." + forged_payload.rsplit(".", 1)[1]
    refused = {
        "forged": forged_payload,
        "tampered": tampered,
        "expired": env.token(expires_in=-1),
        "malformed": "gwd1.not-a-token",
        "unknown key": env.token(key_id="nobody"),
        "key of another tenant": env.token(key_id="globex-user", tenant="acme"),
        "expired key": env.token(key_id="acme-expired"),
    }
    for why, token in refused.items():
        r = httpx.post(chat, json=CHAT, headers=bearer(token))
        assert r.status_code == 401, why
        assert r.json()["error"] == {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }, why
    good = bearer(env.token())
    assert httpx.post(chat, json=CHAT, headers=good).status_code == 200
    for method, path in (
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/spend?tenant=acme"),
    ):
        r = httpx.request(
            method, url + path, headers=good, json={"id": "via-token"} if method == "POST" else None
        )
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", path
    # a token never mints another: plugin APIs (which hand out tokens) refuse it
    assert httpx.get(url + "/v1/plugins/rag/echo/x", headers=good).status_code == 403


def test_a_token_dies_with_its_key(env: Env) -> None:
    url, op = env.gw.url, bearer(ADMIN)
    assert (
        httpx.post(url + "/admin/keys", json={"tenant": "acme", "id": "short-lived"}, headers=op).status_code
        == 201
    )
    token = bearer(env.token(key_id="short-lived"))
    assert httpx.post(url + "/v1/chat/completions", json=CHAT, headers=token).status_code == 200
    assert httpx.delete(url + "/admin/keys/short-lived", headers=op).status_code == 200
    assert httpx.post(url + "/v1/chat/completions", json=CHAT, headers=token).status_code == 401


def test_rotation_the_first_secret_signs_every_one_verifies(gateway_factory: GatewayFactory) -> None:
    new, old, retired = b"n" * 40, b"o" * 40, b"r" * 40
    gw = gateway_factory(budgets=BUDGETS, delegation_secret=f"{new.decode()},{old.decode()}")
    assert gw.app.state.gateway.shared.delegation_secret == new  # type: ignore[attr-defined]
    d = delegation.Delegation("acme", "acme-user", "req_p", int(time.time() + 60))
    chat = gw.url + "/v1/chat/completions"
    for secret, status in ((new, 200), (old, 200), (retired, 401)):
        r = httpx.post(chat, json=CHAT, headers=bearer(delegation.mint(secret, d)))
        assert r.status_code == status, secret


def test_secrets_parse() -> None:
    assert delegation.parse_secrets(None) == ()
    assert delegation.parse_secrets(" " + "a" * 32 + " , " + "b" * 33) == (b"a" * 32, b"b" * 33)
    with pytest.raises(ValueError, match="#2 is shorter than 32"):
        delegation.parse_secrets("a" * 32 + ",short")
