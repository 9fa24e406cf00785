"""A route's ``review:`` options, and the policy that decides what is held.

An answer is held when it is sampled (``sample_rate``) or when any ``when`` condition holds; a route
that names neither holds every answer. The gateway calls the tool hook for the calls its tool policy
gives to a reviewer (``approver: reviewer``); each is held unless ``tools`` (globs on ``server__tool``,
default every tool) leaves it out.
"""

from __future__ import annotations

import fnmatch
import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from plugins.sdk import ProtocolError

Hold = Literal["sync", "async"]
OnTimeout = Literal["reject", "release"]

KNOWN = frozenset(
    {"sample_rate", "when", "hold", "hold_timeout_s", "on_timeout", "logprobs", "tools", "review_ttl_s"}
)
RISKY_GUARD = {"injection": ("flagged",), "output": ("invalid", "schema_invalid")}
"""Guard annotations that make an answer ``risk: high`` (besides any plugin's own ``risk: high``)."""


@dataclass(frozen=True, slots=True)
class Options:
    sample_rate: float = 0.0
    risk_high: bool = False
    confidence_below: float | None = None
    hold: Hold = "sync"
    hold_timeout_s: float = 120.0
    on_timeout: OnTimeout = "reject"
    logprobs: bool = False
    tools: tuple[str, ...] = ("*",)
    review_ttl_s: float = 86400.0
    """``hold: async``: how long an item waits for a decision (and the client can poll it)."""

    @classmethod
    def parse(cls, config: dict[str, Any]) -> Options:
        unknown = set(config) - KNOWN
        if unknown:
            raise ProtocolError(f"unknown review options {sorted(unknown)}: known are {sorted(KNOWN)}")
        conditions = config.get("when") or []
        if isinstance(conditions, dict):
            conditions = [conditions]
        if not isinstance(conditions, list):
            raise ProtocolError("review.when must be an object or a list of objects")
        risk_high, below = False, None
        for cond in conditions:
            if not isinstance(cond, dict) or not cond or set(cond) - {"risk", "confidence_below"}:
                raise ProtocolError("review.when: each condition is {risk: high} or {confidence_below: p}")
            if "risk" in cond:
                if cond["risk"] != "high":
                    raise ProtocolError("review.when.risk: only 'high' is known")
                risk_high = True
            if "confidence_below" in cond:
                below = _number(cond["confidence_below"], "when.confidence_below", 0.0, 1.0)
        default_rate = 0.0 if conditions else 1.0
        sample = _number(config.get("sample_rate", default_rate), "sample_rate", 0.0, 1.0)
        hold = config.get("hold", "sync")
        if hold not in ("sync", "async"):
            raise ProtocolError("review.hold must be sync or async")
        on_timeout = config.get("on_timeout", "reject")
        if on_timeout not in ("reject", "release"):
            raise ProtocolError("review.on_timeout must be reject or release")
        tools = config.get("tools", ["*"])
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise ProtocolError("review.tools must be a list of tool-name globs")
        logprobs = config.get("logprobs", False)
        if not isinstance(logprobs, bool):
            raise ProtocolError("review.logprobs must be true or false")
        return cls(
            sample_rate=sample,
            risk_high=risk_high,
            confidence_below=below,
            hold=hold,
            hold_timeout_s=_number(config.get("hold_timeout_s", 120), "hold_timeout_s", 0.0, 86400.0),
            on_timeout=on_timeout,
            logprobs=logprobs,
            tools=tuple(tools),
            review_ttl_s=_number(config.get("review_ttl_s", 86400), "review_ttl_s", 1.0, 30 * 86400.0),
        )

    def reasons(self, annotations: dict[str, dict[str, Any]], response: dict[str, Any]) -> list[str]:
        """Why this answer is held (empty: it is not)."""
        out: list[str] = []
        if self.sample_rate >= 1.0 or (self.sample_rate > 0 and random.random() < self.sample_rate):
            out.append("sampled")
        if self.risk_high and is_risky(annotations):
            out.append("risk: high")
        if self.confidence_below is not None:
            p = confidence(response)
            if p is not None and p < self.confidence_below:
                out.append(f"confidence {p:.2f} < {self.confidence_below:g}")
        return out

    def holds_tool(self, tool_call: dict[str, Any]) -> bool:
        if tool_call.get("approver") == "reviewer":
            return True
        name = str(tool_call.get("name") or "")
        return any(fnmatch.fnmatchcase(name, glob) for glob in self.tools)


def _number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ProtocolError(f"review.{name} must be a number in [{low:g}, {high:g}]")
    return float(value)


def is_risky(annotations: dict[str, dict[str, Any]]) -> bool:
    for plugin, notes in annotations.items():
        if notes.get("risk") == "high":
            return True
        if plugin == "guard":
            for key, risky in RISKY_GUARD.items():
                if notes.get(key) in risky:
                    return True
    return False


def confidence(response: dict[str, Any]) -> float | None:
    """The mean token probability of the first choice (``exp`` of each token's logprob), or None when
    the answer carries no logprobs."""
    choices = response.get("choices") or []
    logprobs = choices[0].get("logprobs") if choices and isinstance(choices[0], dict) else None
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list):
        return None
    values = [
        t["logprob"] for t in tokens if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)
    ]
    if not values:
        return None
    return sum(math.exp(v) for v in values) / len(values)


def without_logprobs(response: dict[str, Any]) -> dict[str, Any]:
    """The answer as a client that did not ask for logprobs expects it."""
    choices = [
        {**c, "logprobs": None} if isinstance(c, dict) and "logprobs" in c else c
        for c in response.get("choices") or []
    ]
    return {**response, "choices": choices}
