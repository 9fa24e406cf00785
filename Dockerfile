# syntax=docker/dockerfile:1
# The gateway image: `docker build -t llm-gateway .` then `docker run -p 8080:8080 llm-gateway`.
# Two stages: the builder turns the project and its locked dependencies (requirements.lock) into wheels,
# the final stage installs only those wheels; no compiler or build headers reach the runtime image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Only needed when a locked dependency has no wheel for the target platform and must be compiled.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.lock ./
# requirements.lock carries hashes: every download is checked against them here. The runtime stage
# installs these wheels offline by name and version (a wheel built here from an sdist has no
# published hash, so the hashes are not asked of it there).
RUN pip wheel --wheel-dir /wheels --require-hashes -r requirements.lock \
    && sed -e '/^ *#/d' -e '/^ *--hash/d' -e 's/ *\\$//' requirements.lock > /wheels/requirements.lock
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# The shipped sidecars (plugins/*) run from this same image: `python -m plugins.guard serve`.
COPY plugins ./plugins
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Offline install from the builder's wheels only (--no-index): a dependency missing from
# requirements.lock fails the build instead of being resolved to whatever is newest.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels -r /wheels/requirements.lock llm-gateway \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --shell /usr/sbin/nologin gateway \
    && install -d -o gateway -g gateway /var/lib/gateway

# tiktoken's encodings, written at build time so the gateway never downloads them at start-up
# (and works on a read-only root filesystem). Owned by the runtime user.
ENV TIKTOKEN_CACHE_DIR=/opt/tiktoken
RUN python -c "from gateway.tokens import prepare_encodings; prepare_encodings('/opt/tiktoken')" \
    && chown -R gateway:gateway /opt/tiktoken

# The shipped config as a default; mount your own over /etc/gateway (a directory, so hot reload works).
WORKDIR /app
COPY --chown=gateway:gateway routes.yaml budgets.yaml /etc/gateway/
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_ROUTES=/etc/gateway/routes.yaml \
    GATEWAY_BUDGETS=/etc/gateway/budgets.yaml \
    GATEWAY_STATE_FILE=/var/lib/gateway/state.sqlite3
# Without Redis, spend and run-time keys are kept in that file across restarts; mount a volume on
# /var/lib/gateway to keep them across containers too. With GATEWAY_REDIS_URL it is never opened.

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
# slim has no curl: probe /healthz with the standard library.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)" || exit 1
# uvicorn drains in-flight requests and streams for up to 30 s on SIGTERM.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "gateway", "serve"]
