"""How many CLIP tokens a caption is, without transformers: the bot tells users which tags fall
past CLIP's 75-token window, and must not import the worker's libraries to do it.

This is CLIP's byte-level BPE as `transformers.CLIPTokenizer` runs it (NFC, whitespace
collapsed, lower case; split into letter runs, single digits and punctuation runs; bytes mapped
to printable characters; merges applied with `</w>` ending each word), over the merges file of
the SD 1.x tokenizer shipped in inference/sd1_config/tokenizer. Only counts are needed, so the
vocabulary is not loaded. tests/test_captions_tokens.py compares it with the real tokenizer.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

# The worker's tokenizer files. A path, not an import: importing `inference` is the worker's.
MERGES = Path(__file__).resolve().parent.parent / "inference/sd1_config/tokenizer/merges.txt"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
# Unicode White_Space, the tokenizer's `\s`. Python's isspace() also counts \x1c-\x1f.
_WHITE_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                         + "".join(map(chr, range(0x2000, 0x200B))))
_RUNS_OF_WHITE_SPACE = re.compile(f"[{''.join(sorted(_WHITE_SPACE))}]+")


@functools.cache
def _ranks() -> dict[tuple[str, str], int]:
    lines = MERGES.read_text(encoding="utf-8").splitlines()[1:]  # line 1 is `#version`
    pairs = (line.split() for line in lines if line)
    return {(a, b): rank for rank, (a, b) in enumerate(pairs)}


@functools.cache
def _byte_chars() -> tuple[str, ...]:
    """GPT-2's reversible byte -> printable character table, which CLIP uses too."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def _kind(char: str) -> str:
    if char in _WHITE_SPACE:
        return " "
    return unicodedata.category(char)[0] if unicodedata.category(char)[0] in "LN" else "P"


def _pieces(text: str) -> list[tuple[int, str]]:
    """CLIP's pre-tokenizer, with where each piece starts: `<|startoftext|>|<|endoftext|>|'s|
    't|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`, written out because `re`
    has no `\\p{L}`."""
    pieces: list[tuple[int, str]] = []
    i = 0
    while i < len(text):
        rest = text[i:]
        match = next((s for s in (*_SPECIAL, *_CONTRACTIONS) if rest.startswith(s)), None)
        kind = _kind(text[i])
        if match:
            end = i + len(match)
        elif kind == " ":
            i += 1
            continue
        elif kind == "N":
            end = i + 1
        else:
            end = i + 1
            while end < len(text) and _kind(text[end]) == kind:
                end += 1
        pieces.append((i, text[i:end]))
        i = end
    return pieces


@functools.lru_cache(maxsize=8192)
def _bpe_length(piece: str) -> int:
    if piece in _SPECIAL:
        return 1
    chars = _byte_chars()
    word = [chars[b] for b in piece.encode("utf-8")]
    word[-1] += "</w>"
    ranks = _ranks()
    while len(word) > 1:
        pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
        best = min(pairs, key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        merged: list[str] = []
        k = 0
        while k < len(word):
            if k < len(word) - 1 and (word[k], word[k + 1]) == best:
                merged.append(word[k] + word[k + 1])
                k += 2
            else:
                merged.append(word[k])
                k += 1
        word = merged
    return len(word)


def _normal(text: str) -> str:
    return _RUNS_OF_WHITE_SPACE.sub(" ", unicodedata.normalize("NFC", text)).lower()


def count(text: str) -> int:
    """The prompt tokens of `text`, without BOS/EOS, as the SD 1.x pipeline's tokenizer counts."""
    return sum(_bpe_length(piece) for _, piece in _pieces(_normal(text)))


def running_counts(tags: Sequence[str], separator: str) -> list[int]:
    """For each tag, about how many tokens the caption has up to and including it: exact but
    where punctuation at a tag's end merges with the separator into one piece."""
    parts = [_normal(tag) for tag in tags]
    ends, end = [], 0
    for i, part in enumerate(parts):
        end += len(part) + (len(separator) if i else 0)
        ends.append(end)
    pieces = _pieces(separator.join(parts))
    counts, total, k = [], 0, 0
    for end in ends:
        while k < len(pieces) and pieces[k][0] < end:
            total += _bpe_length(pieces[k][1])
            k += 1
        counts.append(total)
    return counts
