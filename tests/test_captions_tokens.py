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
