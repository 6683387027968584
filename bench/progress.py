"""What live progress costs sampling: the tiny model sampled with and without the reporter.

Sampling runs in a thread exactly as in the worker (`asyncio.to_thread`) while the event loop
runs the reporter. Modes, interleaved run by run so machine load hits them alike:

- none      no callback at all;
- progress  the reporter at `--interval` s (1 s, the least the config allows) with an edit that
            awaits a simulated 50 ms HTTP call, previews on;
- every     worst case: a clock that makes an edit due at every step and an edit that returns
            at once, so a preview is copied, decoded and JPEG-encoded for (almost) every step.

Also prints the callback's own cost per step and the preview's decode + encode time for a
512 x 512 image's latents (4 x 64 x 64).

    python bench/progress.py [--steps 30] [--sizes 64 256] [--runs 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from core.config import ModelEntry
from inference.loading import load_pipeline
from inference.progress import ProgressReporter, preview_jpeg
from tests.tiny_models import build_tiny_pipeline

MODES = ("none", "progress", "every")
HTTP_S = 0.05


class EveryStepClock:
    """Each reading is one interval later than the last: every step finds an edit due."""

    def __init__(self, interval_s: float) -> None:
        self.ticks = itertools.count()
        self.interval_s = interval_s

    def __call__(self) -> float:
        return next(self.ticks) * self.interval_s


async def one_run(pipe, mode: str, size: int, steps: int, interval_s: float,
                  device: str) -> tuple[float, int]:
    """Seconds the sampling call took, and how many edits were made during it."""
    edits = 0

    async def http_edit(step: int, total: int, preview: bytes | None) -> None:
        nonlocal edits
        await asyncio.sleep(HTTP_S)
        edits += 1

    async def instant_edit(step: int, total: int, preview: bytes | None) -> None:
        nonlocal edits
        edits += 1

    def sample(kwargs: dict) -> None:
        pipe(prompt="pony, solo", num_inference_steps=steps, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(0), output_type="latent", **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()

    if mode == "none":
        start = time.perf_counter()
        await asyncio.to_thread(sample, {})
        return time.perf_counter() - start, 0
    if mode == "progress":
        reporter = ProgressReporter(http_edit, interval_s=interval_s)
    else:
        reporter = ProgressReporter(instant_edit, interval_s=1.0, clock=EveryStepClock(1.0))
    async with reporter:
        start = time.perf_counter()
        await asyncio.to_thread(sample, reporter.pipeline_kwargs())
        elapsed = time.perf_counter() - start
    return elapsed, edits


async def callback_cost_us(n: int = 20000) -> float:
    """The callback's per-step cost when no edit is due (the common case), in microseconds."""

    async def edit(step: int, total: int, preview: bytes | None) -> None:
        pass

    class Pipe:
        num_timesteps = 30

    reporter = ProgressReporter(edit, interval_s=1000.0)
    latents = {"latents": torch.zeros(1, 4, 64, 64)}
    async with reporter:
        start = time.perf_counter()
        for i in range(n):
            reporter.on_step_end(Pipe, i % 30, 0, latents)
        return (time.perf_counter() - start) / n * 1e6


def preview_cost_ms(device: str, n: int = 200) -> float:
    latents = torch.randn(1, 4, 64, 64, device=device)
    preview_jpeg(latents)
    start = time.perf_counter()
    for _ in range(n):
        preview_jpeg(latents)
    return (time.perf_counter() - start) / n * 1e3


async def bench(steps: int, sizes: list[int], runs: int, interval_s: float, device: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="ponybench-progress-"))
    folder = build_tiny_pipeline(work / "tiny")
    pipe = load_pipeline(ModelEntry(id="tiny", name="t", path=folder), base_dir=work)
    pipe.to(device)
    print(f"bench/progress.py  tiny model, steps={steps}, runs={runs} per mode (after a warm-up), "
          f"device={device}, torch threads={torch.get_num_threads()}, interval={interval_s}s, "
          f"simulated edit={HTTP_S * 1000:.0f} ms")
    print(f"callback per step, no edit due:      {await callback_cost_us():8.2f} us")
    print(f"preview decode + JPEG (512 px image): {preview_cost_ms(device):8.3f} ms")
    for size in sizes:
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        edits: dict[str, list[int]] = {mode: [] for mode in MODES}
        for mode in MODES:  # warm-up
            await one_run(pipe, mode, size, steps, interval_s, device)
        for _ in range(runs):
            for mode in MODES:
                elapsed, made = await one_run(pipe, mode, size, steps, interval_s, device)
                times[mode].append(elapsed)
                edits[mode].append(made)
        base = statistics.median(times["none"])
        print(f"\n{size}x{size}  ({size // 8}x{size // 8} latents)")
        for mode in MODES:
            med = statistics.median(times[mode])
            print(f"  {mode:<9} median {med * 1000:8.1f} ms   min {min(times[mode]) * 1000:8.1f} ms"
                  f"   edits/run {statistics.mean(edits[mode]):5.1f}"
                  f"   overhead {(med - base) / base * 100:+6.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    asyncio.run(bench(args.steps, args.sizes, args.runs, args.interval, args.device))


if __name__ == "__main__":
    main()
