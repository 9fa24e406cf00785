"""``python -m gateway check | explain | keys new`` as ops run them."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_check_passes_on_shipped_files() -> None:
    result = run("check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_prints_every_error_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(
        "providers: {p: {type: mock}}\n"
        "models: {m: {provider: p}}\n"
        "routes:\n"
        "  - {name: a, match: {task: x}, targets: [{model: m}]}\n"
        "  - {name: b, match: {task: y}, targets: [{model: gpt-5}]}\n"
    )
    (tmp_path / "budgets.yaml").write_text(
        "tenants:\n  acme:\n    keys:\n      - {id: k, sha256: '" + "a" * 64 + "', role: boss}\n"
    )
    result = run(
        "check", "--routes", str(tmp_path / "routes.yaml"), "--budgets", str(tmp_path / "budgets.yaml")
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "routes.yaml: routes[1].targets[0].model: unknown model 'gpt-5'" in lines
    assert "budgets.yaml: tenants.acme.keys[0].role: must be one of user, admin, reviewer" in lines


def test_check_bounds_budget_amounts_and_ids(tmp_path: Path) -> None:
    """A budget nano-USD cannot carry exactly (1e308: every request of the tenant failed) and an id
    no URL path can name are refused by ``check``, as the admin API refuses them."""
    (tmp_path / "routes.yaml").write_text("providers: {p: {type: mock}}\nmodels: {m: {provider: p}}\n")
    (tmp_path / "budgets.yaml").write_text(
        "tenants:\n  acme:\n    budget: {usd: 1.0e+308, period: monthly}\n    keys:\n"
        "      - {id: " + "k" * 300 + ", sha256: '" + "a" * 64 + "'}\n"
    )
    result = run(
        "check", "--routes", str(tmp_path / "routes.yaml"), "--budgets", str(tmp_path / "budgets.yaml")
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "budgets.yaml: tenants.acme.budget.usd: must be between 0 and 1000000" in lines
    assert "budgets.yaml: tenants.acme.keys[0].id: key id is 300 characters long; the most is 128" in lines


def test_explain_prints_route_and_plan() -> None:
    result = run("explain", "--model", "anything", "--task", "summarize", "--key-id", "demo-key")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "route: summarize" in out
    assert out.index("gpt-4o-mini") < out.index("claude-haiku") < out.index("echo")
    assert "fallback" in out


def test_keys_new_prints_secret_once_and_matching_hash() -> None:
    result = run("keys", "new", "--tenant", "acme", "--id", "acme-ci")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    secret = lines[0].removeprefix("secret: ")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert f'sha256: "{digest}"' in result.stdout
    assert result.stdout.count(secret) == 1


def test_serve_refuses_several_workers_without_redis() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "GATEWAY_REDIS_URL" in result.stderr


def test_serve_refuses_a_redis_url_it_cannot_use() -> None:
    """Told at start-up, naming the variable, without the password: not a traceback from a worker."""
    for name, url, says in [
        ("GATEWAY_REDIS_URL", "redis+sentinel://:hunter2@s1:26379", "name the primary"),
        ("GATEWAY_CACHE_REDIS_URL", "memcached://cache:11211", "unsupported redis URL"),
    ]:
        env = {**os.environ, "GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0", name: url}
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--port", "1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert f"error: {name}: " in result.stderr and says in result.stderr
        assert "hunter2" not in result.stderr


def test_serve_refuses_an_admin_port_equal_to_the_main_one() -> None:
    """``--admin-port`` is read (and checked) like ``GATEWAY_ADMIN_PORT``."""
    result = run("serve", "--port", "18080", "--admin-port", "18080")
    assert result.returncode == 1
    assert "GATEWAY_ADMIN_PORT must differ from the main port" in result.stderr


def test_explain_exits_1_when_the_plan_is_refused(tmp_path: Path) -> None:
    unknown = run("explain", "--model", "no-such-model")
    assert "404 model_not_found" in unknown.stdout
    assert unknown.returncode == 1
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(
        "tenants:\n  acme:\n    models: ['nothing-*']\n    keys:\n"
        "      - {id: k, sha256: '" + "a" * 64 + "'}\n"
    )
    denied = run("explain", "--model", "gpt-4o-mini", "--key-id", "k", "--budgets", str(budgets))
    assert "result: 403" in denied.stdout, denied.stdout + denied.stderr
    assert denied.returncode == 1
    assert run("explain", "--model", "gpt-4o-mini").returncode == 0


def test_keys_new_warns_when_the_tenant_is_not_in_budgets(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("tenants:\n  acme:\n    keys: []\n")
    known = run("keys", "new", "--tenant", "acme", "--id", "a1", "--budgets", str(budgets))
    assert known.returncode == 0
    assert known.stderr == ""
    unknown = run("keys", "new", "--tenant", "acmee", "--id", "a2", "--budgets", str(budgets))
    assert unknown.returncode == 0  # a warning: the tenant may be added in the same edit
    assert "warning: tenant 'acmee' is not in" in unknown.stderr
    assert "secret: sk-gw-" in unknown.stdout
    env_only = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "new", "--tenant", "nobody", "--id", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GATEWAY_BUDGETS": str(budgets)},
    )
    assert "tenant 'nobody' is not in" in env_only.stderr
