"""OpenAI's Responses API (``/v1/responses``), served by every provider through the chat pipeline."""

from __future__ import annotations

from gateway.responses_api.store import ResponseStore
from gateway.store import GatewayStore


def build_response_store(store: GatewayStore) -> ResponseStore:
    """Stored responses beside the admission store: in Redis when it is Redis (every replica sees
    them), else in this process (``local.py``)."""
    from gateway.store.redis import RedisStore

    if isinstance(store, RedisStore):
        from gateway.responses_api.shared import RedisResponseStore

        return RedisResponseStore(store)
    from gateway.responses_api.local import LocalResponseStore

    return LocalResponseStore()
