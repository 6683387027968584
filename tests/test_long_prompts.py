"""Long prompts: encoded whole in 75-token chunks (A1111-style), never cut; short prompts exactly
as diffusers encodes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.drawing.prompt_embeds import encode_prompts, split_chunks, tokenize
from inference.drawing.sampling import generators
from ponybot_core.config import Sampler
from ponybot_core.job import Job
from ponybot_testkit.sampling import sample, sample_with_info

CPU = torch.device("cpu")
TAGS = [
    "twilight sparkle", "rarity", "applejack", "fluttershy", "pinkie pie", "rainbow dash", "spike",
    "unicorn", "pegasus", "earth pony", "solo", "smiling", "looking at you", "sitting", "grass",
    "flower", "sky", "cloud", "tree", "sunset", "cute", "blushing", "open mouth", "wings", "horn",
    "hooves", "tail", "mane", "eyes closed", "happy", "book", "library", "castle", "forest",
    "river", "mountain", "night", "stars", "moon", "detailed background", "lake", "bridge", "rain",
    "snow", "pony", "dress", "hat", "scarf", "glasses", "apple", "cake", "balloon", "party",
]
PROMPT_75 = ", ".join(TAGS[:31])  # exactly CLIP's window
PROMPT_120 = ", ".join(TAGS)



@pytest.fixture
def pipe(tiny_pipe):
    return tiny_pipe


def job(prompt: str, negative: str = "", *, count: int = 1, seed: int = 7) -> Job:
    return Job(
        application_id=1, interaction_id=2, interaction_token="t", guild_id=None, channel_id=3,
        user_id=4, model_id="tiny", tags=prompt, prompt=prompt, negative_prompt=negative,
        seed=seed, steps=1, cfg=7.5, sampler=Sampler.DDIM, width=64, height=64, count=count,
    )


def diffusers_images(pipe, j: Job) -> np.ndarray:
    """What the pipeline draws from `prompt=` (its own encoding: long prompts truncated)."""
    return pipe(
        prompt=j.prompt, negative_prompt=j.negative_prompt or None,
        num_images_per_prompt=j.count, generator=generators(j), num_inference_steps=j.steps,
        guidance_scale=j.cfg, width=j.width, height=j.height, output_type="np",
    ).images


def to_uint8(images: np.ndarray) -> np.ndarray:
    # diffusers' numpy_to_pil: the same rounding as the PIL images `sample` returns.
    return (images * 255).round().astype(np.uint8)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def test_the_test_prompts_have_the_token_counts_they_claim(pipe) -> None:
    assert len(tokenize(pipe, PROMPT_75)) == 75
    assert len(tokenize(pipe, PROMPT_120)) == 120


# --- chunking ----------------------------------------------------------------------------------


def test_chunks_are_75_tokens_and_an_empty_prompt_is_one_empty_chunk() -> None:
    assert split_chunks([]) == [[]]
    assert [len(c) for c in split_chunks(list(range(75)))] == [75]
    assert [len(c) for c in split_chunks(list(range(76)))] == [75, 1]
    assert [len(c) for c in split_chunks(list(range(160)))] == [75, 75, 10]


def test_a_full_chunk_breaks_after_its_last_comma_so_tags_stay_whole() -> None:
    comma = -1
    ids = [1] * 70 + [comma] + [2] * 10  # the comma is the 71st token; the tag after it spans
    chunks = split_chunks(ids, comma_id=comma)
    assert chunks == [[1] * 70 + [comma], [2] * 10]
    # A comma further back than the backtrack window is ignored: a plain cut at 75.
    ids = [1] * 40 + [comma] + [2] * 40
    assert [len(c) for c in split_chunks(ids, comma_id=comma)] == [75, 6]
    assert [len(c) for c in split_chunks([1] * 70 + [comma] + [2] * 10, comma_id=comma,
                                         backtrack=0)] == [75, 6]


# --- short prompts: exactly diffusers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("twilight sparkle, unicorn, solo", "lowres, bad anatomy"),
        ("twilight sparkle, unicorn, solo", None),
        ("", None),
        (PROMPT_75, PROMPT_75),
    ],
)
def test_short_prompts_are_encoded_bit_identically_to_diffusers(pipe, prompt, negative) -> None:
    for count in (1, 3):
        ours = encode_prompts(pipe, prompt, negative, count)
        theirs, theirs_negative = pipe.encode_prompt(prompt, CPU, count, True, negative)
        assert ours.chunks == 1
        assert ours.note() is None
        assert torch.equal(ours.prompt_embeds, theirs)
        assert torch.equal(ours.negative_prompt_embeds, theirs_negative)


def test_short_prompts_draw_the_same_images_as_passing_the_prompt(pipe) -> None:
    j = job("twilight sparkle, unicorn, solo", "lowres, bad anatomy", count=2)
    assert np.array_equal(pixels(sample(pipe, j)), to_uint8(diffusers_images(pipe, j)))


# --- long prompts ------------------------------------------------------------------------------


def test_a_120_token_prompt_is_two_chunks_of_77_positions(pipe) -> None:
    encoded = encode_prompts(pipe, PROMPT_120, "lowres")
    hidden = pipe.text_encoder.config.hidden_size
    assert (encoded.tokens, encoded.negative_tokens, encoded.chunks) == (120, 2, 2)
    assert encoded.prompt_embeds.shape == (1, 154, hidden)
    assert encoded.negative_prompt_embeds.shape == (1, 154, hidden)
    assert encoded.note() == "prompt is 120 tokens: encoded in 2 chunks of 75"


def test_the_first_chunk_is_what_diffusers_sees_and_the_second_is_the_tail(pipe) -> None:
    # Without the comma backtrack the first chunk is exactly the first 75 tokens.
    encoded = encode_prompts(pipe, PROMPT_120, None, backtrack=0)
    truncated, _ = pipe.encode_prompt(PROMPT_120, CPU, 1, True, None)
    assert torch.equal(encoded.prompt_embeds[:, :77], truncated)
    tail = pipe.tokenizer.decode(tokenize(pipe, PROMPT_120)[75:])
    tail_alone = encode_prompts(pipe, tail, None).prompt_embeds
    assert torch.allclose(encoded.prompt_embeds[:, 77:], tail_alone, atol=1e-5)


def test_the_tail_of_a_long_prompt_changes_the_picture(pipe) -> None:
    other_tail = PROMPT_120.replace("cake, balloon, party", "night, moon, stars")
    assert tokenize(pipe, other_tail)[:75] == tokenize(pipe, PROMPT_120)[:75]
    # diffusers cuts both prompts to the same 75 tokens: the same picture...
    truncated = diffusers_images(pipe, job(PROMPT_120))
    assert np.array_equal(truncated, diffusers_images(pipe, job(other_tail)))
    # ...we read the whole prompt: different pictures, and not the truncated one.
    ours = pixels(sample(pipe, job(PROMPT_120)))
    assert not np.array_equal(ours, pixels(sample(pipe, job(other_tail))))
    assert not np.array_equal(ours, to_uint8(truncated))


def test_the_negative_prompt_is_padded_with_empty_chunks(pipe) -> None:
    encoded = encode_prompts(pipe, PROMPT_120, "lowres, bad anatomy")
    short = encode_prompts(pipe, "solo", "lowres, bad anatomy")
    empty = encode_prompts(pipe, "", None).prompt_embeds
    assert encoded.negative_prompt_embeds.shape == encoded.prompt_embeds.shape
    assert torch.allclose(encoded.negative_prompt_embeds[:, :77], short.negative_prompt_embeds,
                          atol=1e-5)
    assert torch.allclose(encoded.negative_prompt_embeds[:, 77:], empty, atol=1e-5)


def test_a_long_negative_pads_the_prompt(pipe) -> None:
    encoded = encode_prompts(pipe, "solo", PROMPT_120)
    empty = encode_prompts(pipe, "", None).prompt_embeds
    assert (encoded.tokens, encoded.negative_tokens, encoded.chunks) == (1, 120, 2)
    assert encoded.prompt_embeds.shape == encoded.negative_prompt_embeds.shape == (1, 154, 32)
    assert torch.allclose(encoded.prompt_embeds[:, 77:], empty, atol=1e-5)
    assert encoded.note() == "negative prompt is 120 tokens: encoded in 2 chunks of 75"


def test_count_repeats_the_embeddings_once_per_image(pipe) -> None:
    one = encode_prompts(pipe, PROMPT_120, "lowres")
    three = encode_prompts(pipe, PROMPT_120, "lowres", 3)
    assert three.prompt_embeds.shape == (3, 154, 32)
    for i in range(3):
        assert torch.equal(three.prompt_embeds[i], one.prompt_embeds[0])
        assert torch.equal(three.negative_prompt_embeds[i], one.negative_prompt_embeds[0])


def test_sample_with_info_says_how_the_prompt_was_encoded(pipe) -> None:
    sampled = sample_with_info(pipe, job(PROMPT_120, "lowres", count=2))
    assert len(sampled.images) == 2
    assert sampled.images[0].size == (64, 64)
    assert (sampled.tokens, sampled.negative_tokens, sampled.chunks) == (120, 2, 2)
    assert sampled.note == "prompt is 120 tokens: encoded in 2 chunks of 75"
    # One seeded generator per image: the two images differ.
    assert not np.array_equal(np.asarray(sampled.images[0]), np.asarray(sampled.images[1]))


def test_extra_pipeline_arguments_reach_the_diffusers_call(pipe) -> None:
    steps: list[int] = []

    def on_step_end(pipe, step, timestep, callback_kwargs):
        steps.append(step)
        return {}

    images = sample(pipe, job(PROMPT_120), callback_on_step_end=on_step_end)
    assert len(images) == 1
    assert steps == [0]


def test_sd2s_openclip_windows_pad_with_its_own_pad_token_like_diffusers() -> None:
    # OpenCLIP pads with `!` (id 0) after EOS, where SD 1.x repeats EOS (A1111's
    # `process_tokens`: "SD1 uses the same token for padding and end of text, while SD2 uses
    # different ones"): the first window of a long SD 2.x prompt is diffusers' own encoding.
    from ponybot_testkit.tiny_models import tiny_sd2_pipeline

    sd2 = tiny_sd2_pipeline()
    encoded = encode_prompts(sd2, PROMPT_120, None, backtrack=0)
    truncated, _ = sd2.encode_prompt(PROMPT_120, CPU, 1, True, None)
    assert encoded.chunks == 2
    assert torch.equal(encoded.prompt_embeds[:, :77], truncated)
