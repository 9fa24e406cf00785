"""Shared checks for the config parsers: typed field access that records errors instead of raising.

Every check takes the path of the value it inspects (``routes[1].targets[0].model``), so each message names
where the problem is. A bad value records an error and yields a default, so one pass over a file reports
every problem in it; the caller discards the half-built config when any error was recorded.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Collection
from typing import TypeVar

from gateway.config.model import MAX_NAME_LENGTH

T = TypeVar("T", bound=str)

NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
NAME_RULE = "use only letters, digits, '.', '_' and '-'"
ROOT = "<root>"

# Keys that stay unambiguous after a dot; anything else is quoted so `models["llama3.1:8b"]` reads right.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


class EnvStr(str):
    """A string produced by ``${VAR}`` substitution.

    YAML has already typed every literal, so only substituted text may still need parsing: a numeric field
    accepts an ``EnvStr`` holding a number (``timeout_s: ${TIMEOUT:-30}``) but not a quoted ``"30"``.
    """

    __slots__ = ()


def key_path(base: str, key: object) -> str:
    """The path of mapping entry ``key`` under ``base``."""
    text = str(key)
    if not _PLAIN_KEY.fullmatch(text):
        return f"{base}[{json.dumps(text)}]"
    return f"{base}.{text}" if base else text


def index_path(base: str, index: int) -> str:
    """The path of list item ``index`` under ``base``."""
    return f"{base or ROOT}[{index}]"


def _fmt(x: float) -> str:
    """A bound as written: ``1000000``, not ``1e+06``; ``0.5`` stays ``0.5``."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


class Checker:
    """Collects ``path: message`` errors and warnings while a parser walks a document."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path or ROOT}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path or ROOT}: {message}")

    # -- containers -------------------------------------------------------------------------------------

    def record(
        self, value: object, path: str, allowed: Collection[str], *, required: Collection[str] = ()
    ) -> dict[str, object] | None:
        """A mapping with a fixed set of fields; None (error recorded) when ``value`` is not a mapping.

        Null values count as absent, so ``retry:`` with every line commented out means the defaults.
        """
        if not isinstance(value, dict):
            self.error(path, "must be a mapping")
            return None
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str) or key not in allowed:
                self.error(path, _unknown_field(key, allowed))
            elif item is not None:
                out[key] = item
        for key in required:
            if key not in out:
                self.error(key_path(path, key), "is required")
        return out

    def named(self, value: object, path: str) -> dict[str, object]:
        """A mapping from user-chosen names to entries (``providers:``, ``tenants:``); null means empty."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, "must be a mapping")
            return {}
        out: dict[str, object] = {}
        for key, item in value.items():
            if isinstance(key, str):
                out[key] = item
            else:
                self.error(path, f"name {key!r} must be a string")
        return out

    def items(self, value: object, path: str) -> list[tuple[str, object]]:
        """A list's items with their paths; null means empty."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, "must be a list")
            return []
        return [(index_path(path, i), item) for i, item in enumerate(value)]

    def names(
        self, value: object, path: str, *, known: Collection[str] | None = None, what: str = ""
    ) -> tuple[str, ...]:
        """A list of non-empty strings; with ``known``, each must be one of them (``unknown {what} 'x'``)."""
        out: list[str] = []
        for item_path, item in self.items(value, path):
            text = self.as_text(item, item_path, nonempty=True)
            if text is None:
                continue
            if known is not None and text not in known:
                self.error(item_path, f"unknown {what} {text!r}")
            out.append(text)
        return tuple(out)

    # -- scalars ----------------------------------------------------------------------------------------

    def as_text(self, value: object, path: str, *, nonempty: bool = False) -> str | None:
        if not isinstance(value, str):
            self.error(path, "must be a string")
            return None
        if nonempty and not value.strip():
            self.error(path, "must not be empty")
            return None
        return str(value)  # drop the EnvStr subclass: the config holds plain strings

    def text(
        self, d: dict[str, object], path: str, key: str, default: str = "", *, nonempty: bool = False
    ) -> str:
        if key not in d:
            return default
        value = self.as_text(d[key], key_path(path, key), nonempty=nonempty)
        return default if value is None else value

    def name(self, value: object, path: str, what: str) -> bool:
        """Whether ``value`` is a usable identifier (it becomes Redis key parts, metric labels, URL parts)."""
        if not isinstance(value, str):
            self.error(path, f"{what} {value!r} must be a string")
            return False
        if len(value) > MAX_NAME_LENGTH:
            self.error(path, f"{what} is {len(value)} characters long; the most is {MAX_NAME_LENGTH}")
            return False
        if not NAME_RE.fullmatch(value):
            self.error(path, f"invalid {what} {value!r}: {NAME_RULE}")
            return False
        return True

    def choice(self, d: dict[str, object], path: str, key: str, options: tuple[T, ...], default: T) -> T:
        if key not in d:
            return default
        value = d[key]
        if isinstance(value, str) and value in options:
            return options[options.index(value)]
        self.error(key_path(path, key), "must be one of " + ", ".join(options))
        return default

    def url(self, d: dict[str, object], path: str, key: str) -> str:
        value = self.text(d, path, key)
        if key in d and value and not value.startswith(("http://", "https://")):
            self.error(key_path(path, key), "must start with http:// or https://")
        # Adapters append their own paths, so a trailing slash would double up.
        return value.rstrip("/")

    def as_number(self, value: object, path: str) -> float | None:
        number: float
        if isinstance(value, bool):  # YAML's true/false are ints to Python; never a quantity here
            self.error(path, "must be a number")
            return None
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, EnvStr):
            try:
                number = float(value.strip())
            except ValueError:
                self.error(path, f"must be a number (the environment gave {str(value)!r})")
                return None
        else:
            self.error(path, "must be a number")
            return None
        if not math.isfinite(number):
            self.error(path, "must be a finite number")
            return None
        return number

    def opt_number(
        self,
        d: dict[str, object],
        path: str,
        key: str,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
    ) -> float | None:
        if key not in d:
            return None
        field_path = key_path(path, key)
        number = self.as_number(d[key], field_path)
        if number is None:
            return None
        if not _in_range(number, gt=gt, ge=ge, le=le):
            self.error(field_path, _range_message(gt=gt, ge=ge, le=le))
            return None
        return number

    def number(
        self,
        d: dict[str, object],
        path: str,
        key: str,
        default: float,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
    ) -> float:
        number = self.opt_number(d, path, key, gt=gt, ge=ge, le=le)
        return default if number is None else number

    def opt_integer(self, d: dict[str, object], path: str, key: str, *, ge: int) -> int | None:
        if key not in d:
            return None
        field_path = key_path(path, key)
        value = d[key]
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, EnvStr):
            try:
                number = int(value.strip())
            except ValueError:
                self.error(field_path, f"must be an integer (the environment gave {str(value)!r})")
                return None
        if number is None:
            self.error(field_path, "must be an integer")
            return None
        if number < ge:
            self.error(field_path, f"must be >= {ge}")
            return None
        return number

    def integer(self, d: dict[str, object], path: str, key: str, default: int, *, ge: int) -> int:
        number = self.opt_integer(d, path, key, ge=ge)
        return default if number is None else number


def _unknown_field(key: object, allowed: Collection[str]) -> str:
    message = f"unknown field {str(key)!r}"
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f"{message} (did you mean {close[0]!r}?)" if close else message


def _in_range(x: float, *, gt: float | None, ge: float | None, le: float | None) -> bool:
    return (gt is None or x > gt) and (ge is None or x >= ge) and (le is None or x <= le)


def _range_message(*, gt: float | None, ge: float | None, le: float | None) -> str:
    if ge is not None and le is not None:
        return f"must be between {_fmt(ge)} and {_fmt(le)}"
    if gt is not None:
        return f"must be > {_fmt(gt)}"
    if ge is not None:
        return f"must be >= {_fmt(ge)}"
    return f"must be <= {_fmt(le or 0.0)}"
