"""`make run` without Redis: spend and run-time keys survive a graceful restart and a kill -9.

Real processes on loopback: ``python -m gateway serve`` with the shipped routes.yaml and budgets.yaml
(copied to tmp_path, the tenant's budget made ``total`` so that no day boundary moves it), no
``GATEWAY_REDIS_URL`` and no ``GATEWAY_STATE_FILE`` (the default file beside budgets.yaml), driven by the
openai SDK and the admin API. Each restart is a new process on the same files.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from conftest import free_port
from replicas import ADMIN_KEY, Replica

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEMO_KEY = "sk-gateway-demo"  # the shipped budgets.yaml's demo key
FLUSH_INTERVAL_S = 1.0  # gateway/store/durable.py


@pytest.fixture
def configs(tmp_path: Path) -> tuple[Path, Path]:
    routes, budgets = tmp_path / "routes.yaml", tmp_path / "budgets.yaml"
    shutil.copy(ROOT / "routes.yaml", routes)
    text = (ROOT / "budgets.yaml").read_text()
    assert "budget: {usd: 10, period: daily}" in text
    budgets.write_text(text.replace("budget: {usd: 10, period: daily}", "budget: {usd: 10, period: total}"))
    return routes, budgets


class Run:
    """One gateway process: start it, spend through it, read the admin API."""

    def __init__(self, routes: Path, budgets: Path, log: Path) -> None:
        self.replica = Replica(routes, budgets, "", log)  # "" = no Redis: the in-process store
        self.replica.wait_ready()
        self.admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        self.spent_probing = 0

    def chat(self, key: str, n: int) -> int:
        """``n`` chat completions with ``key``; the sum of the costs the gateway reported, in nano-USD
        rounded up as the store records each one."""
        client = openai.OpenAI(base_url=self.replica.url + "/v1", api_key=key, max_retries=0)
        total = 0
        for i in range(n):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"count to {i}"}], max_tokens=32
            )
            assert raw.parse().choices[0].message.content
            total += math.ceil(Decimal(raw.headers["x-gateway-cost-usd"]) * 1_000_000_000)
        return total

    def spend(self, key: str | None = None) -> dict[str, object]:
        params = {"tenant": "demo", **({"key": key} if key else {})}
        r = httpx.get(self.replica.url + "/admin/spend", params=params, headers=self.admin, timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body

    def new_key(self, key_id: str, **extra: object) -> str:
        body = {"tenant": "demo", "id": key_id, **extra}
        r = httpx.post(self.replica.url + "/admin/keys", json=body, headers=self.admin, timeout=10)
        assert r.status_code == 201, r.text
        secret: str = r.json()["secret"]
        return secret

    def delete_key(self, key_id: str) -> None:
        r = httpx.delete(f"{self.replica.url}/admin/keys/{key_id}", headers=self.admin, timeout=10)
        assert r.status_code == 200, r.text

    def refused(self, key: str) -> bool:
        """Whether ``key`` is refused (401); one request, whose cost ``spent_probing`` adds up."""
        try:
            self.spent_probing += self.chat(key, 1)
        except openai.AuthenticationError:
            return True
        return False

    def stop(self) -> int:
        self.replica.proc.send_signal(signal.SIGTERM)
        return self.replica.proc.wait(timeout=40)

    def kill(self) -> None:
        self.replica.proc.send_signal(signal.SIGKILL)
        self.replica.proc.wait(timeout=10)


def nano(usd: object) -> int:
    assert isinstance(usd, float | int)
    return round(Decimal(str(usd)) * 1_000_000_000)


def written_after(state: Path, tenant_nano: int, since: float) -> float:
    """Seconds from ``since`` until the state file holds ``tenant_nano`` as the tenant's spend (a figure
    for the report; polled, bounded)."""
    deadline = since + 10
    while time.monotonic() < deadline:
        db = sqlite3.connect(state)
        row = db.execute("SELECT state FROM tenants WHERE name = 'demo'").fetchone()
        db.close()
        if row and ["t", 0, tenant_nano] in orjson.loads(row[0])["spent"]:
            return time.monotonic() - since
        time.sleep(0.01)
    raise AssertionError("the spend never reached the state file")


def test_spend_and_runtime_keys_survive_restart_and_kill_9(
    tmp_path: Path, configs: tuple[Path, Path]
) -> None:
    routes, budgets = configs
    state = budgets.parent / ".gateway" / "state.sqlite3"
    runs = iter(range(10))

    def start() -> Run:
        return Run(routes, budgets, tmp_path / f"gateway-{next(runs)}.log")

    # -- first life: spend with the file key and with a run-time key; a second run-time key deleted
    gw = start()
    demo_cost = gw.chat(DEMO_KEY, 5)
    kept = gw.new_key("rt-kept", budget={"usd": 1, "period": "total"})
    gone = gw.new_key("rt-gone")
    kept_cost = gw.chat(kept, 3)
    gone_cost = gw.chat(gone, 1)
    gw.delete_key("rt-gone")
    tenant_before, key_before = gw.spend(), gw.spend("rt-kept")
    assert gw.refused(gone)
    assert nano(tenant_before["spent_usd"]) == demo_cost + kept_cost + gone_cost > 0
    print(f"\nfirst life: tenant spent {tenant_before['spent_usd']}, rt-kept spent {key_before['spent_usd']}")

    # -- (a) graceful stop, restart
    assert gw.stop() == 0
    gw = start()
    tenant_after = gw.spend()
    print(f"after SIGTERM + restart: tenant spent {tenant_after['spent_usd']}")
    assert tenant_after == tenant_before
    key_after = gw.spend("rt-kept")
    print(f"after SIGTERM + restart: rt-kept spent {key_after['spent_usd']}")
    assert key_after == key_before
    assert state.exists(), "the default state file, beside budgets.yaml"
    assert nano(key_after["spent_usd"]) == kept_cost > 0
    assert nano(tenant_after["reserved_usd"]) == 0
    assert not gw.refused(kept), "the run-time key still works"
    assert gw.refused(gone), "a deleted key stays deleted"

    # -- (b) more spend, wait past the flush interval, kill -9, restart
    more_demo, more_kept = gw.chat(DEMO_KEY, 4), gw.chat(kept, 2)
    answered = time.monotonic()
    tenant_before, key_before = gw.spend(), gw.spend("rt-kept")
    probe = gw.spent_probing  # the request that showed rt-kept still works
    assert (
        nano(tenant_before["spent_usd"]) == demo_cost + kept_cost + gone_cost + more_demo + more_kept + probe
    )
    assert nano(key_before["spent_usd"]) == kept_cost + more_kept + probe
    lag = written_after(state, nano(tenant_before["spent_usd"]), answered)
    print(
        f"the last answer's spend reached the state file {lag:.2f} s after it (interval {FLUSH_INTERVAL_S} s)"
    )
    time.sleep(max(0.0, answered + 1.5 * FLUSH_INTERVAL_S - time.monotonic()))
    late = gw.new_key("rt-late")  # no wait: a key is in the file when the admin API answers
    gw.kill()
    gw = start()
    try:
        tenant_after, key_after = gw.spend(), gw.spend("rt-kept")
        print(
            f"after kill -9 + restart: tenant {tenant_after['spent_usd']}, rt-kept {key_after['spent_usd']}"
        )
        assert tenant_after == tenant_before
        assert key_after == key_before
        assert not gw.refused(kept)
        assert gw.refused(gone)
        listed = httpx.get(
            gw.replica.url + "/admin/keys", params={"tenant": "demo"}, headers=gw.admin, timeout=10
        )
        ids = [k["id"] for k in listed.json()["data"]]
        print(f"keys after kill -9: {ids}; client costs summed: {nano(tenant_after['spent_usd'])} nano-USD")
        assert ids == ["demo-key", "demo-reviewer", "rt-kept", "rt-late"]  # budgets.yaml, then run time
        assert not gw.refused(late)
    finally:
        assert gw.stop() == 0


def test_a_second_gateway_on_the_same_state_file_is_refused_in_one_line(
    tmp_path: Path, configs: tuple[Path, Path]
) -> None:
    routes, budgets = configs

    paths = ["--routes", str(routes), "--budgets", str(budgets)]

    def serve() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--port", str(free_port()), *paths],
            capture_output=True,
            text=True,
            timeout=30,
            env={k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        )

    gw = Run(routes, budgets, tmp_path / "first.log")
    try:
        second = serve()
    finally:
        assert gw.stop() == 0
    print(f"\nsecond gateway: exit {second.returncode}: {second.stderr.strip()}")
    assert second.returncode == 1
    assert "in use by another gateway process" in second.stderr
    assert "Traceback" not in second.stderr

    (budgets.parent / ".gateway" / "state.sqlite3").write_bytes(b"garbage " * 1000)
    corrupt = serve()
    print(f"corrupt file: exit {corrupt.returncode}: {corrupt.stderr.strip()}")
    assert corrupt.returncode == 1
    assert "not a readable gateway state file" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr
