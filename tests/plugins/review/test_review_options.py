"""The route's review options and the hold policy: sampling, risk from other plugins' annotations,
confidence from logprobs, tool globs; a wrong option is a protocol error naming it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from plugins.review.options import Options, confidence, is_risky, without_logprobs
from plugins.sdk import ProtocolError


def answer(*logprobs: float) -> dict[str, Any]:
    tokens = [{"token": "t", "logprob": lp} for lp in logprobs]
    choice = {"index": 0, "message": {"role": "assistant", "content": "x"}, "logprobs": {"content": tokens}}
    return {"choices": [choice]}


def test_defaults_hold_every_answer_and_every_tool_call() -> None:
    options = Options.parse({})
    assert options.reasons({}, answer()) == ["sampled"]
    assert (options.hold, options.hold_timeout_s, options.on_timeout) == ("sync", 120.0, "reject")
    assert options.holds_tool({"name": "kit__anything"})


def test_when_alone_holds_only_what_matches() -> None:
    options = Options.parse({"when": [{"risk": "high"}, {"confidence_below": 0.5}]})
    assert options.reasons({}, answer(-0.01)) == []
    assert options.reasons({"guard": {"injection": "flagged"}}, answer(-0.01)) == ["risk: high"]
    assert options.reasons({"rag": {"risk": "high"}}, answer()) == ["risk: high"]
    assert options.reasons({}, answer(-2.0, -2.0)) == ["confidence 0.14 < 0.5"]
    assert options.reasons({}, {"choices": [{"message": {"content": "x"}}]}) == []  # no logprobs: no verdict


def test_sample_rate_samples() -> None:
    options = Options.parse({"sample_rate": 0.5})
    held = sum(bool(options.reasons({}, answer())) for _ in range(2000))
    assert 800 < held < 1200
    assert not any(Options.parse({"sample_rate": 0}).reasons({}, answer()) for _ in range(100))


def test_risk_and_confidence_helpers() -> None:
    assert not is_risky({"guard": {"injection": "pass", "pii": "redacted"}})
    assert is_risky({"guard": {"output": "invalid"}})
    assert confidence(answer(0.0, math.log(0.5))) == pytest.approx(0.75)
    assert without_logprobs(answer(-1.0))["choices"][0]["logprobs"] is None


def test_tool_globs() -> None:
    options = Options.parse({"tools": ["billing__*"]})
    assert options.holds_tool({"name": "billing__refund"})
    assert not options.holds_tool({"name": "weather__now"})
    assert options.holds_tool({"name": "weather__now", "approver": "reviewer"})


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"hold": "later"}, "hold"),
        ({"on_timeout": "shrug"}, "on_timeout"),
        ({"sample_rate": 2}, "sample_rate"),
        ({"sample_rate": True}, "sample_rate"),
        ({"when": {"risk": "low"}}, "risk"),
        ({"when": {"confidence_below": 3}}, "confidence_below"),
        ({"when": {"mood": "bad"}}, "when"),
        ({"colour": "red"}, "colour"),
        ({"tools": "billing__*"}, "tools"),
        ({"logprobs": "yes"}, "logprobs"),
    ],
)
def test_a_wrong_option_is_named(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ProtocolError, match=named):
        Options.parse(config)
