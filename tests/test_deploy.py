"""The deployment artefacts: Dockerfile, requirements.lock, deploy/compose.yaml, deploy/k8s.

Nothing here needs Docker or a cluster. Kubernetes manifests are validated against the JSON schemas
bundled in ``kubernetes-validate`` (offline) when it is installed (``make validate-deploy``).

The locks are written by ``make lock`` (pip-compile, with hashes): requirements.lock, what the image
ships, and requirements-dev.lock, the same runtime pins plus the dev tools, which ``make install``
builds the venv from; so the tests run on exactly the versions the image ships.
"""

from __future__ import annotations

import copy
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_VERSIONS = ["1.29.0", "1.37.0"]  # the oldest version we claim to support, and the newest bundled


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def runtime_closure(markers: dict[str, str] | None = None) -> dict[str, str]:
    """Name → installed version of the runtime dependencies and everything they need, from the venv.

    ``markers`` collects, for a dependency required only on some Python versions (``async-timeout``
    below CPython 3.11.3, say), that requirement's marker, so the lock can say so.
    """
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[Requirement, str | None]] = [(Requirement(d), None) for d in _runtime_dependencies()]
    conditional: dict[str, str | None] = {}
    while todo:
        req, marker = todo.pop()
        name = _norm(req.name)
        conditional[name] = marker if conditional.get(name, marker) is not None else None
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)
        found[name] = dist.version
        envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                text = str(sub.marker) if sub.marker is not None else ""
                about_python = "python_version" in text or "python_full_version" in text
                about_python = about_python and "extra" not in text
                todo.append((sub, text if about_python else marker))
    if markers is not None:
        markers.update({name: m for name, m in conditional.items() if m is not None})
    return found


def _lock(name: str = "requirements.lock") -> dict[str, str]:
    """The pins that apply to this interpreter (pip-compile's format: ``x==1 \\``, then its hashes)."""
    return {n: v for n, (v, _) in _pins(name).items()}


def _pins(name: str) -> dict[str, tuple[str, int]]:
    """Name → (version, how many hashes) of a lock's pins that apply to this interpreter."""
    pins: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip().removesuffix("\\").strip()
        if not line:
            continue
        if line.startswith("--hash=sha256:"):
            assert current is not None, f"{name}: a hash before any pin: {raw!r}"
            if current in pins:
                version, hashes = pins[current]
                pins[current] = (version, hashes + 1)
            continue
        assert not line.startswith("-"), f"{name}: an option where a pin should be: {raw!r}"
        pin, _, marker = (part.strip() for part in line.partition(";"))
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", pin)
        assert m, f"{name}: not an exact pin: {raw!r}"
        current = _norm(m.group(1))
        if not marker or Marker(marker).evaluate():
            pins[current] = (m.group(2), 0)
    return pins


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s_resources() -> list[tuple[str, dict]]:
    return [
        (f"{p.name}:{d['kind']}/{d['metadata']['name']}", d)
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for d in _docs(p)
    ]


def _one(kind: str) -> dict:
    found = [d for _, d in _k8s_resources() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _gateway_deployment() -> dict:
    found = [
        d for _, d in _k8s_resources() if d["kind"] == "Deployment" and d["metadata"]["name"] == "llm-gateway"
    ]
    assert len(found) == 1
    return found[0]


# --- requirements.lock ---------------------------------------------------------------------------


def test_lock_pins_every_runtime_dependency() -> None:
    pins = _lock()
    for dep in _runtime_dependencies():
        req = Requirement(dep)
        name = _norm(req.name)
        assert name in pins, f"{req.name} is a runtime dependency but not pinned in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {dep}"


def test_lock_covers_the_resolved_closure_and_no_dev_tools() -> None:
    pins = _lock()
    closure = runtime_closure()
    missing = sorted(set(closure) - set(pins))
    assert not missing, f"not pinned in requirements.lock (run `make lock`): {missing}"
    for dev in ("pytest", "ruff", "mypy", "openai", "anthropic", "kubernetes-validate"):
        assert dev not in pins, f"{dev} is a dev tool, not a runtime dependency"
    extra = sorted(set(pins) - set(closure))
    assert not extra, f"pinned but not needed at run time (run `make lock`): {extra}"


def test_the_venv_runs_exactly_the_versions_the_image_ships() -> None:
    """The suite must test what ships: every runtime dependency the venv resolves to has the version
    requirements.lock pins (``make install`` builds the venv from the locks)."""
    pins = _lock()
    differ = {
        name: f"venv {version}, image {pins[name]}"
        for name, version in runtime_closure().items()
        if name in pins and pins[name] != version
    }
    assert not differ, f"the tests would not run on what the image ships (run `make install`): {differ}"


def test_the_dev_lock_pins_the_runtime_as_the_image_lock_does_and_every_pin_has_hashes() -> None:
    image, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    for name, (version, _) in image.items():
        assert name in dev and dev[name][0] == version, f"{name}: dev lock {dev.get(name)}, image {version}"
    for lock, pins in (("requirements.lock", image), ("requirements-dev.lock", dev)):
        unhashed = sorted(n for n, (_, hashes) in pins.items() if hashes == 0)
        assert not unhashed, f"{lock}: pins without hashes: {unhashed}"
    for tool in ("pytest", "ruff", "mypy", "openai", "pip-tools"):
        assert tool in dev, f"{tool} is not pinned in requirements-dev.lock"


def test_declared_dependencies_are_the_ones_used() -> None:
    """Direct imports are declared; declared dev tools are used (pytest-httpx was not)."""
    declared = {_norm(Requirement(d).name) for d in _runtime_dependencies()}
    for imported in ("httptools", "uvloop", "redis", "uvicorn", "hiredis"):
        assert imported in declared, f"{imported} is imported by gateway/ but not declared"
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert not [d for d in dev if Requirement(d).name == "pytest-httpx"]
    uvicorn = next(Requirement(d) for d in _runtime_dependencies() if Requirement(d).name == "uvicorn")
    # gateway/server.py subclasses a private uvicorn class: a release the suite never ran on is refused
    assert uvicorn.specifier.contains(_lock()["uvicorn"]) and not uvicorn.specifier.contains("1.0")


# --- Dockerfile ------------------------------------------------------------------------------------


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into build stages."""
    text = (ROOT / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    stages: list[list[str]] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck() -> None:
    stages = _stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    text = (ROOT / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    final = stages[-1]
    final_text = "\n".join(final)
    users = [ln.split(None, 1)[1] for ln in final if ln.upper().startswith("USER ")]
    assert users, "the final stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    health = [ln for ln in final if ln.upper().startswith("HEALTHCHECK ")]
    assert health and "/healthz" in health[0] and "urllib" in health[0]
    assert re.search(r"^EXPOSE 8080\b", final_text, re.M)
    assert re.search(r"GATEWAY_HOST=0\.0\.0\.0", final_text)
    assert re.search(r"TIKTOKEN_CACHE_DIR=/opt/tiktoken", final_text)
    assert "prepare_encodings('/opt/tiktoken')" in final_text
    cmd = [ln for ln in final if ln.upper().startswith("CMD ")]
    assert cmd and cmd[-1] == 'CMD ["python", "-m", "gateway", "serve"]'
    # no build tools in the image that ships
    for bad in ("build-essential", "gcc", "g++", "python3-dev", "apt-get install"):
        assert bad not in final_text, f"{bad!r} in the final stage"
    assert "requirements.lock" in "\n".join(stages[0])
    assert "--no-index" in final_text, "the final stage installs only the builder's wheels"
    # the tiktoken files are prepared as root, before switching user
    prep = next(i for i, ln in enumerate(final) if "prepare_encodings" in ln)
    user = max(i for i, ln in enumerate(final) if ln.upper().startswith("USER "))
    assert prep < user


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".venv", ".git", "tests"):
        assert entry in ignored
    for needed in ("gateway", "plugins", "pyproject.toml", "README.md", "requirements.lock"):
        assert needed not in ignored


# --- deploy/compose.yaml ---------------------------------------------------------------------------


def test_compose_runs_three_replicas_behind_a_load_balancer() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    gateways = sorted(n for n in services if re.fullmatch(r"gateway-\d+", n))
    assert gateways == ["gateway-1", "gateway-2", "gateway-3"]
    for name in ("lb", "redis", "prometheus", "grafana"):
        assert name in services, name
    for name in gateways:
        env = services[name]["environment"]
        assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
        assert "GATEWAY_ADMIN_KEY" in env
        mounts = services[name]["volumes"]
        assert any(m.endswith("/etc/gateway/routes.yaml:ro") for m in mounts)
        assert any(m.endswith("/etc/gateway/budgets.yaml:ro") for m in mounts)
        assert env["GATEWAY_ROUTES"] == "/etc/gateway/routes.yaml"
        assert env["GATEWAY_BUDGETS"] == "/etc/gateway/budgets.yaml"
    # every bind-mounted file or directory exists, relative to deploy/
    for svc in services.values():
        for mount in svc.get("volumes", []):
            src = mount.split(":", 1)[0]
            if src.startswith("."):
                assert (ROOT / "deploy" / src).resolve().exists(), mount
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    for name in gateways:
        assert f"server {name}:8080" in nginx
    assert "proxy_buffering off" in nginx  # streaming


def test_prometheus_scrapes_every_compose_replica() -> None:
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for sc in scrape["scrape_configs"] for st in sc["static_configs"] for t in st["targets"]}
    assert {"gateway-1:8080", "gateway-2:8080", "gateway-3:8080"} <= targets


# --- deploy/k8s ------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_deployment_probes_resources_and_shutdown() -> None:
    dep = _gateway_deployment()
    spec = dep["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["topologySpreadConstraints"]
    assert spec["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["lifecycle"]["preStop"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GATEWAY_REDIS_URL"].startswith("redis://")

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    config_mounts = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert config_mounts, "the ConfigMap must be mounted"
    for m in config_mounts:
        assert "subPath" not in m and "subPathExpr" not in m, "subPath mounts never update"
        assert env["GATEWAY_ROUTES"] == f"{m['mountPath']}/routes.yaml"
        assert env["GATEWAY_BUDGETS"] == f"{m['mountPath']}/budgets.yaml"
        assert "items" not in volumes[m["name"]]["configMap"]
    secret_refs = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    assert _one("Secret")["metadata"]["name"] in secret_refs


def test_hpa_pdb_and_redis() -> None:
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "llm-gateway"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == 70
    pdb = _one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    labels = _gateway_deployment()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    redis = _one("StatefulSet")
    assert redis["spec"]["replicas"] == 1
    svc_names = {d["metadata"]["name"] for _, d in _k8s_resources() if d["kind"] == "Service"}
    assert "redis" in svc_names


def test_configmap_passes_gateway_check(tmp_path: Path) -> None:
    from gateway.config.parse import check

    data = _one("ConfigMap")["data"]
    assert set(data) == {"routes.yaml", "budgets.yaml", "tools.yaml"}  # tools.yaml: the tools sidecar's
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    secret = _one("Secret")["stringData"]
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", data["routes.yaml"]))
    assert referenced, "provider keys come from the Secret as ${VAR}"
    assert referenced <= set(secret), f"routes.yaml references {referenced - set(secret)} not in the Secret"
    errors, warnings = check(tmp_path / "routes.yaml", tmp_path / "budgets.yaml", environ=secret)
    assert errors == [] and warnings == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schema(version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    resources = _k8s_resources()
    assert len(resources) >= 9
    for where, doc in resources:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{where} (k8s {version}): {exc.message} at {list(exc.path)}")


def test_the_schema_validation_catches_a_typo() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    bad = copy.deepcopy(_gateway_deployment())
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[0], strict=True)


# --- sidecar plugins (plugins/*) -------------------------------------------------------------------


def _shipped_sidecars() -> list[tuple[str, int]]:
    from plugins.launch import shipped

    found = shipped()
    assert found, "plugins/guard at least"
    return found


def test_the_image_carries_the_sidecars() -> None:
    copies = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.startswith("COPY ")]
    assert "COPY plugins ./plugins" in copies
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert "plugins*" in packages["include"], "the wheel the image installs must contain plugins/"


def test_every_shipped_sidecar_runs_in_the_gateway_pod() -> None:
    pod = _gateway_deployment()["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    sidecars = {c["name"]: c for c in pod.get("initContainers", [])}
    secret = _one("Secret")["stringData"]
    routes = yaml.safe_load(_one("ConfigMap")["data"]["routes.yaml"])
    for name, port in _shipped_sidecars():
        sidecar = sidecars[name]
        # A native sidecar: started (and probed) before the gateway, kept running, stopped after it.
        assert sidecar["restartPolicy"] == "Always"
        assert sidecar["image"] == gateway["image"]
        assert sidecar["args"] == [
            "python",
            "-m",
            f"plugins.{name}",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        assert sidecar["startupProbe"] and sidecar["livenessProbe"]
        assert f"127.0.0.1:{port}/healthz" in " ".join(sidecar["startupProbe"]["exec"]["command"])
        assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
        assert sidecar["resources"]["limits"]["memory"]
        env = {e["name"]: e for e in sidecar["env"]}
        token_ref = env["PLUGIN_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token_ref["name"] == _one("Secret")["metadata"]["name"]
        assert token_ref["key"] == f"{name.upper()}_TOKEN" and token_ref["key"] in secret
        assert env["GATEWAY_URL"]["value"] == "http://127.0.0.1:8080"
        if name == "tools":  # an MCP server, not a hook plugin: reached through mcp_servers, same token
            server = routes["mcp_servers"][name]
            assert server["url"] == f"http://127.0.0.1:{port}/mcp"
            assert server["headers"]["Authorization"] == "Bearer ${" + token_ref["key"] + "}"
            continue
        # The gateway reaches it on the pod's loopback, with the same token, on some route.
        plugin = routes["plugins"][name]
        assert plugin["url"] == f"http://127.0.0.1:{port}"
        assert plugin["token"] == "${" + token_ref["key"] + "}"
        assert any(name in entry for r in routes["routes"] for entry in r.get("plugins", []))
    # Several replicas share Redis: every one must sign delegation tokens with the same secret.
    assert len(secret["GATEWAY_DELEGATION_SECRET"]) >= 32


def test_compose_runs_every_shipped_sidecar(tmp_path: Path) -> None:
    from gateway.config.parse import check

    services = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    gateway = services["gateway-1"]
    mounted = next(m for m in gateway["volumes"] if m.endswith("/etc/gateway/routes.yaml:ro"))
    routes_file = (ROOT / "deploy" / mounted.split(":", 1)[0]).resolve()
    routes = yaml.safe_load(routes_file.read_text())
    for name, port in _shipped_sidecars():
        upper = name.upper()
        sidecar = services[name]
        assert sidecar["image"] == gateway["image"]
        assert sidecar["command"] == [
            "python",
            "-m",
            f"plugins.{name}",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
        ]
        assert f"127.0.0.1:{port}/healthz" in " ".join(sidecar["healthcheck"]["test"])
        assert sidecar["environment"]["PLUGIN_TOKEN"] == gateway["environment"][f"{upper}_TOKEN"]
        if name == "rag":  # rag's shared state is its database, not Redis
            assert sidecar["environment"]["RAG_DATABASE_URL"].startswith("postgresql://")
            assert sidecar["depends_on"]["rag-db"]["condition"] == "service_healthy"
            assert services["rag-db"]["image"].startswith("pgvector/")
        elif name == "tools":  # stateless; its shared input is the registry file it serves
            assert "REDIS_URL" not in sidecar["environment"]
        else:
            assert sidecar["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert gateway["environment"][f"{upper}_URL"] == f"http://{name}:{port}"
        assert gateway["depends_on"][name]["condition"] == "service_healthy"
        if name == "tools":  # an MCP server, not a hook plugin
            server = routes["mcp_servers"][name]
            assert server["headers"]["Authorization"] == "Bearer ${" + f"{upper}_TOKEN" + "}"
            assert server["url"].startswith("${" + f"{upper}_URL") and server["url"].endswith("/mcp")
            continue
        assert routes["plugins"][name]["token"] == "${" + f"{upper}_TOKEN" + "}"
        assert routes["plugins"][name]["url"].startswith("${" + f"{upper}_URL")
    # The routes file compose serves passes `gateway check` with compose's environment.
    env = {k: re.sub(r"\$\{\w+:-(.*)\}", r"\1", str(v)) for k, v in gateway["environment"].items()}
    assert len(env["GATEWAY_DELEGATION_SECRET"]) >= 32
    errors, warnings = check(routes_file, ROOT / "budgets.yaml", environ=env)
    assert errors == [] and warnings == []


def _registry_mount(container: dict, volumes: dict[str, dict]) -> tuple[str, dict]:
    """(the directory the container mounts TOOLS_REGISTRY's directory from, that volume)."""
    env = {e["name"]: e.get("value") for e in container["env"]}
    registry = Path(env["TOOLS_REGISTRY"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(registry.parent)]
    assert mount["readOnly"] is True and "subPath" not in mount
    return registry.name, volumes[mount["name"]]


def test_the_tools_sidecar_serves_the_configmaps_registry(tmp_path: Path) -> None:
    """The tools sidecar reads its registry from the ConfigMap's tools.yaml key, mounted read-only as a
    directory, and that file loads (every tool valid) with the sidecar's environment."""
    from plugins.tools.registry import load

    pod = _gateway_deployment()["spec"]["template"]["spec"]
    tools = next(c for c in pod["initContainers"] if c["name"] == "tools")
    filename, volume = _registry_mount(tools, {v["name"]: v for v in pod["volumes"]})
    configmap = _one("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    (item,) = volume["configMap"]["items"]
    assert item["path"] == filename
    (tmp_path / filename).write_text(configmap["data"][item["key"]])
    env = {e["name"]: e["value"] for e in tools["env"] if "value" in e}
    loaded = load(tmp_path / filename, env)
    assert loaded and all(t.url.startswith("http") for t in loaded)
