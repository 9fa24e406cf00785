"""Redis answering with an error reply is "store unavailable", never an HTTP 500 (issue 13, finding 4).

Each reply is produced by a real redis-server: MOVED (a plain URL naming one node of a 3-master cluster,
for a tenant whose slot another node serves), CLUSTERDOWN (a cluster node that serves no slot), BUSY
(a Lua script that runs past the busy threshold) and LOADING (a server loading a large dataset). The
gateway runs in-process, served by uvicorn; under ``store_failure: closed`` a request gets 503
``store_unavailable``, under ``open`` it is served by the local fallback store (and a cached route's
lookup counts as a miss) — under neither a 500.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from conftest import KEY_ACME, LiveServer, sha
from redis_server import RedisServer
from redis_topologies import Cluster, Process, cluster_port, wait_until

from gateway.app import create_app
from gateway.settings import Settings

pytestmark = pytest.mark.redis

BUDGETS = f"""
tenants:
  acme:
    budget: {{usd: 100, period: daily}}
    limits: {{rpm: 100000}}
    keys:
      - {{id: acme-1, sha256: "{sha(KEY_ACME)}", role: user}}
"""
AUTH = {"authorization": f"Bearer {KEY_ACME}"}


def routes(policy: str) -> str:
    return f"""
providers:
  local: {{type: mock}}
defaults: {{store_failure: {policy}}}
models:
  mock-chat: {{provider: local, price: {{input_per_mtok: 2.0, output_per_mtok: 4.0}}}}
routes:
  - name: cached
    match: {{model: cached}}
    targets: [{{model: mock-chat}}]
    cache: {{ttl_s: 300}}
"""


def statuses(tmp_path: Path, redis_url: str, policy: str) -> list[tuple[int, str]]:
    """(status, error code) of a plain and a cached chat request through a gateway on ``redis_url``."""
    (tmp_path / "routes.yaml").write_text(routes(policy))
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    settings = Settings(
        routes_path=str(tmp_path / "routes.yaml"),
        budgets_path=str(tmp_path / "budgets.yaml"),
        redis_url=redis_url,
    )
    server = LiveServer(create_app(settings)).start()
    try:
        out = []
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
            for model in ("mock-chat", "cached"):
                body = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
                r = client.post("/v1/chat/completions", json=body)
                code = r.json().get("error", {}).get("code", "") if r.status_code != 200 else ""
                out.append((r.status_code, code))
        return out
    finally:
        server.stop()


def expected(policy: str) -> list[tuple[int, str]]:
    if policy == "closed":
        return [(503, "store_unavailable")] * 2
    return [(200, "")] * 2


# -- the servers that answer with each error ------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield made.start()
    finally:
        made.stop()


def moved_url(cluster: Cluster) -> str:
    """A plain URL of a node that does not serve acme's slot: every acme key gets MOVED."""
    owner = cluster.owner(cluster.slot_of("acme"))
    other = next(n for n in cluster.nodes if n is not owner)
    with other.client() as c, pytest.raises(redis.exceptions.MovedError):
        c.get("gw:{acme}:probe")
    return f"redis://127.0.0.1:{other.port}/0"


@pytest.fixture
def slotless_node(tmp_path: Path) -> Iterator[str]:
    """A cluster-enabled server that serves no slot: every keyed command gets CLUSTERDOWN."""
    port = cluster_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    node = Process(
        port, [*args, "--cluster-enabled", "yes", "--cluster-config-file", "n.conf"], tmp_path / "n.log"
    )
    try:
        node.wait_ping()
        with node.client() as c, pytest.raises(redis.ResponseError, match="Hash slot not served"):
            c.get("gw:{acme}:probe")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        node.stop()


@pytest.fixture
def busy_server() -> Iterator[str]:
    """A server running a Lua script that never ends: after the busy threshold (50 ms) every other
    client gets BUSY; SCRIPT KILL ends it at teardown."""
    server = RedisServer("--busy-reply-threshold", "50").start()
    blocker = redis.Redis(port=server.port)

    def run_forever() -> None:
        with pytest.raises(redis.ResponseError, match="killed"):
            blocker.eval("while true do end", 0)

    running = threading.Thread(target=run_forever, daemon=True)
    running.start()
    probe = redis.Redis(port=server.port, socket_timeout=2)
    try:
        wait_until(lambda: _refuses(probe, "BUSY"), 10, "the server to answer BUSY")
        yield server.url
    finally:
        probe.script_kill()
        running.join(timeout=10)
        probe.close()
        blocker.close()
        server.stop()


@pytest.fixture
def loading_server(tmp_path: Path) -> Iterator[tuple[str, Callable[[], bool]]]:
    """A server loading a 100,000-key dataset 100 µs per key (~10 s), answering LOADING meanwhile."""
    seed = RedisServer("--dir", str(tmp_path), "--enable-debug-command", "yes").start()
    with redis.Redis(port=seed.port) as c:
        c.execute_command("DEBUG", "POPULATE", 100_000)
        c.save()
    seed.stop()
    port = cluster_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    args += ["--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024"]
    node = Process(port, args, tmp_path / "loading.log")
    probe = redis.Redis(port=port, socket_timeout=2)
    try:
        wait_until(lambda: _refuses(probe, "LOADING"), 10, "the server to answer LOADING")
        yield f"redis://127.0.0.1:{port}/0", lambda: _refuses(probe, "LOADING")
    finally:
        probe.close()
        node.stop()


def _refuses(client: redis.Redis, code: str) -> bool:
    try:
        client.get("gw:{acme}:probe")
    except redis.RedisError as exc:
        return code in f"{type(exc).__name__} {exc}".upper() or (code == "LOADING" and "loading" in str(exc))
    return False


# -- the tests ------------------------------------------------------------------------------------------

POLICIES = ["closed", "open"]


@pytest.mark.parametrize("policy", POLICIES)
def test_moved_from_a_cluster_node(tmp_path: Path, cluster: Cluster, policy: str) -> None:
    assert statuses(tmp_path, moved_url(cluster), policy) == expected(policy)


@pytest.mark.parametrize("policy", POLICIES)
def test_clusterdown_from_a_node_without_slots(tmp_path: Path, slotless_node: str, policy: str) -> None:
    assert statuses(tmp_path, slotless_node, policy) == expected(policy)


@pytest.mark.parametrize("policy", POLICIES)
def test_busy_while_a_script_runs(tmp_path: Path, busy_server: str, policy: str) -> None:
    assert statuses(tmp_path, busy_server, policy) == expected(policy)


@pytest.mark.parametrize("policy", POLICIES)
def test_loading_while_a_dataset_loads(
    tmp_path: Path, loading_server: tuple[str, Callable[[], bool]], policy: str
) -> None:
    url, still_loading = loading_server
    assert statuses(tmp_path, url, policy) == expected(policy)
    assert still_loading(), "the dataset finished loading before the requests were made"
