"""A small memo for values worked out per request from long-lived objects (a key's record, a route
table, a provider's URL or headers): kept by key, and valid only while the key still belongs to the
same object (compared with ``is``), so a reloaded config or a new key record is worked out afresh."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``size`` entries; all are dropped when it is full (the working set is small, so that is
    rare, and it bounds what a stream of never-repeated keys can hold)."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int) -> None:
        self._entries: dict[K, tuple[object, V]] = {}
        self._size = size

    def get(self, key: K, owner: object) -> V | None:
        kept = self._entries.get(key)
        return kept[1] if kept is not None and kept[0] is owner else None

    def put(self, key: K, owner: object, value: V) -> V:
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = (owner, value)
        return value
