"""Units of issue 16's sanity checks: usage parsing and vetting, retry hints, the reservation for n."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from gateway.config.model import Budget, BudgetsConfig, ModelConfig, Price, RetryPolicy, TenantConfig
from gateway.errors import MAX_RETRY_AFTER_S, retry_after_seconds, retry_headers
from gateway.keys import principal_from_record
from gateway.pipeline.admit import choices, estimate
from gateway.pipeline.parse import parse
from gateway.pipeline.route import Plan
from gateway.pipeline.settle import cost_of
from gateway.pipeline.usage_check import (
    FALLBACK_WINDOW,
    IMPLAUSIBLE,
    INCONSISTENT,
    MALFORMED,
    NEGATIVE,
    USAGE_MARGIN,
    usage_anomaly,
    usage_bound,
)
from gateway.providers.anthropic_response import usage_from_anthropic
from gateway.providers.base import Operation, Usage, token_count
from gateway.providers.http import retry_after_of
from gateway.tokens import prepare_encodings

MODEL = ModelConfig(
    name="m",
    provider="p",
    upstream="gpt-4o-mini",
    price=Price(input_per_mtok=0.15, output_per_mtok=0.60),
    context_window=128_000,
    max_output_tokens=16_384,
)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module", autouse=True)
def encodings() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", os.environ.get("TIKTOKEN_CACHE_DIR", ""))
        prepare_encodings()
        yield


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(None, 0), (12, 12), (-3, -3), (12.0, 12), (1e30, int(1e30))],
        *[(1.5, None), ("12", None), (True, None), (math.nan, None), (math.inf, None), ([1], None)],
    ],
)
def test_token_count_reads_integers_only(value: Any, expected: int | None) -> None:
    assert token_count(value) == expected


def test_openai_usage_never_raises_and_marks_what_is_not_a_count() -> None:
    assert Usage.from_openai({"prompt_tokens": 3, "completion_tokens": 2}) == Usage(3, 2)
    for bad in ("abc", True, 1.5, math.inf, [], {"x": 1}):
        usage = Usage.from_openai({"prompt_tokens": bad, "completion_tokens": 2})
        assert usage is not None and usage.malformed and usage.prompt_tokens == 0
    detail = Usage.from_openai(
        {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": "x"}}
    )
    assert detail is not None and detail.malformed


def test_anthropic_usage_marks_what_is_not_a_count() -> None:
    ok = usage_from_anthropic({"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 3})
    assert (ok.prompt_tokens, ok.cached_tokens, ok.malformed) == (8, 3, False)
    assert usage_from_anthropic({"input_tokens": "5", "output_tokens": 2}).malformed
    assert usage_from_anthropic({"input_tokens": 5, "output_tokens": True}).malformed
    negative = usage_from_anthropic({"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": -9})
    assert usage_anomaly(negative, Operation.CHAT, CHAT, MODEL) == NEGATIVE


@pytest.mark.parametrize(
    ("usage", "kind"),
    [
        (Usage(10, 3), None),
        (Usage(10, 3, cached_tokens=10), None),
        (Usage(0, 0), None),
        (Usage(10, 3, malformed=True), MALFORMED),
        (Usage(-1, 3), NEGATIVE),
        (Usage(10, -3), NEGATIVE),
        (Usage(10, 3, cached_tokens=-1), NEGATIVE),
        (Usage(10, 3, cache_write_tokens=-1), NEGATIVE),
        (Usage(10, 3, cached_tokens=8, cache_write_tokens=3), INCONSISTENT),
        (Usage(10**15, 3), IMPLAUSIBLE),
        (Usage(10, int(1e30)), IMPLAUSIBLE),
    ],
)
def test_usage_anomaly_kinds(usage: Usage, kind: str | None) -> None:
    assert usage_anomaly(usage, Operation.CHAT, CHAT, MODEL) == kind


def test_the_bound_is_window_plus_choices_times_output_with_the_margin() -> None:
    assert usage_bound(Operation.CHAT, CHAT, MODEL) == int((128_000 + 16_384) * (1 + USAGE_MARGIN))
    body = {**CHAT, "n": 4, "max_tokens": 1000}
    bound = int((128_000 + 4 * 1000) * (1 + USAGE_MARGIN))
    assert usage_bound(Operation.CHAT, body, MODEL) == bound
    assert usage_anomaly(Usage(128_000, 4000), Operation.CHAT, body, MODEL) is None
    assert usage_anomaly(Usage(128_000, bound - 128_000 + 1), Operation.CHAT, body, MODEL) == IMPLAUSIBLE
    completions = {"model": "m", "prompt": "x", "n": 2, "best_of": 5, "max_tokens": 10}
    expected = int((128_000 + 5 * 10) * (1 + USAGE_MARGIN))
    assert usage_bound(Operation.COMPLETIONS, completions, MODEL) == expected
    # embeddings: the window per input; no window configured: the fallback
    emb = {"model": "m", "input": ["a", "b", "c"]}
    assert usage_bound(Operation.EMBEDDINGS, emb, MODEL) == int(3 * 128_000 * (1 + USAGE_MARGIN))
    bare = ModelConfig(name="b", provider="p", upstream="b")
    assert usage_bound(Operation.CHAT, CHAT, bare) == int(2 * FALLBACK_WINDOW * (1 + USAGE_MARGIN))
    assert usage_bound(Operation.CHAT, CHAT, None) == int(2 * FALLBACK_WINDOW * (1 + USAGE_MARGIN))


def test_every_vetted_usage_prices_to_a_small_non_negative_amount() -> None:
    """Whatever passes the vetting is priced without error, never negative, within the bound's cost."""
    bound = usage_bound(Operation.CHAT, CHAT, MODEL)
    worst = Decimal(bound) * Decimal("0.60") / 1_000_000
    for prompt in (0, 1, 10_000, bound // 2, bound):
        for completion in (0, 7, bound - prompt, bound - prompt + 1):
            for cached in (0, prompt // 2, prompt):
                usage = Usage(prompt, completion, cached_tokens=cached)
                if usage_anomaly(usage, Operation.CHAT, CHAT, MODEL) is None:
                    assert 0 <= cost_of(usage, MODEL.price) <= worst


def test_choices_and_the_reservation_for_n() -> None:
    assert choices(Operation.CHAT, CHAT) == 1
    assert choices(Operation.CHAT, {**CHAT, "n": 5}) == 5
    assert choices(Operation.COMPLETIONS, {"n": 2, "best_of": 6}) == 6
    assert choices(Operation.EMBEDDINGS, {"n": 9}) == 1
    plan = Plan("r", (MODEL,), 10.0, RetryPolicy(), None, None)
    one = estimate(parse(Operation.CHAT, {**CHAT, "max_tokens": 1000}, {}), plan, 0.0)
    many = estimate(parse(Operation.CHAT, {**CHAT, "max_tokens": 1000, "n": 100}, {}), plan, 0.0)
    output_nano = 1000 * 0.60 * 1000  # 1000 tokens at $0.60/Mtok, in nano-USD
    assert many.cost_nano - one.cost_nano == pytest.approx(99 * output_nano, abs=2)
    assert (many.output_tokens, many.choices) == (1000, 100)


@pytest.mark.parametrize(
    ("hint", "seconds"),
    [
        ("2.5", 2.5),
        (7, 7.0),
        ("-4", 0.0),
        ("1e20", MAX_RETRY_AFTER_S),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_seconds(hint: Any, seconds: float | None) -> None:
    assert retry_after_seconds(hint) == seconds


def test_retry_hints_from_headers_and_to_headers() -> None:
    assert retry_after_of({"retry-after-ms": "nan", "retry-after": "3"}) == "3"
    assert retry_after_of({"retry-after-ms": "1500"}) == "1.5"
    assert retry_after_of({"retry-after": "inf"}) is None
    assert retry_after_of({"retry-after": "1e20"}) == str(MAX_RETRY_AFTER_S)
    assert retry_headers("nan") == {} and retry_headers(math.inf) == {}
    assert retry_headers(1e20) == {"retry-after": "3600", "retry-after-ms": "3600000"}
    in_a_minute = "Sun, 06 Dec 2099 00:01:00 GMT"  # far future: clamped
    assert retry_headers(in_a_minute)["retry-after"] == "3600"


def test_a_stored_key_with_an_absurd_budget_is_clamped_not_fatal() -> None:
    """Records written before the admin API bounded amounts (``1e308``) keep working within the max."""
    budgets = BudgetsConfig(tenants={"acme": TenantConfig(name="acme")})
    for usd, expected in ((1e308, 1_000_000.0), (math.inf, 1_000_000.0), (math.nan, 0.0), (-5, 0.0)):
        record = {"id": "k", "tenant": "acme", "budget": {"usd": usd, "period": "daily"}}
        principal = principal_from_record(record, budgets)
        assert principal is not None and principal.key_budget == Budget(expected, "daily")
