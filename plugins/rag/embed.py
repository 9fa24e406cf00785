"""Embeddings through the gateway's ``/v1/embeddings`` with the caller's delegation token: every vector
the sidecar makes is admitted, priced, cached and recorded as the caller's own request."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

from plugins.sdk import Delegation, GatewayCallError, GatewayClient

Progress = Callable[[int], Awaitable[None] | None]


class EmbeddingError(Exception):
    """The gateway did not give the vectors (its status, 0 when unreachable, and why)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Embedder:
    def __init__(self, gateway: GatewayClient | None, model: str, dimensions: int, batch: int) -> None:
        self.gateway = gateway
        self.model = model
        self.dimensions = dimensions
        self.batch = batch

    async def embed(
        self,
        texts: Sequence[str],
        delegation: Delegation | None,
        *,
        deadline: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[float]]:
        """One vector per text, in ``batch``-sized calls; ``progress(done)`` after each call."""
        if self.gateway is None:
            raise EmbeddingError(503, "the RAG sidecar has no GATEWAY_URL to embed through")
        if delegation is None:
            raise EmbeddingError(401, "no delegation token: embeddings are made as the caller")
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch):
            part = list(texts[start : start + self.batch])
            body = {
                "model": self.model,
                "input": part,
                "dimensions": self.dimensions,
                "encoding_format": "float",
            }
            try:
                answer = await self.gateway.post(
                    "/v1/embeddings", body, delegation=delegation, deadline=deadline
                )
            except GatewayCallError as exc:
                raise EmbeddingError(exc.status, str(exc)) from exc
            out.extend(self._vectors(answer, len(part)))
            if progress is not None:
                progress(len(out))
        return out

    def _vectors(self, answer: dict[str, object], expected: int) -> list[list[float]]:
        data = answer.get("data")
        if not isinstance(data, list) or len(data) != expected:
            raise EmbeddingError(502, f"the embeddings answer has no {expected} vectors")
        ordered = sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
        vectors = []
        for item in ordered:
            vector = item.get("embedding") if isinstance(item, dict) else None
            if (
                not isinstance(vector, list)
                or len(vector) != self.dimensions
                or not all(isinstance(v, int | float) and math.isfinite(v) for v in vector)
            ):
                raise EmbeddingError(
                    502, f"the embeddings answer is not {self.dimensions} finite numbers per input"
                )
            vectors.append([float(v) for v in vector])
        return vectors
