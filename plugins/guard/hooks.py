"""The guard's pre and post hooks: PII, prompt injection, and JSON-schema output validation.

Every decision is an annotation (flat, never a PII value), so the gateway's log line says what the guard
did: ``pii`` (none | redacted | masked | blocked | restored), ``pii_types``, ``injection`` (pass | flagged
| blocked) with its ``injection_score`` and ``injection_rules``, and ``output`` (valid | repaired |
invalid | refusal | schema_invalid | deferred).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable

from plugins.guard import injection, pii
from plugins.guard.mask import Masker, MaskStore, restore
from plugins.guard.options import Options, parse
from plugins.guard.output import check_schema, problem, repair_request, response_schema
from plugins.guard.text import message_texts, rewrite_request, rewrite_response
from plugins.sdk import Answer, GatewayCallError, GatewayClient, HookCall, Rejected, continue_, modify
from plugins.sdk.protocol import Annotations, JSONObject

DEFAULT_TTL_S = 600.0
"""How long a mask mapping is kept when the call names no deadline."""
TTL_GRACE_S = 5.0
"""The post hook runs at the deadline at the latest; a little more covers clocks and the hook's trip."""

SCREENED_ROLES = ("user", "tool")
"""Injection is screened where text comes from outside the application: the user and tool results."""


class Guard:
    def __init__(self, store: MaskStore, gateway: GatewayClient | None) -> None:
        self.store = store
        self.gateway = gateway
        self._repairing: set[str] = set()
        """Delegation tokens of repair calls in flight: the repair call's own post hook must not repair."""

    async def aclose(self) -> None:
        await self.store.aclose()
        if self.gateway is not None:
            await self.gateway.aclose()

    async def pre(self, call: HookCall) -> Answer:
        options = parse(call.config)
        notes: Annotations = {}
        if options.injection != "off":
            self._screen(call.request, options, notes)
        if options.pii == "off":
            return continue_(notes)
        found: set[str] = set()
        masker = Masker()

        def replace(text: str) -> str:
            findings = pii.find(text, options.pii_types)
            if not findings:
                return text
            parts, pos = [], 0
            for f in findings:
                found.add(f.type)
                placeholder = masker.placeholder(f.type, f.value) if options.pii == "mask" else f"[{f.type}]"
                parts += [text[pos : f.start], placeholder]
                pos = f.end
            parts.append(text[pos:])
            return "".join(parts)

        request = rewrite_request(call.request, replace)
        if not found:
            notes["pii"] = "none"
            return continue_(notes)
        notes["pii_types"] = ",".join(sorted(found))
        if options.pii == "block":
            notes["pii"] = "blocked"
            message = f"the request contains personal data ({', '.join(sorted(found))}); remove it and retry"
            raise Rejected(400, "pii_detected", message, notes)
        notes["pii"] = "redacted" if options.pii == "redact" else "masked"
        if options.pii == "mask":
            ttl = DEFAULT_TTL_S if call.deadline is None else max(1.0, call.deadline - time.time())
            await self.store.put(call.request_id, masker.mapping, ttl + TTL_GRACE_S)
        return modify(request=request, annotations=notes)

    def _screen(self, request: JSONObject, options: Options, notes: Annotations) -> None:
        messages = request.get("messages")
        texts: Iterable[str] = (
            text
            for m in (messages if isinstance(messages, list) else ())
            if isinstance(m, dict) and m.get("role") in SCREENED_ROLES
            for text in message_texts(m)
        )
        score, rules = 0.0, set[str]()
        flagged = False
        for text in texts:
            verdict = injection.screen(text)
            flagged = flagged or verdict.flagged
            score = max(score, verdict.score)
            rules.update(verdict.rules)
        if not flagged:
            notes["injection"] = "pass"
            return
        notes["injection_score"] = round(score, 3)
        notes["injection_rules"] = ",".join(sorted(rules))
        if options.injection == "block":
            notes["injection"] = "blocked"
            raise Rejected(
                400, "prompt_injection", "the request was refused by the prompt-injection screen", notes
            )
        notes["injection"] = "flagged"

    async def post(self, call: HookCall) -> Answer:
        options = parse(call.config)
        assert call.response is not None  # HookCall.from_json requires it on a post call
        response = call.response
        notes: Annotations = {}
        mapping: dict[str, str] = {}
        if options.pii == "mask":
            mapping = await self.store.take(call.request_id) or {}
            if mapping:
                response, restored = _restore_response(response, mapping)
                notes["pii"] = "restored"
                notes["pii_restored"] = restored
        schema = response_schema(call.request)
        if schema is not None and options.validate_output is not False:
            response = await self._validate(call, schema, response, mapping, notes)
        if response is call.response:
            return continue_(notes)
        return modify(response=response, annotations=notes)

    async def _validate(
        self,
        call: HookCall,
        schema: JSONObject,
        response: JSONObject,
        mapping: dict[str, str],
        notes: Annotations,
    ) -> JSONObject:
        """The response, repaired where a choice did not match ``schema``; Rejected(502) if it stays so."""
        if call.delegation is not None and call.delegation.token in self._repairing:
            notes["output"] = "deferred"  # this is our own repair call: the hook that made it checks it
            return response
        why_schema = check_schema(schema)
        if why_schema is not None:
            notes["output"] = "schema_invalid"
            return response
        assert call.response is not None
        notes["output"] = "valid"
        for index, choice in enumerate(response.get("choices") or ()):
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            if message.get("content") is None and (message.get("refusal") or message.get("tool_calls")):
                notes["output"] = "refusal" if message.get("refusal") else "tool_calls"
                continue
            why = problem(message.get("content"), schema)
            if why is None:
                continue
            # The model is shown its own answer (placeholders, not the originals they stand for).
            model_said = call.response["choices"][index]["message"].get("content")
            content = await self._repair(call, schema, str(model_said), why, notes)
            content = restore(content, mapping)[0] if mapping else content
            response = copy.deepcopy(response)
            response["choices"][index]["message"]["content"] = content
            notes["output"] = "repaired"
        return response

    async def _repair(
        self, call: HookCall, schema: JSONObject, invalid: str, why: str, notes: Annotations
    ) -> str:
        """One delegated call for a corrected answer; its content, or Rejected(502 invalid_output)."""
        notes["output"] = "invalid"
        if self.gateway is None or call.delegation is None:
            reason = "no GATEWAY_URL" if self.gateway is None else "no delegation token"
            message = f"the answer does not match the response schema ({why}); no repair possible ({reason})"
            raise Rejected(502, "invalid_output", message, notes)
        token = call.delegation.token
        self._repairing.add(token)
        try:
            repaired = await self.gateway.chat_completions(
                repair_request(call.request, invalid, why), delegation=call.delegation, deadline=call.deadline
            )
        except GatewayCallError as exc:
            message = f"the answer does not match the response schema ({why}); the repair call failed: {exc}"
            raise Rejected(502, "invalid_output", message, notes) from exc
        finally:
            self._repairing.discard(token)
        try:
            content = repaired["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        still = problem(content, schema)
        if still is not None:
            message = f"the answer does not match the response schema, even after one repair: {still}"
            raise Rejected(502, "invalid_output", message, notes)
        return str(content)


def _restore_response(response: JSONObject, mapping: dict[str, str]) -> tuple[JSONObject, int]:
    count = 0

    def sub(text: str) -> str:
        nonlocal count
        out, n = restore(text, mapping)
        count += n
        return out

    return rewrite_response(response, sub), count
