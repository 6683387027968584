"""Upscale and fit-to-Discord timings on this machine.

Prints
- upscale time per image for 64, 256 and 512 px inputs, whole-image and tiled, with the tiny
  random Real-ESRGAN net the tests use, optionally a random net of RealESRGAN_x4plus's shape
  (64 features, 23 blocks: the real model's cost, not its pictures) and, with --model, a real
  file such as RealESRGAN_x4plus.pth;
- fit_image's steps (PNG, lossless WebP, lossy WebP) with sizes and times for a 2048x2048
  noise image (the worst case for PNG) and for 2048x2048 synthetic art, against 10 MiB.

    python bench/upscale.py [--device cpu|cuda] [--model PATH] [--x4plus-shape]
                            [--sizes 64 256 512] [--tile 128] [--overlap 16] [--repeat 3]
                            [--threads N] [--skip-fit]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from inference.models.device import choose_placement
from inference.results.fit import LOSSY_QUALITIES, encode_webp, fit_image, png_with_parameters
from inference.results.upscale import Upscaler, load_upscaler
from ponybot_core.config import UpscalerEntry
from ponybot_testkit.tiny_esrgan import realesrgan_state_dict, save_pth

PARAMETERS = ("twilight sparkle, unicorn, solo, scr100\nNegative prompt: explicit\n"
              "Steps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: bench")
LIMIT = 10 * 1024 * 1024
T = TypeVar("T")


def noise(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def synthetic_art(size: int, seed: int = 1) -> Image.Image:
    """Soft gradients, flat outlined shapes, a little grain: closer to generated art."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 64, size // 7))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0), width=6)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    grain = rng.normal(0, 2.0, (size, size, 3))
    return Image.fromarray((np.asarray(image) + grain).clip(0, 255).astype(np.uint8))


def timed(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    times: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result  # the last one


def bench_upscaler(label: str, path: Path, args: argparse.Namespace, sizes: list[int]) -> None:
    placement = choose_placement(args.device)
    print(f"\n{label}: {path.name}")
    for tile, overlap in ((0, 0), (args.tile, args.overlap)):
        entry = UpscalerEntry(id="bench", name=label, path=path, tile=tile,
                              tile_overlap=overlap)
        upscaler: Upscaler = load_upscaler(entry, base_dir=path.parent,
                                           device=placement.device, dtype=placement.dtype)
        if tile == 0:
            print(f"  {upscaler.describe()}")
        upscaler.upscale(noise(32))  # warm up kernels
        for size in sizes:
            image = noise(size, seed=size)
            seconds, result = timed(partial(upscaler.upscale, image), args.repeat)
            how = "whole image" if tile == 0 else f"tiles {tile}/{overlap}"
            print(f"  {size:4d} px -> {result.width:4d} px  {how:16s} {seconds * 1000:9.1f} ms"
                  f"  ({size * size / seconds / 1e6:6.2f} Mpx/s in)")


def bench_fit(name: str, image: Image.Image) -> None:
    print(f"\nfit {name} {image.width}x{image.height} against {LIMIT / 2**20:g} MiB:")
    steps = [("PNG (compress_level 4)", lambda: png_with_parameters(image, PARAMETERS)),
             ("WebP lossless", lambda: encode_webp(image, PARAMETERS, quality=None))]
    steps += [(f"WebP quality {q}", partial(encode_webp, image, PARAMETERS, quality=q))
              for q in LOSSY_QUALITIES]
    for label, encode in steps:
        seconds, data = timed(encode, 1)
        fits = "fits" if len(data) <= LIMIT else "too big"
        print(f"  {label:24s} {len(data) / 2**20:7.2f} MiB {seconds * 1000:8.0f} ms  {fits}")
    seconds, fitted = timed(lambda: fit_image(image, PARAMETERS, limit_bytes=LIMIT), 1)
    print(f"  fit_image -> {fitted.format} {fitted.width}x{fitted.height} "
          f"{len(fitted.data) / 2**20:.2f} MiB in {seconds * 1000:.0f} ms; note: {fitted.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, help="a real upscaler .pth/.safetensors")
    parser.add_argument("--x4plus-shape", action="store_true",
                        help="also a random net of RealESRGAN_x4plus's size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--big-sizes", type=int, nargs="+", default=None,
                        help="input sizes for --model/--x4plus-shape (default: --sizes on a "
                             "GPU, 64 on a CPU)")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    placement = choose_placement(args.device)
    print(f"device {placement.describe()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    big_sizes = args.big_sizes or (args.sizes if placement.device.type != "cpu" else [64])

    with tempfile.TemporaryDirectory() as folder:
        tiny = save_pth(realesrgan_state_dict(), Path(folder) / "tiny-realesrgan-x4.pth")
        bench_upscaler("tiny Real-ESRGAN (8 features, 1 block)", tiny, args, args.sizes)
        if args.x4plus_shape:
            shaped = save_pth(realesrgan_state_dict(num_feat=64, num_block=23),
                              Path(folder) / "random-x4plus-shape.pth")
            bench_upscaler("random net, RealESRGAN_x4plus shape (64 features, 23 blocks)",
                           shaped, args, big_sizes)
        if args.model:
            bench_upscaler("model", args.model.resolve(), args, big_sizes)

    if not args.skip_fit:
        bench_fit("noise", noise(2048))
        bench_fit("synthetic art", synthetic_art(2048))


if __name__ == "__main__":
    main()
