"""How many CLIP tokens a caption is, without transformers: the bot tells users which tags fall
past CLIP's 75-token window, and must not import the worker's libraries to do it.

The tokenizer is Hugging Face's `tokenizers` (Rust, no torch), set up the way transformers
builds its fast CLIP tokenizer (`convert_slow_tokenizer.CLIPConverter`: NFC, whitespace
collapsed, lower case; split into letter runs, single digits and punctuation runs; byte-level
BPE with `</w>` ending each word) over the vocabulary and merges of the SD 1.x tokenizer the
worker ships in inference/sd1_config/tokenizer. tests/test_captions_tokens.py compares its
counts with transformers' CLIPTokenizer over the same files.

SD 2.x's and SDXL's OpenCLIP tokenizers (inference/sd2_config/tokenizer,
sdxl_config/tokenizer_2) ship the same vocabulary and merges, byte for byte; they pad with `!`
(id 0) where CLIP pads with `<|endoftext|>`, after the prompt's tokens, and read a typed `!` as
text (`split_special_tokens`, as open_clip's own tokenizer did in training), so the count of a
prompt's own tokens is the same for every family.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

# The worker's tokenizer files. A path, not an import: importing `inference` is the worker's.
FILES = Path(__file__).resolve().parent.parent / "inference/sd1_config/tokenizer"
_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]
# CLIP's pre-tokenizer pattern (transformers' CLIPConverter).
_PIECES = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@functools.cache
def _tokenizer() -> Tokenizer:
    bpe = BPE.from_file(str(FILES / "vocab.json"), str(FILES / "merges.txt"),
                        continuing_subword_prefix="", end_of_word_suffix="</w>",
                        unk_token="<|endoftext|>", fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PIECES), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])  # fmt: skip
    tokenizer.add_special_tokens(_SPECIAL)  # typed in a prompt, each is one token
    return tokenizer


def count(text: str) -> int:
    """The prompt tokens of `text`, without BOS/EOS, as every family's pipeline tokenizer counts
    (SD 1.x's CLIP, SD 2.x's and SDXL's OpenCLIP)."""
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


def running_counts(tags: Sequence[str], separator: str) -> list[int]:
    """For each tag, how many tokens the caption has up to and including it: the tokens that
    start within it or before it (punctuation at a tag's end that merges with the separator
    into one token counts with the tag)."""
    ends, end = [], 0
    for i, tag in enumerate(tags):
        end += len(tag) + (len(separator) if i else 0)
        ends.append(end)
    starts = [start for start, _ in
              _tokenizer().encode(separator.join(tags), add_special_tokens=False).offsets]
    counts, k = [], 0
    for end in ends:
        while k < len(starts) and starts[k] < end:
            k += 1
        counts.append(k)
    return counts
