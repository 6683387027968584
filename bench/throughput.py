"""Worker throughput: images/s and the share of wall time the device spends sampling, for
batches of 1, 2, 4 and 8 jobs, with encoding + posting done after each batch (serial) or while
the next batch samples (overlapped, as the worker does).

    python bench/throughput.py                         # tiny model, CPU, 64 px, 10 steps
    python bench/throughput.py --model PATH --device cuda --size 512 --steps 25
    python bench/throughput.py --random-sd1 --device cuda --size 512 --steps 25
    python bench/throughput.py --random-sdxl --device cuda --size 1024 --steps 25 --sampler euler_a
    python bench/throughput.py --random-sdxl --device cpu --size 256 --steps 2   # a smoke run

`--random-sd1` builds a full-size SD 1.x from the shipped configs with random weights: the
same shapes and cost as a real checkpoint, without the file. `--random-sdxl` does the same for
SDXL (Pony Diffusion V6 XL's architecture) from `inference/sdxl_config` (the real SDXL base
component configs: a 2.6 B-parameter UNet, CLIP-L and OpenCLIP bigG text towers, its VAE),
drawing with the worker's SDXL path (two towers, pooled embeddings, size conditioning; CLIP
skip 2 as V6 XL's card asks). Its defaults are a smaller run (one image per batch size, batches
of 1, one repeat: pass `--images 4 --batches 1,2,4` on a GPU) since one SDXL image costs what
a dozen SD 1.x ones do; it also prints the weights'
size and, on CUDA, the peak memory.
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

import inference
from inference.drawing.prompt_embeds import is_xl
from inference.drawing.sampling import sample_batch
from inference.models.device import choose_placement
from inference.models.loading import load_pipeline
from inference.results.fit import png_with_parameters
from ponybot_core.config import ModelEntry, Sampler
from ponybot_core.job import Job

SDXL_CONFIG_DIR = Path(inference.__file__).resolve().parent / "sdxl_config"
# The entry the bench draws with: SDXL as Pony Diffusion V6 XL's card says (clip skip 2).
ENTRY = ModelEntry(id="m", name="m", path=Path("m"))
XL_ENTRY = ModelEntry(id="m", name="m", path=Path("m"), clip_skip=2)


def jobs(n: int, size: int, steps: int, start: int, sampler: Sampler = Sampler.DDIM
         ) -> list[Job]:
    return [Job(application_id=1, interaction_id=i, interaction_token="t", guild_id=1,
                channel_id=1, user_id=i, model_id="m", tags="pony",
                prompt="safe, twilight sparkle, unicorn, solo, scr100", negative_prompt="",
                seed=start + i, steps=steps, cfg=7.5, sampler=sampler, width=size,
                height=size) for i in range(n)]


def random_sdxl(dtype: torch.dtype):
    """A full-size SDXL pipeline with random weights, from the shipped component configs."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
        StableDiffusionXLPipeline,
    )
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    root = SDXL_CONFIG_DIR
    previous = torch.get_default_dtype()
    # Built directly in the bench's dtype: a float32 copy first would double the peak memory.
    torch.set_default_dtype(dtype)
    try:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
    finally:
        torch.set_default_dtype(previous)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(root / "tokenizer_2"),
        unet=unet, add_watermarker=False,
        scheduler=EulerDiscreteScheduler.from_pretrained(root / "scheduler"))
    return pipe.to(dtype=dtype)


def weights_bytes(pipe) -> int:
    return sum(t.numel() * t.element_size() for name in
               ("unet", "vae", "text_encoder", "text_encoder_2")
               if (module := getattr(pipe, name, None)) is not None
               for t in (*module.parameters(), *module.buffers()))


def load(args: argparse.Namespace, workdir: Path):
    placement = choose_placement(args.device, args.dtype)
    if args.random_sdxl:
        pipe = random_sdxl(placement.dtype)
        label = "random full-size SDXL"
    elif args.random_sd1:
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
        overlap: bool, post_s: float, sampler: Sampler = Sampler.DDIM,
        entry: ModelEntry = ENTRY) -> tuple[float, float]:
    sampling = 0.0
    pending: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        start = time.perf_counter()
        for k in range(images // batch):
            t = time.perf_counter()
            results = sample_batch(pipe, jobs(batch, size, steps, k * batch, sampler),
                                   model=entry)
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
    parser.add_argument("--random-sdxl", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--sampler", default=None, help="ddim, euler_a or dpm++2m_karras")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=None, help="default 16 (SDXL: 1)")
    parser.add_argument("--batches", default=None, help="default 1,2,4,8 (SDXL: 1)")
    parser.add_argument("--post-ms", type=float, default=100.0,
                        help="simulated Discord upload per batch")
    parser.add_argument("--repeats", type=int, default=None, help="default 2 (SDXL: 1)")
    args = parser.parse_args()
    xl = args.random_sdxl
    args.images = args.images or (1 if xl else 16)
    args.batches = args.batches or ("1" if xl else "1,2,4,8")
    args.repeats = args.repeats or (1 if xl else 2)
    sampler = Sampler(args.sampler) if args.sampler else (Sampler.EULER_A if xl else Sampler.DDIM)
    started = time.perf_counter()
    pipe, placement, label = load(args, Path(tempfile.mkdtemp(prefix="ponythru-")))
    built_s = time.perf_counter() - started
    entry = XL_ENTRY if is_xl(pipe) else ENTRY
    if placement.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(placement.device)
    started = time.perf_counter()
    run(pipe, placement.device, 1, 1, args.size, args.steps, True, 0, sampler, entry)  # warm-up
    warm_s = time.perf_counter() - started
    print(f"bench/throughput.py  model={label} device={placement.describe()} "
          f"size={args.size} steps={args.steps} sampler={sampler.value} images={args.images} "
          f"post={args.post_ms:g} ms torch threads={torch.get_num_threads()}")
    print(f"weights {weights_bytes(pipe) / 2**30:.2f} GiB, built/loaded in {built_s:.1f} s, "
          f"first image (warm-up) {warm_s:.1f} s")
    print(f"{'batch':>5} {'serial img/s':>13} {'busy':>6} {'overlapped img/s':>17} {'busy':>6}")
    for batch in (int(b) for b in args.batches.split(",")):
        row = []
        for overlap in (False, True):
            runs = [run(pipe, placement.device, batch, args.images, args.size, args.steps,
                        overlap, args.post_ms / 1000, sampler, entry)
                    for _ in range(args.repeats)]
            row.append((statistics.median(r[0] for r in runs),
                        statistics.median(r[1] for r in runs)))
        # Three significant digits: a full-size SDXL on a CPU draws far below 0.01 img/s.
        print(f"{batch:>5} {row[0][0]:13.3g} {row[0][1]:6.0%} {row[1][0]:17.3g} "
              f"{row[1][1]:6.0%}")
    if placement.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(placement.device)
        print(f"peak CUDA memory allocated {peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
