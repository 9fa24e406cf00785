"""The RAG hooks: the pre hook grounds a chat in the tenant's documents, the post hook checks citations.

Route options (``plugins: [{rag: {...}}]``): ``collection`` (required), ``top_k`` (5), ``min_score``
(0.3: the cosine similarity a chunk needs, see store.py), ``filter`` (metadata, jsonb containment),
``mode`` (hybrid | vector | keyword), ``on_no_context`` (answer_unknown | pass | reject),
``unknown_citations`` (remove | mark).

Pre: the query is the last user turn; when the conversation has earlier user turns, a condensed query
(the last turn with the earlier ones) is embedded in the same call and searched only if the last turn
alone finds nothing above ``min_score`` (a follow-up such as "and on Linux?"). The chunks go in a system
message just before the last user turn, each under its citation id ``[doc_id#n]``, with the instruction
to cite them and to say when the answer is not there. Nothing relevant: ``answer_unknown`` answers "not
in the documents" without calling a model, ``reject`` refuses with 422 ``no_context``, ``pass`` lets the
request through unchanged.

Pre to post: the retrieved set is kept in this process, keyed by request id (and tenant), until the
request's deadline. When the post hook runs on another replica (or after a restart) the entry is not
there: the cited ids are then checked against the store itself (the chunk must exist in the tenant's
collection), which still drops every invented id.

Post: every ``[x#n]`` in the answer is checked against the retrieved set; unknown ones are removed (or
marked ``[x#n (unverified)]``), and ``x_gateway.citations`` lists the cited chunks (doc id, chunk id,
title, score) in order of first citation.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from plugins.rag.embed import Embedder, EmbeddingError
from plugins.rag.store import MODES, Hit, Mode, Store
from plugins.sdk import Answer, HookCall, ProtocolError, Rejected, continue_, modify, respond
from plugins.sdk.protocol import Annotations, JSONObject

CITATION = re.compile(r"\[([A-Za-z0-9][A-Za-z0-9._:-]{0,127}#\d{1,9})\]")
_SPACED_CITATION = re.compile(r"[ \t]*" + CITATION.pattern)
"""A citation with the blanks before it: removing both leaves "word." rather than "word ."."""
UNKNOWN_ANSWER = "I could not find this in the documents I have access to, so I cannot answer it from them."
INSTRUCTION = (
    "Answer the user's question using only the documents below. After each statement, cite the "
    "document it comes from by its id in square brackets, exactly as given, e.g. {example}. If the "
    "documents do not contain the answer, say that it is not in the documents; do not guess."
)
MAX_REMEMBERED = 10_000
DEFAULT_TTL_S = 600.0
CONDENSED_TURNS = 3
"""How many earlier user turns a condensed query carries."""


@dataclass(frozen=True, slots=True)
class Options:
    collection: str
    top_k: int = 5
    min_score: float = 0.3
    filter: dict[str, Any] | None = None
    mode: Mode = "hybrid"
    on_no_context: str = "answer_unknown"
    unknown_citations: str = "remove"


def options(config: JSONObject) -> Options:
    """The route's options, or ProtocolError (a 400: the route is misconfigured) naming the bad one."""
    collection = config.get("collection")
    if not isinstance(collection, str) or not collection:
        raise ProtocolError("rag: the route must name a 'collection'")
    top_k = config.get("top_k", 5)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 50:
        raise ProtocolError("rag: 'top_k' must be an integer from 1 to 50")
    min_score = config.get("min_score", 0.3)
    if not isinstance(min_score, int | float) or isinstance(min_score, bool):
        raise ProtocolError("rag: 'min_score' must be a number")
    search_filter = config.get("filter")
    if search_filter is not None and not isinstance(search_filter, dict):
        raise ProtocolError("rag: 'filter' must be an object")
    mode = config.get("mode", "hybrid")
    on_no_context = config.get("on_no_context", "answer_unknown")
    unknown = config.get("unknown_citations", "remove")
    for name, value, allowed in (
        ("mode", mode, MODES),
        ("on_no_context", on_no_context, ("answer_unknown", "pass", "reject")),
        ("unknown_citations", unknown, ("remove", "mark")),
    ):
        if value not in allowed:
            raise ProtocolError(f"rag: '{name}' must be one of {', '.join(allowed)}")
    return Options(collection, top_k, float(min_score), search_filter, mode, on_no_context, unknown)


@dataclass(frozen=True, slots=True)
class Retrieved:
    tenant: str
    collection: str
    hits: dict[str, Hit]
    expires: float


class Rag:
    def __init__(self, store: Store, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder
        self._retrieved: OrderedDict[str, Retrieved] = OrderedDict()

    # -- pre -------------------------------------------------------------------------------------

    async def pre(self, call: HookCall) -> Answer:
        opts = options(call.config)
        turns = _user_turns(call.request)
        if not turns:
            return continue_({"retrieved": 0})
        queries = [turns[-1]]
        if len(turns) > 1:
            queries.append(" ".join([*turns[-1 - CONDENSED_TURNS : -1], turns[-1]]))
        vectors: list[list[float] | None] = [None] * len(queries)
        if opts.mode != "keyword":
            try:
                vectors = list(await self.embedder.embed(queries, call.delegation, deadline=call.deadline))
            except EmbeddingError as exc:
                if not 400 <= exc.status < 500:
                    raise  # the gateway or the embedding model failed: the plugin failed (on_error)
                # the caller's own limits refused it (budget, rate): the caller's request is refused alike
                raise Rejected(
                    exc.status, "embedding_refused", f"retrieval needs an embedding: {exc}"
                ) from exc
        hits: list[Hit] = []
        used = "last_turn"
        for n, (query, vector) in enumerate(zip(queries, vectors, strict=True)):
            hits = await self.store.search(
                call.tenant,
                opts.collection,
                vector,
                query,
                opts.top_k,
                opts.min_score,
                opts.filter,
                opts.mode,
            )
            if hits:
                used = "condensed" if n else "last_turn"
                break
        notes: Annotations = {"retrieved": len(hits), "query": used}
        if not hits:
            notes["outcome"] = "no_context"
            return self._no_context(call, opts, notes)
        self._remember(call, opts, hits)
        notes["top_score"] = round(max(h.score for h in hits), 4)
        return modify(request=_grounded(call.request, hits), annotations=notes)

    def _no_context(self, call: HookCall, opts: Options, notes: Annotations) -> Answer:
        notes["on_no_context"] = opts.on_no_context
        if opts.on_no_context == "pass":
            self._remember(call, opts, [])  # the answer may cite nothing: every citation is unknown
            return continue_(notes)
        if opts.on_no_context == "reject":
            message = f"nothing in the collection '{opts.collection}' is relevant enough to answer this"
            raise Rejected(422, "no_context", message, notes)
        return respond(_unknown_answer(call), notes)

    def _remember(self, call: HookCall, opts: Options, hits: list[Hit]) -> None:
        now = time.time()
        expires = (call.deadline if call.deadline is not None else now + DEFAULT_TTL_S) + 5.0
        while self._retrieved:  # drop the expired and, past the cap, the oldest
            key, first = next(iter(self._retrieved.items()))
            if first.expires > now and len(self._retrieved) < MAX_REMEMBERED:
                break
            del self._retrieved[key]
        self._retrieved[call.request_id] = Retrieved(
            call.tenant, opts.collection, {h.chunk_id: h for h in hits}, expires
        )

    # -- post ------------------------------------------------------------------------------------

    async def post(self, call: HookCall) -> Answer:
        opts = options(call.config)
        assert call.response is not None  # HookCall.from_json requires it on a post call
        entry = self._retrieved.pop(call.request_id, None)
        if entry is not None and (entry.tenant != call.tenant or entry.collection != opts.collection):
            entry = None
        cited = [m.group(1) for m in CITATION.finditer(_answer_text(call.response))]
        if entry is not None:
            known, verified = entry.hits, "retrieved"
        else:  # another replica retrieved: the chunk must at least exist in the tenant's collection
            found = await self.store.chunks(call.tenant, opts.collection, cited)
            known, verified = {h.chunk_id: h for h in found}, "store"
        citations: dict[str, Hit] = {}
        unknown: set[str] = set()
        for cid in cited:
            if cid in known:
                citations.setdefault(cid, known[cid])
            else:
                unknown.add(cid)
        response = _rewrite(call.response, unknown, opts.unknown_citations)
        extra = response.get("x_gateway")
        extra = dict(extra) if isinstance(extra, dict) else {}
        extra["citations"] = [_citation(h, verified == "retrieved") for h in citations.values()]
        response["x_gateway"] = extra
        notes: Annotations = {
            "citations": len(citations),
            "unknown_citations": len(unknown),
            "verified_against": verified,
        }
        return modify(response=response, annotations=notes)


def _citation(hit: Hit, scored: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"doc_id": hit.doc_id, "chunk_id": hit.chunk_id, "title": hit.title}
    out["score"] = round(hit.score, 6) if scored else None
    if hit.heading:
        out["heading"] = hit.heading
    return out


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _user_turns(request: JSONObject) -> list[str]:
    messages = request.get("messages")
    turns = [
        _text(m.get("content"))
        for m in (messages if isinstance(messages, list) else ())
        if isinstance(m, dict) and m.get("role") == "user"
    ]
    return [t.strip() for t in turns if t.strip()]


def _grounded(request: JSONObject, hits: list[Hit]) -> JSONObject:
    """The request with the chunks as a system message just before the last user turn."""
    blocks = []
    for h in hits:
        where = " > ".join(x for x in (h.title or "", h.heading) if x)
        blocks.append(f"[{h.chunk_id}]" + (f" ({where})" if where else "") + f"\n{h.text}")
    content = INSTRUCTION.format(example=f"[{hits[0].chunk_id}]") + "\n\n" + "\n\n".join(blocks)
    messages = list(request.get("messages") or [])
    last_user = max(i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user")
    messages.insert(last_user, {"role": "system", "content": content})
    return {**request, "messages": messages}


def _unknown_answer(call: HookCall) -> JSONObject:
    return {
        "id": "chatcmpl-rag-" + (call.request_id or "unknown"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(call.request.get("model") or ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": UNKNOWN_ANSWER, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "x_gateway": {"citations": []},
    }


def _answer_text(response: JSONObject) -> str:
    parts = []
    for choice in response.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            parts.append(_text(message.get("content")))
    return "\n".join(parts)


def _rewrite(response: JSONObject, unknown: set[str], how: str) -> JSONObject:
    """A copy of the response with the unknown citations removed or marked in every choice."""

    def fix(match: re.Match[str]) -> str:
        cid = match.group(1)
        if cid not in unknown:
            return match.group(0)
        return "" if how == "remove" else f"[{cid} (unverified)]"

    out = dict(response)
    choices = []
    for choice in response.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if unknown and isinstance(message, dict) and isinstance(message.get("content"), str):
            content = (_SPACED_CITATION if how == "remove" else CITATION).sub(fix, message["content"])
            choice = {**choice, "message": {**message, "content": content}}
        choices.append(choice)
    out["choices"] = choices
    return out
