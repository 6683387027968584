"""Worker throughput: images/s and the share of wall time the device spends sampling, for
batches of 1, 2, 4 and 8 jobs, with encoding + posting done after each batch (serial) or while
the next batch samples (overlapped, as the worker does).

    python bench/throughput.py                         # tiny model, CPU, 64 px, 10 steps
    python bench/throughput.py --model PATH --device cuda --size 512 --steps 25
    python bench/throughput.py --random-sd1 --device cuda --size 512 --steps 25

`--random-sd1` builds a full-size SD 1.x from the shipped configs with random weights: the
same shapes and cost as a real checkpoint, without the file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from concurrent.futures import Future, ThreadPoolExecutor  # imports `queue`: after the fix

import torch

from inference.drawing.sampling import sample_batch
from inference.models.device import choose_placement
from inference.models.loading import load_pipeline
from inference.results.fit import png_with_parameters
from ponybot_core.config import ModelEntry, Sampler
from ponybot_core.job import Job


def jobs(n: int, size: int, steps: int, start: int) -> list[Job]:
    return [Job(application_id=1, interaction_id=i, interaction_token="t", guild_id=1,
                channel_id=1, user_id=i, model_id="m", tags="pony",
                prompt="safe, twilight sparkle, unicorn, solo, scr100", negative_prompt="",
                seed=start + i, steps=steps, cfg=7.5, sampler=Sampler.DDIM, width=size,
                height=size) for i in range(n)]


def load(args: argparse.Namespace, workdir: Path):
    placement = choose_placement(args.device)
    if args.random_sd1:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
            StableDiffusionPipeline,
        )

        from inference.models.loading import SD1_CONFIG_DIR
        pipe = StableDiffusionPipeline.from_pretrained(
            SD1_CONFIG_DIR, local_files_only=True, safety_checker=None,
            requires_safety_checker=False, low_cpu_mem_usage=False)
        label = "random full-size SD 1.x"
    else:
        path = Path(args.model) if args.model else None
        if path is None:
            from ponybot_testkit.tiny_models import build_tiny_pipeline
            path = build_tiny_pipeline(workdir / "tiny")
            label = "tiny test model"
        else:
            label = path.name
        pipe = load_pipeline(ModelEntry(id="m", name="m", path=path), base_dir=Path.cwd())
    pipe = pipe.to(placement.device, placement.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe, placement, label


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def finish(images: list, post_s: float) -> None:
    """What the worker does after sampling: PNG encoding and the upload to Discord."""
    for image in images:
        png_with_parameters(image, "parameters")
    time.sleep(post_s)


def run(pipe, device: torch.device, batch: int, images: int, size: int, steps: int,
        overlap: bool, post_s: float) -> tuple[float, float]:
    sampling = 0.0
    pending: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        start = time.perf_counter()
        for k in range(images // batch):
            t = time.perf_counter()
            results = sample_batch(pipe, jobs(batch, size, steps, k * batch))
            sync(device)
            sampling += time.perf_counter() - t
            produced = [im for r in results for im in r.images]
            if pending is not None:
                pending.result()  # at most one batch finishing behind the sampler
            pending = pool.submit(finish, produced, post_s)
            if not overlap:
                pending.result()
        if pending is not None:
            pending.result()
        wall = time.perf_counter() - start
    return images / wall, sampling / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusers folder, .ckpt or .safetensors")
    parser.add_argument("--random-sd1", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--post-ms", type=float, default=100.0,
                        help="simulated Discord upload per batch")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pipe, placement, label = load(args, Path(tempfile.mkdtemp(prefix="ponythru-")))
    run(pipe, placement.device, 1, 1, args.size, args.steps, True, 0)  # warm-up
    print(f"bench/throughput.py  model={label} device={placement.describe()} "
          f"size={args.size} steps={args.steps} images={args.images} post={args.post_ms:g} ms "
          f"torch threads={torch.get_num_threads()}")
    print(f"{'batch':>5} {'serial img/s':>13} {'busy':>6} {'overlapped img/s':>17} {'busy':>6}")
    for batch in (int(b) for b in args.batches.split(",")):
        row = []
        for overlap in (False, True):
            runs = [run(pipe, placement.device, batch, args.images, args.size, args.steps,
                        overlap, args.post_ms / 1000) for _ in range(args.repeats)]
            row.append((statistics.median(r[0] for r in runs),
                        statistics.median(r[1] for r in runs)))
        print(f"{batch:>5} {row[0][0]:13.2f} {row[0][1]:6.0%} {row[1][0]:17.2f} "
              f"{row[1][1]:6.0%}")


if __name__ == "__main__":
    main()
