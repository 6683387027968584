"""The bot's CLIP token count (ponybot_request/clip_tokens.py) is the worker's: the same
tokenizer files through transformers' CLIPTokenizer, which the bot process may not import."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ponybot_request import clip_tokens

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.CLIPTokenizer.from_pretrained(clip_tokens.FILES)


def reference(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


@pytest.mark.parametrize("text", [
    "twilight sparkle, unicorn, solo",
    "pony s5_starlight unicorn glimmer this_will_end_in_communism scr100 bust mare portrait "
    "by=pierogarts female safe looking_at_you solo",
    "Don't!'s  ÉCOLE ポニー straße 123 ², Ⅻ <|endoftext|> soarin' applejack's",
    "a\u0301 naïve café 😀🐴 x:3 =d",
    "",
])  # fmt: skip
def test_counts_like_the_pipelines_tokenizer(tokenizer, text):
    assert clip_tokens.count(text) == reference(tokenizer, text)


# Characters this Python's Unicode tables know: the tokenizer's may be newer, and a code
# point unassigned here (a letter there) is nothing anyone types in a tag.
known_text = st.text(st.characters(exclude_categories=("Cn", "Cs", "Co")), max_size=80)


@settings(max_examples=300, deadline=None, database=None)
@given(known_text)
def test_counts_like_the_pipelines_tokenizer_for_any_text(tokenizer, text):
    assert clip_tokens.count(text) == reference(tokenizer, text)


def test_running_counts_end_with_the_whole_caption():
    tags = ["twilight sparkle", "unicorn", "solo"]
    counts = clip_tokens.running_counts(tags, ", ")
    assert counts == sorted(counts) and counts[-1] == clip_tokens.count(", ".join(tags))


# SD 2.x's and SDXL's tokenizers: the shipped files are the same BPE as SD 1.x's (OpenCLIP's
# `bpe_simple_vocab_16e6` is CLIP's); OpenCLIP pads with `!` (id 0) where CLIP pads with
# `<|endoftext|>`, after the prompt's tokens, and reads a typed `!` as text, as open_clip's own
# tokenizer did in training (the shipped `split_special_tokens`). So the count of a prompt's
# own tokens, all the bot measures, is the same for every family.
FAMILY_TOKENIZERS = ["sd2_config/tokenizer", "sdxl_config/tokenizer", "sdxl_config/tokenizer_2"]


@pytest.mark.parametrize("folder", FAMILY_TOKENIZERS)
@pytest.mark.parametrize("text", [
    "score_9, score_8_up, score_7_up, rating_safe, twilight sparkle, source_pony",
    "a unicorn mare reading a book in a library, Don't!'s ÉCOLE ポニー 123 😀🐴",
    "!!!, !, ! !",
])  # fmt: skip
def test_every_familys_tokenizer_counts_a_prompt_as_the_bot_does(folder, text):
    files = clip_tokens.FILES.parent.parent / folder
    assert files.is_dir(), f"the worker ships {files}"
    family = transformers.CLIPTokenizer.from_pretrained(files)
    assert clip_tokens.count(text) == reference(family, text)
    # Padded to CLIP's window as the pipelines pad: BOS, the prompt, EOS, then padding (`!` for
    # OpenCLIP), which the attention mask marks; the prompt's tokens are what the bot counted.
    padded = family(text, padding="max_length", max_length=77, truncation=True)
    assert sum(padded.attention_mask) - 2 == min(clip_tokens.count(text), 75)
