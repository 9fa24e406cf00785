"""gateway/memo.py: values kept per key while the key belongs to the same object."""

from __future__ import annotations

from gateway.memo import Memo


def test_a_value_is_kept_for_its_owner_only() -> None:
    memo: Memo[str, int] = Memo(10)
    owner, other = object(), object()
    assert memo.get("k", owner) is None
    assert memo.put("k", owner, 1) == 1
    assert memo.get("k", owner) == 1
    assert memo.get("k", other) is None  # the key now belongs to another object: worked out again
    memo.put("k", other, 2)
    assert memo.get("k", other) == 2 and memo.get("k", owner) is None


def test_it_never_holds_more_than_its_size() -> None:
    memo: Memo[int, int] = Memo(3)
    owner = object()
    for i in range(10):
        memo.put(i, owner, i)
    kept = [i for i in range(10) if memo.get(i, owner) is not None]
    assert 1 <= len(kept) <= 3 and kept[-1] == 9
