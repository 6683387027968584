"""How long a worker waits for a model: cold `.ckpt` load vs converted copies vs the cache.

For the tiny test model by default (built offline into a temp folder), or for a real SD 1.x
checkpoint with `--model PATH` (`.ckpt` or `.safetensors`; it is only linked into the temp
folder, so the converted copies are written there, never next to your file). Prints the median,
min and max of N runs of each way a model reaches the device:

- cold `.ckpt`: `torch.load(weights_only=True)` + `from_single_file`, then moved to the device;
- cold converted `.safetensors` (`python -m inference convert <id>`), then moved;
- cold converted diffusers folder (`convert --to diffusers`), then moved;
- warm swap: `ModelCache.get` of a model in the RAM tier while another fills the budget, so the
  other is evicted to RAM and this one copied back (on a CPU worker the RAM *is* the device:
  nothing is copied, and the row is the cache's bookkeeping only, labelled so);
- cache hit: `ModelCache.get` of the model already on the device.

Cold rows read files the OS has already cached after the first run: they measure parsing,
conversion and assembly, not the disk.

    python bench/model_load.py [--model PATH [--single-file-config DIR] [--trust-pickle]]
                               [--runs 5] [--device auto|cpu|cuda|mps]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from inference.models.cache import GIB, ModelCache, format_bytes, pipeline_bytes
from inference.models.convert import convert
from inference.models.device import Placement, choose_placement
from inference.models.loading import ModelLoadError, load_from
from ponybot_core.config import Config, ModelEntry, ModelFormat, WorkerConfig

Row = tuple[str, list[float] | str]


def timed_cold_load(
    entry: ModelEntry, source: Path, fmt: ModelFormat, placement: Placement, runs: int
) -> list[float]:
    """Seconds for file -> pipeline on the device, `runs` times."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        pipe = load_from(entry, source, fmt, base_dir=source.parent)
        pipe.to(placement.device, placement.dtype)
        if placement.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        del pipe
    return times


async def timed_cache(
    entry: ModelEntry, size_bytes: int, placement: Placement, runs: int
) -> tuple[list[float], list[float]]:
    """(warm swaps, cache hits): two ids for the same file, a budget that holds one of them."""
    models = [entry.model_copy(update={"id": model_id}) for model_id in ("first", "second")]
    config = Config(
        default_model="first",
        models=models,
        worker=WorkerConfig(device=placement.device.type, ram_cache_models=2,
                            memory_budget_gb=1.5 * size_bytes / GIB),
    )
    cache = ModelCache(config, base_dir=Path(entry.path).parent, placement=placement)
    await cache.get("first")
    await cache.get("second")  # "first" evicted to RAM
    swaps, hits = [], []
    for i in range(runs):
        wanted = ("first", "second")[i % 2]
        started = time.perf_counter()
        await cache.get(wanted)
        swaps.append(time.perf_counter() - started)
        assert cache.loaded == [wanted], cache.loaded
        started = time.perf_counter()
        await cache.get(wanted)
        hits.append(time.perf_counter() - started)
    return swaps, hits


def measure(label: str, rows: list[Row], how: Callable[[], list[float]]) -> None:
    try:
        rows.append((label, how()))
    except ModelLoadError as exc:
        rows.append((label, f"refused: {str(exc).split('. ')[0]}"))


def seconds(value: float) -> str:
    return f"{value * 1000:8.2f} ms" if value < 1 else f"{value:8.2f} s "


def print_table(title: str, rows: list[Row]) -> None:
    print(title)
    width = max(len(label) for label, _ in rows) + 2
    print(f"{'path to the device':<{width}}{'median':>11}{'min':>12}{'max':>12}")
    for label, values in rows:
        if isinstance(values, str):
            print(f"{label:<{width}}{values}")
            continue
        print(f"{label:<{width}}{seconds(statistics.median(values)):>11} "
              f"{seconds(min(values)):>11} {seconds(max(values)):>11}")


def prepare(
    work: Path, model: Path | None, config: Path | None
) -> tuple[ModelEntry, Path | None, Path]:
    """(entry, .ckpt or None, .safetensors single file) inside `work`."""
    if model is None:
        from ponybot_testkit.tiny_models import (
            build_tiny_pipeline,
            build_tiny_single_file,
            tiny_single_file_config,
        )

        folder = build_tiny_pipeline(work / "tiny")
        ckpt = build_tiny_single_file(folder, work / "tiny.ckpt")
        entry = ModelEntry(id="tiny", name="tiny", path=ckpt,
                           single_file_config=tiny_single_file_config(work / "tiny-config"))
        return entry, ckpt, ckpt
    model = model.expanduser().resolve()
    link = work / model.name
    link.symlink_to(model)
    entry = ModelEntry(id="model", name=model.stem, path=link, single_file_config=config)
    if entry.resolved_format() is ModelFormat.SAFETENSORS:
        return entry, None, link
    return entry, link, link


def bench(
    model: Path | None, config: Path | None, runs: int, device: str, trust_pickle: bool
) -> None:
    placement = choose_placement(device)
    work = Path(tempfile.mkdtemp(prefix="ponybench-load-"))
    rows: list[Row] = []
    try:
        entry, ckpt, single = prepare(work, model, config)
        base = work

        if ckpt is not None:
            measure("cold .ckpt (weights_only)", rows,
                    lambda: timed_cold_load(entry, ckpt, ModelFormat.CKPT, placement, runs))
            started = time.perf_counter()
            safetensors = convert(entry, base_dir=base, trust_pickle=trust_pickle, report=None)
            once = time.perf_counter() - started
            label = f"cold .safetensors (convert: {once:.2f} s once)"
        else:
            safetensors, label = single, "cold .safetensors (as given)"
        measure(label, rows, lambda: timed_cold_load(
            entry, safetensors, ModelFormat.SAFETENSORS, placement, runs))

        started = time.perf_counter()
        folder = convert(entry, base_dir=base, trust_pickle=trust_pickle, to="diffusers",
                         report=None)
        once = time.perf_counter() - started
        measure(f"cold diffusers folder (convert: {once:.2f} s once)", rows,
                lambda: timed_cold_load(entry, folder, ModelFormat.DIFFUSERS, placement, runs))

        fastest = load_from(entry, folder, ModelFormat.DIFFUSERS, base_dir=base)
        size = pipeline_bytes(fastest, placement.dtype)
        del fastest
        cached = entry.model_copy(update={"path": folder, "format": ModelFormat.DIFFUSERS})
        swaps, hits = asyncio.run(timed_cache(cached, size, placement, runs))
        if placement.device.type == "cpu":
            rows.append(("RAM tier hit (CPU: RAM is the device, no copy)", swaps))
        else:
            rows.append((f"warm swap RAM -> {placement.device.type} (+ evict the other)", swaps))
        rows.append(("cache hit (already on the device)", hits))

        name = str(model) if model else "tiny test model"
        print_table(
            f"bench/model_load.py  model={name} ({format_bytes(size)} at "
            f"{str(placement.dtype).removeprefix('torch.')})  device={placement.describe()}  "
            f"runs={runs}  torch threads={torch.get_num_threads()}",
            rows,
        )
    except ModelLoadError as exc:
        if rows:
            print_table("bench/model_load.py (stopped early)", rows)
        sys.exit(f"cannot go on: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a real SD 1.x .ckpt or .safetensors")
    parser.add_argument("--single-file-config", type=Path,
                        help="the model's component configs (default: the shipped SD 1.x ones)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow converting a .ckpt that pickles Python objects")
    args = parser.parse_args()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    bench(args.model, args.single_file_config, args.runs, args.device, args.trust_pickle)


if __name__ == "__main__":
    main()
