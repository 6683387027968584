"""What live progress costs sampling: the tiny model sampled with and without the reporter.

Sampling runs in a thread (`asyncio.to_thread`), as in the worker, while the event loop runs the
reporter. Modes, interleaved run by run (in a rotating order) so machine load hits them alike:

- none      no callback at all;
- progress  the reporter at `--interval` s (1 s, the least the config allows) with an edit that
            awaits a simulated 50 ms HTTP call, previews on;
- every     worst case: a clock that makes an edit due at every step and an edit that returns
            at once, so a preview is copied, decoded and JPEG-encoded for every step.

Per mode: wall time of the sampling call (median, min, overhead against `none` both of the
medians and as the median of each round's own ratio), the process's CPU time (all threads), and
the two costs measured directly, which machine noise does not hide: the time the sampling thread
spent inside the callback, and the CPU time of the preview decodes (done in a pool thread).

    python bench/progress.py [--steps 30] [--sizes 64 256] [--runs 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import inference.drawing.progress as progress
from inference.drawing.progress import ProgressReporter
from inference.models.loading import load_pipeline
from ponybot_core.config import ModelEntry
from ponybot_testkit.tiny_models import build_tiny_pipeline

MODES = ("none", "progress", "every")
HTTP_S = 0.05


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # process CPU time: sampling, event loop and preview threads together
    edits: int = 0
    callback_s: float = 0.0  # spent inside the callback, in the sampling thread
    preview_cpu_s: float = 0.0  # CPU time of the preview decodes, in pool threads


class EveryStepClock:
    """Each reading is one interval later than the last: every step finds an edit due."""

    def __init__(self, interval_s: float) -> None:
        self.ticks = itertools.count()
        self.interval_s = interval_s

    def __call__(self) -> float:
        return next(self.ticks) * self.interval_s


_preview_cpu = [0.0]
_original_preview_jpeg = progress.preview_jpeg


def _timed_preview_jpeg(latents: torch.Tensor,
                        latent_format: progress.LatentFormat = progress.SD1_LATENTS) -> bytes:
    start = time.thread_time()
    try:
        return _original_preview_jpeg(latents, latent_format)
    finally:
        _preview_cpu[0] += time.thread_time() - start


progress.preview_jpeg = _timed_preview_jpeg  # the reporter looks it up at call time


async def one_run(pipe, mode: str, size: int, steps: int, interval_s: float,
                  device: str) -> Run:
    edits = 0
    inside = 0.0

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
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.to_thread(sample, {})
        return Run(time.perf_counter() - start, time.process_time() - cpu)

    if mode == "progress":
        reporter = ProgressReporter(http_edit, interval_s=interval_s)
    else:
        reporter = ProgressReporter(instant_edit, interval_s=1.0, clock=EveryStepClock(1.0))

    def timed_callback(pipe, step, timestep, callback_kwargs):
        nonlocal inside
        start = time.perf_counter()
        try:
            return reporter.on_step_end(pipe, step, timestep, callback_kwargs)
        finally:
            inside += time.perf_counter() - start

    kwargs = {**reporter.pipeline_kwargs(), "callback_on_step_end": timed_callback}
    _preview_cpu[0] = 0.0
    async with reporter:
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.to_thread(sample, kwargs)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run(wall, cpu, edits, inside, _preview_cpu[0])


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
    """One preview (decode + JPEG) for a 512 x 512 image's latents (4 x 64 x 64)."""
    latents = torch.randn(1, 4, 64, 64, device=device)
    _original_preview_jpeg(latents)
    start = time.perf_counter()
    for _ in range(n):
        _original_preview_jpeg(latents)
    return (time.perf_counter() - start) / n * 1e3


def overhead(values: list[float], base: list[float]) -> tuple[float, float]:
    """% over `base`: of the medians, and the median of the rounds' own ratios."""
    of_medians = statistics.median(values) / statistics.median(base) - 1
    paired = statistics.median(v / b - 1 for v, b in zip(values, base, strict=True))
    return of_medians * 100, paired * 100


def report(size: int, runs: dict[str, list[Run]]) -> None:
    print(f"\n{size}x{size} ({size // 8}x{size // 8} latents)")
    print(f"  {'mode':<9} {'edits':>5} | {'wall median':>11} {'min':>9} {'overhead':>8} "
          f"{'paired':>7} | {'CPU median':>10} {'overhead':>8} {'paired':>7} | "
          f"{'in callback':>11} {'':>7} | {'preview CPU':>11}")
    base = runs["none"]
    for mode, mine in runs.items():
        wall = [r.wall_s for r in mine]
        cpu = [r.cpu_s for r in mine]
        wall_over, wall_paired = overhead(wall, [r.wall_s for r in base])
        cpu_over, cpu_paired = overhead(cpu, [r.cpu_s for r in base])
        callback = statistics.median(r.callback_s for r in mine)
        preview = statistics.median(r.preview_cpu_s for r in mine)
        print(f"  {mode:<9} {statistics.mean(r.edits for r in mine):5.1f} | "
              f"{statistics.median(wall) * 1000:8.1f} ms {min(wall) * 1000:6.1f} ms "
              f"{wall_over:+7.1f}% {wall_paired:+6.1f}% | "
              f"{statistics.median(cpu) * 1000:7.1f} ms {cpu_over:+7.1f}% {cpu_paired:+6.1f}% | "
              f"{callback * 1000:8.2f} ms {callback / statistics.median(wall) * 100:6.3f}% | "
              f"{preview * 1000:8.2f} ms")


async def bench(steps: int, sizes: list[int], runs: int, interval_s: float, device: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="ponybench-progress-"))
    folder = build_tiny_pipeline(work / "tiny")
    pipe = load_pipeline(ModelEntry(id="tiny", name="t", path=folder), base_dir=work)
    pipe.to(device)
    print(f"bench/progress.py  tiny model, {steps} steps, cfg 7.5, {runs} runs per mode after a "
          f"warm-up, device={device}, torch threads={torch.get_num_threads()}, "
          f"interval={interval_s}s, simulated edit={HTTP_S * 1000:.0f} ms")
    print(f"callback per step, no edit due:         {await callback_cost_us():8.2f} us")
    print(f"one preview, decode + JPEG (512 px):    {preview_cost_ms(device):8.3f} ms")
    for size in sizes:
        results: dict[str, list[Run]] = {mode: [] for mode in MODES}
        for mode in MODES:  # warm-up
            await one_run(pipe, mode, size, steps, interval_s, device)
        for round_ in range(runs):
            for mode in MODES[round_ % 3:] + MODES[:round_ % 3]:
                results[mode].append(await one_run(pipe, mode, size, steps, interval_s, device))
        report(size, results)


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
