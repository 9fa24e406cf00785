"""The real anthropic SDK served through a MockTransport, for the ingress tests."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import anthropic
import anthropic._base_client

# anthropic 2.x runs on the httpx2 fork and rejects httpx objects; 0.x runs on httpx. Serve the
# SDK through the MockTransport of whichever it was built on.
sdk_httpx: Any = importlib.import_module("httpx2" if hasattr(anthropic._base_client, "httpx2") else "httpx")


def sdk_client(handler: Callable[[Any], Any]) -> anthropic.Anthropic:
    http_client = sdk_httpx.Client(transport=sdk_httpx.MockTransport(handler))
    return anthropic.Anthropic(
        base_url="http://gateway.test", api_key="x", http_client=http_client, max_retries=0
    )
