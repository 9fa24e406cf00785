"""cl100k_base (the tokenizer of OpenAI's embedding models) for chunking, built offline.

tiktoken downloads its rank files on first use; the sidecar may run where that is impossible, and it
does not import the gateway (whose ``gateway/tokens.py`` writes the files into tiktoken's cache). So the
encoding is built in memory from the same source the gateway uses, the ``toktok-rs`` wheel, which has
the ranks compiled in: no file, no network. Built once per process (~0.5 s), at start-up.
"""

from __future__ import annotations

import functools
import importlib

import tiktoken

NAME = "cl100k_base"
# tiktoken_ext/openai_public.py's cl100k_base, unchanged since tiktoken 0.5.
_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s"""
)
_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The cl100k_base encoding, from toktok-rs's compiled-in ranks."""
    core = importlib.import_module("toktok._toktok")
    ranks = {bytes(token): rank for rank, token in enumerate(core.Tokenizer(NAME).token_byte_values())}
    return tiktoken.Encoding(NAME, pat_str=_PAT_STR, mergeable_ranks=ranks, special_tokens=_SPECIAL)
