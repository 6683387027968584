"""The worker draws with SD 2.x (v-prediction) and SDXL pipelines through every feature:
batching, prompt encoding with CLIP skip and long prompts, samplers, img2img and hires, SDXL's
size conditioning, progress previews, fp16 VAE safety and the parameters text.

Real tiny diffusers pipelines (ponybot_testkit.tiny_models), shaped like the real ones."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from inference.drawing.calls import draw
from inference.drawing.img2img import img2img_view
from inference.drawing.progress import (
    SD1_LATENTS,
    SDXL_LATENTS,
    ProgressReporter,
    SamplingCancelled,
    latent_format_of,
    latents_to_preview,
)
from inference.drawing.prompt_embeds import TextOptions, encode_prompts
from inference.drawing.sampling import sample_batch
from inference.drawing.schedulers import make_scheduler, set_scheduler
from inference.results.model_hash import ModelHashes, autov2
from inference.results.post import image_parameters
from ponybot_core.config import (
    CaptionProfile,
    LongPrompts,
    ModelEntry,
    PredictionType,
    Sampler,
    WorkerConfig,
)
from ponybot_core.hires_plan import HiresPass
from ponybot_core.job import JobKind
from ponybot_testkit.tiny_models import tiny_pipeline, tiny_sd2_pipeline, tiny_sdxl_pipeline
from ponybot_testkit.world import make_job

# 45 comma-separated tags: well over 75 tokens.
LONG_NEGATIVE = ", ".join(f"bad thing {i}" for i in range(40))
LONG_PROMPT = ", ".join(f"pony tag {i}" for i in range(40))


@pytest.fixture(scope="module")
def sd1():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def sd2():
    return tiny_sd2_pipeline()


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl_pipeline()


def entry(**fields: Any) -> ModelEntry:
    return ModelEntry(id="tiny", name="Tiny", path=Path("tiny"), **fields)


def truncating(**fields: Any) -> ModelEntry:
    return entry(caption=CaptionProfile(long_prompts=LongPrompts.TRUNCATE), **fields)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _tower_ids(tokenizer: Any, text: str) -> torch.Tensor:
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


# --- prompt encoding ------------------------------------------------------------------------


@pytest.mark.parametrize("clip_skip", [1, 2, 3])
def test_sd2_clip_skip_is_a1111s_layer_minus_k_then_the_final_layer_norm(sd2, clip_skip):
    # A1111 modules/sd_hijack_clip.py: hidden_states[-k], final_layer_norm (k > 1) or the last
    # hidden state (k = 1); diffusers' encode_prompt(clip_skip=k - 1) computes the same.
    ours = encode_prompts(sd2, "pony, solo", "lowres", options=TextOptions(clip_skip=clip_skip))
    encoder = sd2.text_encoder
    out = encoder(_tower_ids(sd2.tokenizer, "pony, solo"), output_hidden_states=True)
    expected = out.last_hidden_state if clip_skip == 1 else \
        encoder.final_layer_norm(out.hidden_states[-clip_skip])
    assert torch.equal(ours.prompt_embeds, expected)
    if clip_skip == 1:  # and exactly what the pipeline itself computes
        theirs, negative = sd2.encode_prompt("pony, solo", "cpu", 1, True, "lowres")
        assert torch.equal(ours.prompt_embeds, theirs)
        assert torch.equal(ours.negative_prompt_embeds, negative)


@pytest.mark.parametrize("clip_skip", [2, 3])
def test_sdxl_clip_skip_matches_diffusers_encode_prompt_on_both_towers(sdxl, clip_skip):
    # diffusers' SDXL default (clip_skip=None) is hidden_states[-2] of both towers = A1111's
    # and ComfyUI's "clip skip 2"; its clip_skip=j is hidden_states[-(j + 2)].
    ours = encode_prompts(sdxl, "pony, solo", "lowres", options=TextOptions(clip_skip=clip_skip))
    theirs = sdxl.encode_prompt(prompt="pony, solo", device="cpu", num_images_per_prompt=1,
                                do_classifier_free_guidance=True, negative_prompt="lowres",
                                clip_skip=None if clip_skip == 2 else clip_skip - 2)
    assert torch.equal(ours.prompt_embeds, theirs[0])
    assert torch.equal(ours.pooled_prompt_embeds, theirs[2])
    assert torch.equal(ours.negative_pooled_prompt_embeds, theirs[3])
    # diffusers reads the negative at hidden_states[-2] whatever clip_skip says; A1111 and
    # ComfyUI read both prompts at the same layer, and so do we.
    as_positive = sdxl.encode_prompt(prompt="lowres", device="cpu", num_images_per_prompt=1,
                                     do_classifier_free_guidance=False,
                                     clip_skip=None if clip_skip == 2 else clip_skip - 2)
    assert torch.equal(ours.negative_prompt_embeds, as_positive[0])


def test_sdxl_clip_skip_1_is_the_last_layer_of_both_towers_without_the_norm(sdxl):
    ours = encode_prompts(sdxl, "pony, solo", "lowres", options=TextOptions(clip_skip=1))
    last = [encoder(_tower_ids(tokenizer, "pony, solo"), output_hidden_states=True
                    ).hidden_states[-1]
            for tokenizer, encoder in ((sdxl.tokenizer, sdxl.text_encoder),
                                       (sdxl.tokenizer_2, sdxl.text_encoder_2))]
    assert torch.equal(ours.prompt_embeds, torch.cat(last, dim=-1))
    skip2 = encode_prompts(sdxl, "pony, solo", "lowres", options=TextOptions(clip_skip=2))
    assert not torch.equal(ours.prompt_embeds, skip2.prompt_embeds)
    # The pooled embedding is the last layer's, projected, whatever the skip (sgm's `pool`).
    assert torch.equal(ours.pooled_prompt_embeds, skip2.pooled_prompt_embeds)


def test_a_clip_skip_deeper_than_the_text_tower_is_refused(sd2):
    layers = sd2.text_encoder.config.num_hidden_layers
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompts(sd2, "pony", options=TextOptions(clip_skip=layers + 1))


def test_an_empty_sdxl_negative_is_zeros_like_a1111_and_diffusers(sdxl):
    ours = encode_prompts(sdxl, "pony, solo", "", options=TextOptions(clip_skip=2))
    theirs = sdxl.encode_prompt(prompt="pony, solo", device="cpu", num_images_per_prompt=1,
                                do_classifier_free_guidance=True, negative_prompt=None)
    assert torch.equal(ours.negative_prompt_embeds, theirs[1])
    assert torch.equal(ours.negative_pooled_prompt_embeds, theirs[3])
    assert not ours.negative_prompt_embeds.any()


def test_a_long_sdxl_prompt_is_chunked_on_both_towers_with_the_first_chunks_pool(sdxl):
    options = TextOptions(clip_skip=2)
    encoded = encode_prompts(sdxl, LONG_PROMPT, "lowres", options=options, backtrack=0)
    width = sdxl.unet.config.cross_attention_dim
    assert encoded.chunks > 1
    assert encoded.prompt_embeds.shape == (1, encoded.chunks * 77, width)
    assert encoded.negative_prompt_embeds.shape == encoded.prompt_embeds.shape
    ids = sdxl.tokenizer(LONG_PROMPT, add_special_tokens=False).input_ids
    head = sdxl.tokenizer.decode(ids[:75])
    first = encode_prompts(sdxl, head, "lowres", options=options)
    # Both towers' first window is the first 75 tokens, and the pooled output is its own.
    assert torch.allclose(encoded.prompt_embeds[:, :77], first.prompt_embeds, atol=1e-5)
    assert torch.allclose(encoded.pooled_prompt_embeds, first.pooled_prompt_embeds, atol=1e-5)


@pytest.mark.parametrize("make", [tiny_pipeline, tiny_sdxl_pipeline], ids=["sd1", "sdxl"])
def test_a_long_negative_never_pads_a_truncating_models_prompt_into_a_second_chunk(make):
    pipe = make()
    job = make_job(model_id="tiny", prompt="pony, solo", negative_prompt=LONG_NEGATIVE)
    [sampled] = draw(pipe, [job], None, WorkerConfig(), {}, truncating(clip_skip=2))
    assert sampled.chunks == 1
    encoded = encode_prompts(pipe, "pony, solo", LONG_NEGATIVE,
                             options=TextOptions(clip_skip=2, truncate=True))
    assert encoded.prompt_embeds.shape[1] == encoded.negative_prompt_embeds.shape[1] == 77


def test_a_truncating_model_cuts_a_long_prompt_exactly_as_clip_did(sd1, sdxl):
    ours = encode_prompts(sd1, LONG_PROMPT, LONG_NEGATIVE, options=TextOptions(truncate=True))
    theirs = sd1.encode_prompt(LONG_PROMPT, "cpu", 1, True, LONG_NEGATIVE)
    assert torch.equal(ours.prompt_embeds, theirs[0])
    assert torch.equal(ours.negative_prompt_embeds, theirs[1])
    assert "the rest was left out" in (ours.note() or "")
    xl = encode_prompts(sdxl, LONG_PROMPT, "lowres", options=TextOptions(clip_skip=2,
                                                                         truncate=True))
    xl_theirs = sdxl.encode_prompt(prompt=LONG_PROMPT, device="cpu", num_images_per_prompt=1,
                                   do_classifier_free_guidance=True, negative_prompt="lowres")
    assert torch.equal(xl.prompt_embeds, xl_theirs[0])
    assert torch.equal(xl.pooled_prompt_embeds, xl_theirs[2])


# --- sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sd2", "sdxl"])
def test_two_batched_jobs_get_the_pictures_each_gets_alone(arch, sd2, sdxl):
    pipe = sd2 if arch == "sd2" else sdxl
    model = entry(clip_skip=2 if arch == "sdxl" else 1)
    sampler = Sampler.EULER_A if arch == "sdxl" else Sampler.DDIM
    jobs = [make_job(interaction_id=i, seed=10 + i, prompt=p, sampler=sampler, count=c)
            for i, (p, c) in enumerate([("pony, solo", 1), ("unicorn, flying", 2)])]
    together = sample_batch(pipe, jobs, model=model)
    alone = [sample_batch(pipe, [job], model=model)[0] for job in jobs]
    for both, single in zip(together, alone, strict=True):
        assert len(both.images) == len(single.images)
        for a, b in zip(both.images, single.images, strict=True):
            assert a.size == (64, 64)
            assert np.abs(pixels(a) - pixels(b)).max() <= 1
    assert not np.array_equal(pixels(together[0].images[0]), pixels(together[1].images[0]))


def test_sdxl_is_conditioned_on_the_pictures_size_and_a_zero_crop(sdxl):
    seen: list[torch.Tensor] = []
    hook = sdxl.unet.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()),
        with_kwargs=True)
    try:
        sample_batch(sdxl, [make_job(width=64, height=96, steps=1)], model=entry(clip_skip=2))
        job = make_job(kind=JobKind.VARIATION, strength=0.5, width=96, height=64, steps=2)
        draw(sdxl, [job], Image.new("RGB", (50, 40), "red"), WorkerConfig(), {},
             entry(clip_skip=2))
    finally:
        hook.remove()
    # (original h, w, crop top, left, target h, w), for the prompt and the negative.
    assert seen[0].tolist() == [[96, 64, 0, 0, 96, 64]] * 2
    assert seen[-1].tolist() == [[64, 96, 0, 0, 64, 96]] * 2


def test_every_sampler_keeps_sd2s_v_prediction_and_an_entry_can_override_it(sd2):
    for sampler in Sampler:
        assert make_scheduler(sd2.scheduler.config, sampler).config.prediction_type == \
            "v_prediction"
        assert make_scheduler(sd2.scheduler.config, sampler, PredictionType.EPSILON
                              ).config.prediction_type == "epsilon"
    pipe = tiny_sd2_pipeline()
    pipe.scheduler = make_scheduler(pipe.scheduler.config, Sampler.DDIM, PredictionType.EPSILON)
    sample_batch(pipe, [make_job(steps=1)], model=entry(prediction=PredictionType.V_PREDICTION))
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_v_prediction_draws_a_different_picture_than_epsilon_from_the_same_weights(sd2):
    job = make_job(steps=2)
    v = sample_batch(sd2, [job], model=entry())[0].images[0]
    eps = sample_batch(sd2, [job], model=entry(prediction=PredictionType.EPSILON))[0].images[0]
    assert not np.array_equal(pixels(v), pixels(eps))


def test_euler_a_on_sdxl_keeps_the_models_leading_timestep_spacing(sdxl):
    scheduler = set_scheduler(tiny_sdxl_pipeline(), Sampler.EULER_A)
    assert scheduler.config.timestep_spacing == sdxl.scheduler.config.timestep_spacing
    assert scheduler.config.steps_offset == 1


@pytest.mark.parametrize("arch", ["sd2", "sdxl"])
def test_variations_and_hires_draw_at_their_sizes_from_the_same_weights(arch, sd2, sdxl):
    pipe = sd2 if arch == "sd2" else sdxl
    view = img2img_view(pipe)
    assert view.unet is pipe.unet and view.vae is pipe.vae
    if arch == "sdxl":
        assert view.text_encoder_2 is pipe.text_encoder_2
        assert view.config.requires_aesthetics_score is False
    model = entry(clip_skip=2 if arch == "sdxl" else 1)
    variation = make_job(kind=JobKind.VARIATION, strength=0.6, width=64, height=96, count=2)
    [varied] = draw(pipe, [variation], Image.new("RGB", (100, 80), "blue"), WorkerConfig(), {},
                    model)
    assert [im.size for im in varied.images] == [(64, 96), (64, 96)]
    hires = make_job(hires=HiresPass(width=128, height=96, strength=0.5, steps=2),
                     width=64, height=48 + 16)
    [refined] = draw(pipe, [hires], None, WorkerConfig(), {}, model)
    assert [im.size for im in refined.images] == [(128, 96)]


def test_a_cancel_stops_sdxl_at_the_next_step():
    cancel = threading.Event()
    reporter = ProgressReporter(_no_edit, interval_s=1.0, cancel=cancel)
    pipe = tiny_sdxl_pipeline()
    steps: list[int] = []

    def stop_after_first(p: Any, step: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        steps.append(step)
        cancel.set()
        return reporter.on_step_end(p, step, t, kwargs)

    with pytest.raises(SamplingCancelled):
        sample_batch(pipe, [make_job(steps=5)], model=entry(clip_skip=2),
                     callback_on_step_end=stop_after_first)
    assert steps == [0]


async def _no_edit(step: int, total: int, preview: bytes | None) -> None:
    await asyncio.sleep(0)


# --- fp16 safety ------------------------------------------------------------------------------


@pytest.mark.parametrize("force_upcast", [True, False])
def test_an_fp16_sdxl_vae_decodes_in_fp32_unless_it_is_the_fp16_fix(force_upcast):
    pipe = tiny_sdxl_pipeline()
    pipe.vae.register_to_config(force_upcast=force_upcast)
    # All in fp16, as on a GPU (the VAE alone for the upcast case: faster on a CPU).
    (pipe if not force_upcast else pipe.vae).to(torch.float16)
    seen: list[torch.dtype] = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda _m, a: seen.append(a[0].dtype))
    try:
        [sampled] = sample_batch(pipe, [make_job(steps=1)], model=entry(clip_skip=2))
    finally:
        hook.remove()
    assert seen == [torch.float32 if force_upcast else torch.float16]
    assert pipe.vae.dtype == torch.float16  # put back for the next job
    assert sampled.images[0].size == (64, 64)


def test_sd2_768_v_attention_is_upcast_by_its_config(sd2):
    # With SDPA (what the worker uses, inference/models/device.py) fp16 attention runs in
    # kernels that accumulate in fp32, like xformers; only a GPU can show the NaNs without.
    assert sd2.unet.config.upcast_attention is True


# --- previews ---------------------------------------------------------------------------------


def test_sdxl_previews_use_comfyuis_sdxl_latent_colours(sdxl, sd2):
    assert latent_format_of(sdxl) is SDXL_LATENTS
    assert latent_format_of(sd2) is SD1_LATENTS
    latents = torch.zeros(1, 4, 128, 96)
    image = latents_to_preview(latents, latent_format=SDXL_LATENTS)
    assert image.size == (192, 256)
    # Zero latents show the bias alone: ComfyUI's SDXL latent_rgb_factors_bias.
    expected = [round((b + 1) * 127.5) for b in SDXL_LATENTS.bias]
    assert [abs(a - b) <= 1 for a, b in zip(image.getpixel((5, 5)), expected, strict=True)] == \
        [True] * 3
    assert latents_to_preview(latents).getpixel((5, 5)) == (128, 128, 128)


# --- parameters -------------------------------------------------------------------------------


def test_parameters_say_clip_skip_and_the_model_hash_where_a1111_writes_them():
    job = make_job(prompt="score_9, pony", negative_prompt="", seed=7, steps=25, cfg=7.0,
                   sampler=Sampler.EULER_A, width=1024, height=1024,
                   hires=HiresPass(width=1536, height=1536, strength=0.5, steps=20))
    text = image_parameters(job, 7, "Pony Diffusion V6 XL", None, clip_skip=2,
                            model_hash="67ab2fd8ec")
    assert text == (
        "score_9, pony\n"
        "Steps: 25, Sampler: Euler a, CFG scale: 7, Seed: 7, Size: 1024x1024, "
        "Model hash: 67ab2fd8ec, Model: Pony Diffusion V6 XL, Denoising strength: 0.5, "
        "Clip skip: 2, Hires upscale: 1.5, Hires resize: 1536x1536, Hires steps: 20, "
        "Hires upscaler: Lanczos")
    plain = image_parameters(make_job(seed=1), 1, "Tiny", None)
    assert "Clip skip" not in plain and "Model hash" not in plain


def test_the_model_hash_is_a1111s_autov2_computed_once_per_file(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"pony" * 300_000)
    hashes = ModelHashes()
    assert hashes.known("v6-xl") is None
    first = hashes.compute("v6-xl", model)
    assert first == autov2(model) == __import__("hashlib").sha256(model.read_bytes()
                                                                  ).hexdigest()[:10]
    assert hashes.compute("v6-xl", model) == first and hashes.computed == 1
    assert hashes.known("v6-xl") == first
    assert hashes.compute("folder", tmp_path) is None  # a diffusers folder has no hash
