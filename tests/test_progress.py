"""Live progress and cancellation: the step callback on the real tiny pipeline, sampling in a
thread while the event loop edits. The throttle runs on a clock the test moves one fixed amount
per step, so which steps get an edit is exact, not a matter of timing."""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from PIL import Image

from inference.drawing.progress import (
    LATENT_RGB_FACTORS,
    ProgressReporter,
    SamplingCancelled,
    jpeg_of,
    latents_to_preview,
    preview_size,
)

STEPS = 10


@pytest.fixture
def pipe(tiny_pipe):
    return tiny_pipe


class StepClock:
    """Time moves only when a step ends: step i (0-based) ends at `(i + 1) * dt`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Edits:
    """An `edit` that records what it was given and when, and how many ran at once."""

    def __init__(self, clock: StepClock, hold: asyncio.Event | None = None,
                 on_edit: Callable[[int], None] | None = None) -> None:
        self.clock = clock
        self.hold = hold
        self.on_edit = on_edit
        self.calls: list[tuple[int, int, bytes | None, float]] = []
        self.running = 0
        self.max_running = 0

    @property
    def steps(self) -> list[int]:
        return [step for step, _, _, _ in self.calls]

    async def __call__(self, step: int, total: int, preview: bytes | None) -> None:
        self.calls.append((step, total, preview, self.clock.now))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.on_edit is not None:
                self.on_edit(step)
            if self.hold is not None:
                await self.hold.wait()
        finally:
            self.running -= 1


def wait_idle(reporter: ProgressReporter, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while reporter.busy:
        assert time.monotonic() < deadline, "the handed-over edit never finished"
        time.sleep(0.001)


def stepping(reporter: ProgressReporter, clock: StepClock, dt: float, seen: list[int], *,
             before: Callable[[int], None] | None = None,
             after: Callable[[int], None] | None = None,
             settle: Callable[[int], bool] = lambda step: True):
    """The reporter's callback, with the clock moved to the step's end first and, when
    `settle(step)`, the edit in flight (if any) awaited before the next step."""

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
        clock.now = (step + 1) * dt
        seen.append(step)
        if before is not None:
            before(step)
        out = reporter.on_step_end(pipe, step, timestep, kwargs)
        if after is not None:
            after(step)
        if settle(step):
            wait_idle(reporter)
        return out

    return callback


def run_pipe(pipe, callback, steps: int = STEPS):
    return pipe(
        prompt="pony, solo",
        num_inference_steps=steps,
        width=64,
        height=64,
        guidance_scale=1.0,  # no CFG batch: half the UNet work, same callback path
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="pil",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents"],
    ).images


async def test_edits_follow_the_steps_at_most_once_per_interval(pipe) -> None:
    clock = StepClock()
    edits = Edits(clock)
    reporter = ProgressReporter(edits, interval_s=1.0, clock=clock)
    seen: list[int] = []
    async with reporter:
        images = await asyncio.to_thread(
            run_pipe, pipe, stepping(reporter, clock, 0.4, seen))

    assert len(images) == 1
    assert seen == list(range(STEPS))  # the callback saw every step
    assert (reporter.step, reporter.total) == (STEPS, STEPS)
    # Steps end at 0.4, 0.8, 1.2, ... s; an edit is due 1 s after the start or the last edit.
    assert edits.steps == [3, 6, 9]
    assert all(total == STEPS for _, total, _, _ in edits.calls)
    times = [at for _, _, _, at in edits.calls]
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(times))
    assert reporter.edits == 3 and reporter.skipped == 0


async def test_preview_is_a_small_jpeg_of_the_image_size(pipe) -> None:
    clock = StepClock()
    edits = Edits(clock)
    reporter = ProgressReporter(edits, interval_s=1.0, clock=clock)
    async with reporter:
        await asyncio.to_thread(run_pipe, pipe, stepping(reporter, clock, 1.0, []))

    assert edits.steps == list(range(1, STEPS + 1))
    for _, _, preview, _ in edits.calls:
        assert preview is not None
        image = Image.open(io.BytesIO(preview))
        assert image.format == "JPEG"
        assert image.size == (64, 64)  # 64 px images: previews at their own size


async def test_an_sdxl_jobs_preview_uses_sdxls_latent_colours() -> None:
    from inference.drawing.progress import SD1_LATENTS, SDXL_LATENTS, preview_jpeg
    from ponybot_testkit.tiny_models import tiny_sdxl_pipeline

    clock = StepClock()
    edits = Edits(clock)
    reporter = ProgressReporter(edits, interval_s=1.0, clock=clock)
    latents_at: dict[int, torch.Tensor] = {}

    def keep(step: int) -> None:
        latents_at[step + 1] = kept[-1]

    kept: list[torch.Tensor] = []
    callback = stepping(reporter, clock, 1.0, [], before=keep)

    def recording(p: Any, step: int, t: Any, kwargs: dict[str, Any]) -> dict:
        kept.append(kwargs["latents"][:1].detach().clone())
        return callback(p, step, t, kwargs)

    async with reporter:
        await asyncio.to_thread(run_pipe, tiny_sdxl_pipeline(), recording, 2)
    assert edits.steps == [1, 2]
    for step, _, preview, _ in edits.calls:
        assert preview == preview_jpeg(latents_at[step], SDXL_LATENTS)
        assert preview != preview_jpeg(latents_at[step], SD1_LATENTS)


async def test_previews_off_edits_without_preview(pipe) -> None:
    clock = StepClock()
    edits = Edits(clock)
    reporter = ProgressReporter(edits, interval_s=1.0, previews=False, clock=clock)
    async with reporter:
        await asyncio.to_thread(run_pipe, pipe, stepping(reporter, clock, 2.0, []), 3)
    assert edits.steps == [1, 2, 3]
    assert all(preview is None for _, _, preview, _ in edits.calls)


async def test_slow_edit_is_never_piled_up_and_later_steps_are_skipped(pipe) -> None:
    clock = StepClock()
    hold = asyncio.Event()
    edits = Edits(clock, hold=hold)
    reporter = ProgressReporter(edits, interval_s=1.0, clock=clock)
    loop = asyncio.get_running_loop()

    def release_after_step_5(step: int) -> None:
        if step == 4:
            loop.call_soon_threadsafe(hold.set)

    async with reporter:
        await asyncio.to_thread(
            run_pipe, pipe,
            stepping(reporter, clock, 1.5, [], after=release_after_step_5,
                     settle=lambda step: step >= 4))

    # Every step is due (1.5 s apart). The first edit hangs until after step 5: steps 2-5 are
    # skipped, not queued; once it is done, editing goes on.
    assert edits.steps == [1, 6, 7, 8, 9, 10]
    assert edits.max_running == 1
    assert reporter.skipped == 4


async def test_leaving_waits_for_the_edit_in_flight(pipe) -> None:
    clock = StepClock()
    hold = asyncio.Event()
    finished: list[int] = []

    async def slow_edit(step: int, total: int, preview: bytes | None) -> None:
        await hold.wait()
        finished.append(step)

    reporter = ProgressReporter(slow_edit, interval_s=1.0, clock=clock)
    async with reporter:
        await asyncio.to_thread(
            run_pipe, pipe, stepping(reporter, clock, 1.0, [], settle=lambda step: False), 3)
        assert reporter.busy  # sampling is over, the step-1 edit is still on its way
        asyncio.get_running_loop().call_later(0.05, hold.set)
    # The result edit comes after this block: no progress edit may still be on its way.
    assert not reporter.busy
    assert finished == [1]


async def test_cancel_stops_sampling_at_the_next_step(pipe) -> None:
    clock = StepClock()
    reporter: ProgressReporter

    def cancel_from_the_event_loop(step: int) -> None:
        reporter.cancel.set()

    edits = Edits(clock, on_edit=cancel_from_the_event_loop)
    reporter = ProgressReporter(edits, interval_s=1.0, clock=clock)
    seen: list[int] = []
    with pytest.raises(SamplingCancelled) as cancelled:
        async with reporter:
            await asyncio.to_thread(run_pipe, pipe, stepping(reporter, clock, 0.4, seen), 20)

    # The first edit (after step 3) asks to cancel; step 4 is the last one to run.
    assert edits.steps == [3]
    assert seen == [0, 1, 2, 3]
    assert (cancelled.value.step, cancelled.value.total) == (4, 20)


async def test_progress_off_makes_no_edits_but_still_cancels(pipe) -> None:
    clock = StepClock()
    edits = Edits(clock)
    reporter = ProgressReporter(edits, interval_s=1.0, enabled=False, clock=clock)
    seen: list[int] = []

    def cancel_at_step_6(step: int) -> None:
        if step == 5:
            reporter.cancel.set()

    async with reporter:
        images = await asyncio.to_thread(run_pipe, pipe, stepping(reporter, clock, 5.0, seen))
    assert len(images) == 1 and seen == list(range(STEPS))
    assert edits.calls == [] and reporter.edits == 0

    seen.clear()
    reporter = ProgressReporter(edits, interval_s=1.0, enabled=False, clock=clock)
    with pytest.raises(SamplingCancelled):
        async with reporter:
            await asyncio.to_thread(
                run_pipe, pipe, stepping(reporter, clock, 5.0, seen, before=cancel_at_step_6))
    assert seen == [0, 1, 2, 3, 4, 5]
    assert edits.calls == []


async def test_failing_edits_never_stop_sampling_and_give_up_after_three(pipe) -> None:
    clock = StepClock()
    attempts: list[int] = []

    async def gone(step: int, total: int, preview: bytes | None) -> None:
        attempts.append(step)
        raise RuntimeError("404 Unknown Webhook")

    reporter = ProgressReporter(gone, interval_s=1.0, clock=clock)
    async with reporter:
        images = await asyncio.to_thread(run_pipe, pipe, stepping(reporter, clock, 1.0, []))
    assert len(images) == 1
    assert attempts == [1, 2, 3]
    assert reporter.edits == 0


async def test_leaving_with_an_error_cancels_the_sampling_thread() -> None:
    async def edit(step: int, total: int, preview: bytes | None) -> None:
        pass

    reporter = ProgressReporter(edit, interval_s=3.0)
    with pytest.raises(asyncio.CancelledError):
        async with reporter:
            raise asyncio.CancelledError
    assert reporter.cancel.is_set()


def test_interval_below_one_second_is_refused() -> None:
    async def edit(step: int, total: int, preview: bytes | None) -> None:
        pass

    with pytest.raises(ValueError, match="interval_s"):
        ProgressReporter(edit, interval_s=0.5)


# --- previews ---------------------------------------------------------------------------------


def test_preview_uses_the_sd15_latent_rgb_factors() -> None:
    for channel, factors in enumerate(LATENT_RGB_FACTORS):
        latents = torch.zeros(2, 4, 8, 8)
        latents[0, channel] = 1.0
        latents[1] = 5.0  # only the first image of the batch is shown
        image = latents_to_preview(latents)
        expected = tuple(round((f + 1) * 127.5) for f in factors)
        assert image.mode == "RGB"
        assert image.getpixel((32, 32)) == expected


@pytest.mark.parametrize(
    ("latent_hw", "size"),
    [((8, 8), (64, 64)), ((64, 64), (256, 256)), ((96, 64), (171, 256)), ((64, 96), (256, 171))],
)
def test_preview_size_keeps_the_aspect_and_is_at_most_256_px(latent_hw, size) -> None:
    assert preview_size(*latent_hw) == size
    image = latents_to_preview(torch.randn(1, 4, *latent_hw, dtype=torch.float16))
    assert image.size == size
    decoded = Image.open(io.BytesIO(jpeg_of(image)))
    assert decoded.format == "JPEG" and decoded.size == size


def test_preview_refuses_latents_that_are_not_sd1() -> None:
    with pytest.raises(ValueError, match="latents"):
        latents_to_preview(torch.zeros(1, 16, 8, 8))


def test_the_callback_only_records_before_the_reporter_starts() -> None:
    """Not entered yet (no event loop to hand to): the callback records the step, edits nothing."""

    async def edit(step: int, total: int, preview: bytes | None) -> None:
        raise AssertionError("no edit without a running reporter")

    reporter = ProgressReporter(edit, interval_s=1.0, clock=lambda: 100.0)

    class Pipe:
        num_timesteps = 7

    done = threading.Event()

    def call() -> None:
        reporter.on_step_end(Pipe(), 2, 0, {"latents": torch.zeros(1, 4, 8, 8)})
        done.set()

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(5)
    assert done.is_set() and (reporter.step, reporter.total) == (3, 7)
