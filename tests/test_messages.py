"""What users read: the prompt is shown exactly, whatever it contains."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ponybot_core.messages import code_block


def test_a_code_block_cannot_be_closed_by_the_text():
    assert code_block("safe, solo") == "```\nsafe, solo\n```"
    shown = code_block("a ``` b ` **c**")
    assert shown.startswith("```\n") and shown.endswith("\n```")
    assert "``" not in shown[4:-4]
    assert shown[4:-4].replace("\u200b", "") == "a ``` b ` **c**"
    assert code_block("") == "```\n\u200b\n```"


def test_a_long_prompt_is_shortened_visibly():
    shown = code_block("x" * 50, limit=10)
    assert shown == "```\n" + "x" * 9 + "…\n```"


@given(st.text(max_size=300))
def test_the_shown_text_is_the_text(text):
    shown = code_block(text, limit=1000)
    assert shown.count("```") == 2
    assert shown[4:-4].replace("\u200b", "") == text.replace("\u200b", "")
