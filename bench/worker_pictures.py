"""What a hostile picture costs a worker before it is refused or used, before and after issue 16.

For each picture it prints the CPU time (this process, `time.process_time`) and the bytes of the
file read:
- "before": what the worker did until issue 16 (`parameters_of` on the opened picture, whose
  `image.text` walks every frame of an APNG, then the first frame decoded), measured on the
  first `--frames` frames and scaled to all of them where walking all would take minutes;
- "after": `ponybot_core.downloads.decode_image`, what the worker does now.

    python bench/worker_pictures.py [--frames 20]
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from ponybot_core.downloads import DecodeGuard, DownloadRefused, decode_image
from ponybot_testkit.hostile_pictures import apng_bomb, apng_frames, truncated

MAX_PIXELS = 4096 * 4096  # uploads.max_pixels, the default


def cpu(action: Callable[[], object]) -> tuple[float, str]:
    started = time.process_time()
    try:
        action()
        outcome = "used"
    except DownloadRefused as exc:
        outcome = f"refused: {str(exc)[:48]}"
    except Exception as exc:  # what escaped to the worker (and was retried) before
        outcome = f"raised {type(exc).__name__}"
    return time.process_time() - started, outcome


def before(data: bytes, frames: int | None) -> tuple[float, str]:
    """CPU seconds and outcome of the old path; with `frames`, the walk is timed over that many
    frames and scaled to the animation's length."""
    image = Image.open(io.BytesIO(data))
    total = getattr(image, "n_frames", 1)
    if frames is None or total <= frames:
        return cpu(lambda: (image.text, image.load()))
    started = time.process_time()
    for frame in range(frames):
        image.seek(frame)
        image.load()
    return (time.process_time() - started) / frames * total, f"walked {frames} of {total:,}"


def after(data: bytes) -> tuple[float, str, int]:
    guard = DecodeGuard()
    seconds, outcome = cpu(lambda: decode_image(data, max_pixels=MAX_PIXELS, guard=guard))
    return seconds, outcome, guard.bytes_read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20,
                        help="frames of a long animation timed on the old path, then scaled")
    args = parser.parse_args()

    gray16 = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 65536, (2048, 2048), dtype=np.uint16)
                    ).save(gray16, format="PNG")
    pictures = {
        "APNG 160,000 frames of 1x1 (9.8 MiB)": (apng_frames(1, 1, 160_000, parameters="x"),
                                                 None),
        "APNG 1,000 frames of 4096² (2 MiB)": (apng_bomb(1000, 4096, 4096), args.frames),
        "PNG 4096² cut off half way": (truncated(apng_bomb(1, 4096, 4096)), None),
        "PNG 2048² 16-bit gray noise": (gray16.getvalue(), None),
    }
    print(f"{'picture':38} {'before s':>9} {'after s':>8} {'read':>10}  before -> after")
    for name, (data, frames) in pictures.items():
        old, was = before(data, frames)
        new, outcome, read = after(data)
        scaled = "*" if frames is not None else " "
        print(f"{name:38} {old:8.3f}{scaled} {new:8.4f} {read:>10,}  {was} -> {outcome}")
    print("* timed on the first frames and scaled to all of them; read: bytes of the file read")

if __name__ == "__main__":
    main()
