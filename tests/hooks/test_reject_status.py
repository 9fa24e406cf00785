"""A reject's status: 4xx from any hook; 5xx only from a post hook, which may stand for a bad answer."""

from __future__ import annotations

import orjson
import pytest

from gateway.plugins.hooks import HookFailed, parse_answer


def rejected(status: int) -> bytes:
    return orjson.dumps({"action": "reject", "status": status, "code": "c", "message": "m"})


def test_a_post_hook_may_reject_with_a_5xx() -> None:
    assert parse_answer("post", rejected(502)).status == 502
    assert parse_answer("post", rejected(422)).status == 422


@pytest.mark.parametrize(("hook", "status"), [("pre", 502), ("tool", 500), ("post", 302), ("post", 600)])
def test_other_statuses_break_the_contract(hook: str, status: int) -> None:
    with pytest.raises(HookFailed):
        parse_answer(hook, rejected(status))
