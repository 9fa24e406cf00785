"""The RAG sidecar's API, served under ``/api`` and reached as ``/v1/plugins/rag/...`` through the gateway.

Every call is the caller's tenant's (``x-gateway-tenant``, set by the gateway, which the sidecar trusts
because the call carries the plugin token); every query names that tenant in its WHERE clause, so another
tenant's collection, document or job is simply not found (404), by name or by guessed id alike.

- ``POST /collections/{c}/documents``: JSON ``{id?, text, format?, metadata?}`` or multipart/form-data
  (``file``, optional ``id``, ``format`` and ``metadata`` as JSON). Small documents answer
  ``{id, collection, chunks}``; large ones 202 ``{job_id, status, id, chunks_total}``.
- ``GET /collections/{c}/documents`` (``?limit=&after=``), ``GET``/``DELETE /collections/{c}/documents/{id}``
  (``?chunks=true`` lists the chunks).
- ``POST /collections/{c}/search`` ``{query, top_k?, min_score?, filter?, mode?}`` → ``{"results": [...]}``.
- ``GET /jobs/{id}``: a job's progress.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message

from plugins.rag.chunking import Settings
from plugins.rag.embed import EmbeddingError
from plugins.rag.ingest import Ingestor, prepare
from plugins.rag.parse import ParseError, detect
from plugins.rag.store import MODES, Mode, Store
from plugins.sdk import Delegation
from plugins.sdk.app import error

log = logging.getLogger("plugins.rag")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
"""Collection and document ids: no '#' (it separates a citation's document and chunk), no '/'."""
MAX_TOP_K = 100
DELEGATION_LIFETIME_S = 60.0
"""The gateway mints the API delegation for its default timeout; the sidecar does not see the expiry."""


class Invalid(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


class TooLarge(Exception):
    pass


@dataclass(slots=True)
class Backends:
    """The store and the ingestor, opened by the app's lifespan (after the routes are built)."""

    store: Store | None = None
    ingestor: Ingestor | None = None


class Api:
    def __init__(self, backends: Backends, chunking: Settings, max_upload_bytes: int) -> None:
        self.backends = backends
        self.chunking = chunking
        self.max_upload_bytes = max_upload_bytes

    @property
    def store(self) -> Store:
        assert self.backends.store is not None, "the lifespan opens the store before any call"
        return self.backends.store

    @property
    def ingestor(self) -> Ingestor:
        assert self.backends.ingestor is not None, "the lifespan opens the store before any call"
        return self.backends.ingestor

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/collections/{collection}/documents", self._guard(self.add), methods=["POST"]),
            Route("/collections/{collection}/documents", self._guard(self.list), methods=["GET"]),
            Route("/collections/{collection}/documents/{doc_id}", self._guard(self.get), methods=["GET"]),
            Route(
                "/collections/{collection}/documents/{doc_id}", self._guard(self.delete), methods=["DELETE"]
            ),
            Route("/collections/{collection}/search", self._guard(self.search), methods=["POST"]),
            Route("/jobs/{job_id}", self._guard(self.job), methods=["GET"]),
        ]

    def _guard(self, fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                response: Response = await fn(request)
                return response
            except Invalid as exc:
                return error(exc.status, str(exc), "invalid_request_error", exc.code)
            except TooLarge:
                message = f"the upload is larger than {self.max_upload_bytes} bytes (RAG_MAX_UPLOAD_BYTES)"
                return error(413, message, "invalid_request_error", "upload_too_large")
            except EmbeddingError as exc:
                status = exc.status if 400 <= exc.status < 600 else 502
                return error(status, f"embedding failed: {exc}", "api_error", "embedding_failed")
            except Exception:  # the store or a bug: an OpenAI-style 500, the traceback in our log
                log.exception("rag API %s %s failed", request.method, request.url.path)
                return error(500, "the RAG sidecar failed; see its log", "server_error", "rag_error")

        return endpoint

    # -- documents -----------------------------------------------------------------------------

    async def add(self, request: Request) -> Response:
        tenant, collection = _tenant(request), _name(request.path_params["collection"], "collection")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_upload_bytes:
            raise TooLarge
        limited = _limited(request, self.max_upload_bytes)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            async with limited.form(max_files=1, max_fields=8) as form:
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    raise Invalid(400, "a multipart upload needs a 'file' part", "missing_file", "file")
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
                fmt = _format(fields.get("format"), upload.content_type, upload.filename, upload)
                doc_id = _optional_name(fields.get("id"))
                metadata = _metadata(
                    _json(fields["metadata"].encode(), "metadata") if fields.get("metadata") else None
                )
                # parse from the spooled file (on disk past 1 MiB), in a thread
                prepared = await asyncio.to_thread(_prepare, upload.file, fmt, doc_id, self.chunking)
        else:
            body = _json(await limited.body())
            text = body.get("text")
            if not isinstance(text, str) or not text.strip():
                raise Invalid(400, "'text' must be a non-empty string", "invalid_value", "text")
            data = text.encode()
            fmt = _format(body.get("format"), None, None, None, data)
            doc_id = _optional_name(body.get("id"))
            metadata = _metadata(body.get("metadata"))
            prepared = await asyncio.to_thread(_prepare, data, fmt, doc_id, self.chunking)
        if not prepared.chunks:
            raise Invalid(400, "the document has no text to index", "empty_document")
        job = await self.ingestor.ingest(tenant, collection, prepared, metadata, _delegation(request))
        if job is not None:
            return JSONResponse(job.to_json(), status_code=202)
        return JSONResponse(
            {
                "id": prepared.doc_id,
                "collection": collection,
                "chunks": len(prepared.chunks),
                "status": "succeeded",
            }
        )

    async def list(self, request: Request) -> Response:
        tenant, collection = _tenant(request), _name(request.path_params["collection"], "collection")
        limit = _int(request.query_params.get("limit"), 100, 1, 1000, "limit")
        after = request.query_params.get("after")
        docs = await self.store.list_documents(tenant, collection, limit=limit + 1, after=after)
        return JSONResponse(
            {"object": "list", "data": [d.to_json() for d in docs[:limit]], "has_more": len(docs) > limit}
        )

    async def get(self, request: Request) -> Response:
        tenant, collection = _tenant(request), _name(request.path_params["collection"], "collection")
        doc_id = _name(request.path_params["doc_id"], "id")
        with_chunks = request.query_params.get("chunks") in ("1", "true")
        doc = await self.store.get_document(tenant, collection, doc_id, with_chunks=with_chunks)
        if doc is None:
            raise _not_found(collection, doc_id)
        return JSONResponse(doc.to_json())

    async def delete(self, request: Request) -> Response:
        tenant, collection = _tenant(request), _name(request.path_params["collection"], "collection")
        doc_id = _name(request.path_params["doc_id"], "id")
        if not await self.store.delete_document(tenant, collection, doc_id):
            raise _not_found(collection, doc_id)
        return JSONResponse({"id": doc_id, "object": "document", "deleted": True})

    # -- search and jobs -----------------------------------------------------------------------

    async def search(self, request: Request) -> Response:
        tenant, collection = _tenant(request), _name(request.path_params["collection"], "collection")
        body = _json(await _limited(request, 1 << 20).body())
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise Invalid(400, "'query' must be a non-empty string", "invalid_value", "query")
        top_k = _int(body.get("top_k"), 5, 1, MAX_TOP_K, "top_k")
        min_score = body.get("min_score")
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, int | float)):
            raise Invalid(400, "'min_score' must be a number", "invalid_value", "min_score")
        mode = body.get("mode", "hybrid")
        if mode not in MODES:
            raise Invalid(400, f"'mode' must be one of {', '.join(MODES)}", "invalid_value", "mode")
        search_filter = _metadata(body.get("filter"), "filter")
        vector = None
        if mode != "keyword":
            embedder = self.ingestor.embedder
            vector = (await embedder.embed([query], _delegation(request)))[0]
        hits = await self.store.search(
            tenant,
            collection,
            vector,
            query,
            top_k,
            None if min_score is None else float(min_score),
            search_filter,
            _mode(mode),
        )
        return JSONResponse({"object": "list", "results": [h.to_json() for h in hits]})

    async def job(self, request: Request) -> Response:
        job = self.ingestor.job(_tenant(request), request.path_params["job_id"])
        if job is None:
            raise Invalid(404, "no such job", "job_not_found", "job_id")
        return JSONResponse(job.to_json())


def _prepare(data: Any, fmt: Any, doc_id: str | None, settings: Settings) -> Any:
    try:
        return prepare(data, fmt, doc_id, settings)
    except ParseError as exc:
        raise Invalid(400, str(exc), "unparsable_document", "file") from exc


def _mode(value: str) -> Mode:
    for mode in MODES:
        if mode == value:
            return mode
    raise Invalid(400, f"'mode' must be one of {', '.join(MODES)}", "invalid_value", "mode")


def _tenant(request: Request) -> str:
    tenant = request.headers.get("x-gateway-tenant")
    if not tenant:
        raise Invalid(400, "no x-gateway-tenant: call through the gateway", "missing_tenant")
    return tenant


def _delegation(request: Request) -> Delegation | None:
    token = request.headers.get("x-gateway-delegation")
    return Delegation(token, time.time() + DELEGATION_LIFETIME_S) if token else None


def _name(value: str, param: str) -> str:
    if not NAME.match(value):
        raise Invalid(
            400,
            f"'{param}' must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
            "invalid_value",
            param,
        )
    return value


def _optional_name(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Invalid(400, "'id' must be a string", "invalid_value", "id")
    return _name(value, "id")


def _metadata(value: object, param: str = "metadata") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(400, f"'{param}' must be a JSON object", "invalid_value", param)
    return value


def _format(
    value: object, content_type: str | None, filename: str | None, upload: Any, data: bytes = b""
) -> Any:
    if value is not None and not isinstance(value, str):
        raise Invalid(400, "'format' must be a string", "invalid_value", "format")
    if upload is not None:
        data = upload.file.read(512)
        upload.file.seek(0)
    try:
        return detect(value, content_type, filename, data)
    except ParseError as exc:
        raise Invalid(400, str(exc), "invalid_value", "format") from exc


def _int(value: object, default: int, low: int, high: int, param: str) -> int:
    if value is None:
        return default
    try:
        number = int(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
        raise Invalid(400, f"'{param}' must be an integer from {low} to {high}", "invalid_value", param)
    return number


def _json(raw: bytes, what: str = "the body") -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid(400, f"{what} is not JSON: {exc}", "invalid_json") from exc
    if not isinstance(body, dict):
        raise Invalid(400, f"{what} must be a JSON object", "invalid_json")
    return body


def _not_found(collection: str, doc_id: str) -> Invalid:
    return Invalid(404, f"no document '{doc_id}' in collection '{collection}'", "document_not_found", "id")


def _limited(request: Request, limit: int) -> Request:
    """The request with a body that raises TooLarge past ``limit`` bytes, counted as it streams in."""
    seen = 0

    async def receive() -> Message:
        nonlocal seen
        message = await request.receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge
        return message

    return Request(request.scope, receive)
