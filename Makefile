# The two commands: `make run` and `make test`. Both set everything up on a fresh machine.
# The interpreter the venv is built from (override: make PYTHON=/path/to/python3.11; then make clean).
# Debian 12's python3.11 runs pure-Python code about 25 % faster than a default source build such as
# pyenv's (libpython linked into the executable, optimized build), which makes the gateway about 15 %
# cheaper per request (bench/RESULTS.md); it is used when it can make a venv, else python3 on PATH.
SYSTEM_PYTHON := /usr/bin/python3.11
PYTHON ?= $(shell $(SYSTEM_PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 && echo $(SYSTEM_PYTHON) || echo python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run run-plugins test replicas install redis chromium lint typecheck bench bench-quick bench-rag check clean

# The venv is built from requirements-dev.lock: the image's runtime pins (requirements.lock) plus the
# dev tools, every file checked against its hash, so the tests run on exactly what the image ships.
# Then the project itself, editable, with nothing else resolved (--no-deps).
$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m gateway serve --host $${GATEWAY_HOST:-127.0.0.1} --port $${GATEWAY_PORT:-8080} \
		--routes $${GATEWAY_ROUTES:-routes.yaml} --budgets $${GATEWAY_BUDGETS:-budgets.yaml}

# The gateway with every shipped sidecar (plugins/: guard today) on loopback, each with a generated token,
# and the example routes file that uses them (routes.plugins.yaml); Ctrl-C stops them all.
run-plugins: $(STAMP)
	$(PY) -m plugins.launch

check: $(STAMP)
	$(PY) -m gateway check

# Tests need a real redis-server binary; the suite starts its own on a free loopback port.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server with apt"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# The reviewer page's tests drive Debian's chromium through Playwright (its own browser download cannot
# run offline); installed with apt like redis-server.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium with apt"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) redis chromium
	$(PY) -m pytest -q

# The multi-replica proof: gateway processes on loopback sharing one redis-server behave as one gateway
# (limits, budgets, reservations, key revocation, circuit breakers, response cache), figures printed.
replicas: $(STAMP) redis
	$(PY) -m pytest -v -s -m slow tests/test_replicas.py tests/test_replicas_shared.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The whole pipeline (Redis admission, settlement and response cache) needs redis-server; see bench/README.md.
# Then what a plugin's pre hook to a loopback sidecar adds (bench/plugins.py).
bench: $(STAMP) redis
	$(PY) -m bench.run
	$(PY) -m bench.plugins

bench-quick: $(STAMP) redis
	$(PY) -m bench.run --quick

# The RAG sidecar: retrieval quality on its shipped evaluation set (recall@5 and MRR of hybrid, vector-only
# and keyword-only search; how often answer_unknown fires), then search speed at 10k and 100k synthetic
# chunks and ingestion speed (plugins/rag/EVAL.md). Each starts its own embedded Postgres; the evaluation
# embeds through a gateway it starts on loopback (mock provider). A few minutes: the 100k HNSW build.
bench-rag: $(STAMP)
	$(PY) -m plugins.rag.eval
	$(PY) -m plugins.rag.bench_search

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Deployment artefacts (Dockerfile, deploy/compose.yaml, deploy/k8s). kubernetes-validate bundles the
# Kubernetes JSON schemas, so the manifests are validated offline, without a cluster.
.PHONY: lock validate-deploy

# Both locks, with the hashes of every file of each pinned release (any platform), by pip-compile: the
# image's (runtime only) and the dev venv's (the same runtime pins, as constraints, plus dev tools and
# otel). Pins already in the files are kept; `make lock UPGRADE=1` moves everything to the newest allowed.
LOCK_FLAGS = --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	--no-emit-find-links $(if $(UPGRADE),--upgrade)
lock: export CUSTOM_COMPILE_COMMAND = make lock
lock: $(STAMP)
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) -o requirements.lock pyproject.toml
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) --extra dev --extra otel -c requirements.lock \
		-o requirements-dev.lock pyproject.toml

validate-deploy: $(STAMP)
	$(PY) -m pip install --quiet 'kubernetes-validate>=1.29'
	$(VENV)/bin/kubernetes-validate --strict --quiet -k 1.29.0 $(filter-out %/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))
	$(VENV)/bin/kubernetes-validate --strict --quiet -k 1.37.0 $(filter-out %/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))
	$(PY) -m pytest -q tests/test_deploy.py
