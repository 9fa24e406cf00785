"""Stage 9: pricing a request's usage."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.config.model import ModelConfig, Price
from gateway.context import Exchange
from gateway.pipeline import settle
from gateway.providers.base import Usage


def test_a_request_is_priced_once_for_its_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Usage] = []
    real = settle.cost_of

    def counting(usage: Usage, price: Price) -> Decimal:
        calls.append(usage)
        return real(usage, price)

    monkeypatch.setattr(settle, "cost_of", counting)
    ex = Exchange()
    ex.attempts.deployment = ModelConfig("m", "p", "m", Price(input_per_mtok=0.15, output_per_mtok=0.6))
    ex.usage = Usage(prompt_tokens=1000, completion_tokens=100)
    settle.price_usage(ex)
    settle.price_usage(ex)  # the cost header, then the settlement: one pricing
    assert ex.cost == Decimal("0.00021") and len(calls) == 1
    ex.usage = Usage(prompt_tokens=1000, completion_tokens=200)  # a stream's final usage: priced anew
    settle.price_usage(ex)
    assert ex.cost == Decimal("0.00027") and len(calls) == 2
