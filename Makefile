# The two commands: `make run` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install redis lint typecheck bench bench-quick check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m gateway serve --host $${GATEWAY_HOST:-127.0.0.1} --port $${GATEWAY_PORT:-8080} \
		--routes $${GATEWAY_ROUTES:-routes.yaml} --budgets $${GATEWAY_BUDGETS:-budgets.yaml}

check: $(STAMP)
	$(PY) -m gateway check

# Tests need a real redis-server binary; the suite starts its own on a free loopback port.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server with apt"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

test: $(STAMP) redis
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
