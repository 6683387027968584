"""What a hostile picture costs a worker before it is refused or used, before and after issue 16.

For each picture it prints the CPU time (`time.process_time`) and the bytes of the file read:
- "before": what the worker did until issue 16 (`parameters_of` on the opened picture, whose
  `image.text` walks every frame of an APNG, then the first frame decoded), measured on the
  first `--frames` frames and scaled to all of them where walking all would take minutes;
- "after": `ponybot_core.downloads.decode_image` (with a 1 s deadline, `uploads.timeout_s`'s
  role), what the worker does now, each picture in a fresh subprocess that also reports the
  growth of its peak RSS around the decode.
Then the worst CPU and the worst peak RSS of "after".

    python bench/worker_pictures.py [--frames 20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ponybot_core.downloads import DecodeGuard, DownloadRefused, decode_image
from ponybot_testkit.hostile_pictures import (
    apng_bomb,
    apng_frames,
    exif_png,
    exif_webp,
    large_tag_exif,
    progressive_jpeg_with_empty_scans,
    split_exif_jpeg,
    truncated,
)

MAX_PIXELS = 4096 * 4096  # uploads.max_pixels, the default
DEADLINE_S = 1.0
CPU_LIMIT_S = 60  # a regression is reported as a kill, not waited for


def gray16_noise() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 65536, (2048, 2048), dtype=np.uint16)
                    ).save(out, format="PNG")
    return out.getvalue()


def pictures(frames: int) -> dict[str, tuple[Callable[[], bytes], int | None]]:
    """Each picture's builder, and how many frames the old path is timed on (None: all)."""
    return {
        "APNG 160,000 frames of 1x1 (9.8 MiB)": (
            lambda: apng_frames(1, 1, 160_000, parameters="x"), None),
        "APNG 1,000 frames of 4096² (2 MiB)": (lambda: apng_bomb(1000, 4096, 4096), frames),
        "PNG 4096² cut off half way": (lambda: truncated(apng_bomb(1, 4096, 4096)), None),
        "PNG 2048² 16-bit gray noise": (gray16_noise, None),
        "PNG, EXIF tag of 1.2 M RATIONALs": (lambda: exif_png(large_tag_exif(
            9_800_000, orientation=6)), None),
        "WebP, EXIF tag of 1.2 M RATIONALs": (lambda: exif_webp(large_tag_exif(
            9_800_000, orientation=6)), None),
        "JPEG, same EXIF over 147 APP1s": (lambda: split_exif_jpeg(large_tag_exif(
            9_600_000, tag=0x0128, in_exif_ifd=False, orientation=6)), None),
        "JPEG 4096² + 13,000 empty scans": (
            lambda: progressive_jpeg_with_empty_scans(4096, 13_000), None),
    }


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
        return cpu(lambda: (getattr(image, "text", None), image.load()))  # PNG: .text
    started = time.process_time()
    for frame in range(frames):
        image.seek(frame)
        image.load()
    return (time.process_time() - started) / frames * total, f"walked {frames} of {total:,}"


def after(name: str) -> None:
    """In the subprocess: decode one picture as the worker does; print what it cost as JSON."""
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S + 5))
    data = pictures(0)[name][0]()
    guard = DecodeGuard(timeout_s=DEADLINE_S)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on is the decode's
    rss_before = status_kib("VmRSS")
    seconds, outcome = cpu(lambda: decode_image(data, max_pixels=MAX_PIXELS, guard=guard))
    print(json.dumps({"cpu_s": seconds, "peak_rss_delta_mib": (status_kib("VmHWM") - rss_before)
                      / 1024, "outcome": outcome, "read": guard.bytes_read}))


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(name: str) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                          text=True, cwd=root, env=env)
    if done.returncode != 0:
        return {"cpu_s": float("nan"), "peak_rss_delta_mib": float("nan"), "read": 0,
                "outcome": f"KILLED (exit {done.returncode}): {done.stderr.strip()[-80:]}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20,
                        help="frames of a long animation timed on the old path, then scaled")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        after(args.one)
        return

    print(f"{'picture':38} {'before s':>9} {'after s':>8} {'peak RSS Δ':>11} {'read':>10}  "
          "before -> after")
    rows = []
    for name, (build, frames) in pictures(args.frames).items():
        old, was = before(build(), frames)
        new = measure(name)
        rows.append((name, new))
        scaled = "*" if frames is not None else " "
        print(f"{name:38} {old:8.3f}{scaled} {new['cpu_s']:8.4f} "
              f"{new['peak_rss_delta_mib']:>7.1f} MiB {new['read']:>10,}  {was} -> "
              f"{new['outcome']}")
    print("* timed on the first frames and scaled to all of them; read: bytes of the file read")
    measured = [row for row in rows if not str(row[1]["outcome"]).startswith("KILLED")]
    if measured:
        worst_cpu = max(measured, key=lambda row: float(row[1]["cpu_s"]))
        worst_rss = max(measured, key=lambda row: float(
            row[1]["peak_rss_delta_mib"]))
        print(f"\nafter, worst CPU:      {worst_cpu[1]['cpu_s']:.3f} s ({worst_cpu[0]})")
        print(f"after, worst peak RSS: +{worst_rss[1]['peak_rss_delta_mib']:.1f} MiB "
              f"({worst_rss[0]})")

if __name__ == "__main__":
    main()
