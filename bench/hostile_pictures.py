"""What hostile pictures cost the bot's **Parameters** menu (issue 16).

Builds a corpus of hostile pictures (ponybot_testkit.hostile_pictures): the 30 KB PNG whose
settings line stalled the bot, long EXIF comments in JPEG and WebP, an animated PNG of 1,000
frames of 4096², compressed-text bombs, thousands of chunks, a WebP declaring a 16384² canvas,
truncated files, bad EXIF, an EXIF tag of 1.2 million RATIONALs (PNG, WebP, and JPEG split over
APP1 segments). Each is read by the menu's own reading path
(`cogs.parameters.read_picture`: find the text without decoding pixels, parse it) in a fresh
subprocess, which reports its CPU seconds and the growth of its peak RSS (getrusage) around
the read. Prints one row per picture, then the worst CPU and the worst peak RSS; then, for
reference, A1111's settings regex against our scanner on the same hostile line.

    python bench/hostile_pictures.py [--no-reference]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from ponybot_core.image_parameters import MAX_CHUNKS, parameters_exif
from ponybot_testkit import hostile_pictures as hostile

THEIRS = ("1girl, pony ears\nNegative prompt: lowres\nSteps: 30, Sampler: Euler a, CFG scale: 7, "
          "Seed: 12, Size: 512x512, Model hash: abc123, Model: anything-v3")
CPU_LIMIT_S = 30  # a regression is reported as a kill, not waited for

CORPUS: dict[str, Callable[[], bytes]] = {
    "long line PNG, 30 KB (the issue's)": lambda: hostile.long_line_png(30_000),
    "long line PNG, 1 MB": lambda: hostile.long_line_png(1_000_000),
    "1 MB of colons PNG": lambda: hostile.long_line_png(1_000_000, "colons"),
    "1 MB of unclosed quotes PNG": lambda: hostile.long_line_png(1_000_000, "unclosed quotes"),
    "long EXIF comment JPEG, 32k chars": lambda: hostile.long_comment_jpeg(32_000),
    "long EXIF comment WebP, 1M chars": lambda: hostile.long_comment_webp(1_000_000),
    "APNG 1000 frames of 4096², text last": lambda: hostile.apng_bomb(parameters=THEIRS),
    "zTXt bomb, 256 MiB of text": lambda: hostile.ztxt_bomb_png(256 << 20),
    "iTXt bomb, 256 MiB of text": lambda: hostile.ztxt_bomb_png(256 << 20, kind="iTXt"),
    f"{MAX_CHUNKS - 10:,} text chunks, text last": lambda: hostile.many_chunks_png(
        MAX_CHUNKS - 10, parameters=THEIRS),
    "300,000 text chunks": lambda: hostile.many_chunks_png(300_000, parameters=THEIRS),
    "WebP declaring 16384², 1000 frames": lambda: hostile.webp_declaring(
        16384, 16384, frames=1000, exif=parameters_exif(THEIRS)),
    "PNG cut off in its pixels": lambda: hostile.truncated(hostile.apng_bomb(3), 0.6),
    "JPEG cut off in its EXIF": lambda: hostile.truncated(
        hostile.exif_picture("JPEG", THEIRS), 100),
    "WebP cut off": lambda: hostile.truncated(hostile.exif_picture("WEBP", THEIRS), 0.5),
    "PNG with a bad checksum": lambda: hostile.with_bad_crc(
        hostile.png_with_text(THEIRS), b"tEXt"),
    "EXIF tag of 1.2 M RATIONALs, PNG": lambda: hostile.exif_png(
        hostile.large_tag_exif(9_900_000, parameters=THEIRS)),
    "EXIF tag of 1.2 M RATIONALs, WebP": lambda: hostile.exif_webp(
        hostile.large_tag_exif(9_900_000, parameters=THEIRS)),
    "EXIF tag of 1.2 M RATIONALs, JPEG APP1s": lambda: hostile.split_exif_jpeg(
        hostile.large_tag_exif(9_600_000, tag=0x0128, in_exif_ifd=False)),
    **{f"JPEG with bad EXIF: {name}": partial(hostile.jpeg_with_app1, b"Exif\0\0" + exif)
       for name, exif in hostile.BAD_EXIF.items()},
    **{f"WebP with bad EXIF: {name}": partial(hostile.webp_with_exif, exif)
       for name, exif in hostile.BAD_EXIF.items()},
}


def read_one(path: str) -> None:
    """In the subprocess: read one picture as the menu does; print what it cost as JSON."""
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S + 5))
    from cogs.parameters import read_picture
    from ponybot_core.image_parameters import UnreadablePicture

    data = Path(path).read_bytes()
    rss_before = peak_rss_reset()
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        parsed = read_picture(data)
        if parsed is None:
            outcome = "no parameters"
        else:
            chars = len(parsed.prompt) + len(parsed.negative_prompt)
            outcome = (f"{'cut, ' if parsed.cut else ''}{chars:,} chars of prompt, "
                       f"seed {parsed.seed}")
    except UnreadablePicture as exc:
        outcome = f"damaged: {exc}"
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "peak_rss_delta_mib": (status_kib("VmHWM") - rss_before) / 1024,
        "outcome": outcome,
    }))


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_reset() -> int:
    """Reset this process's peak RSS to its current RSS (Linux: clear_refs 5) and return it
    (KiB): the peak measured after it is the read's own, not the imports'."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def measure(path: Path) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True,
                          text=True, cwd=root, env=env)
    if done.returncode != 0:
        return {"cpu_s": float("nan"), "peak_rss_delta_mib": float("nan"),
                "outcome": f"KILLED (exit {done.returncode}): {done.stderr.strip()[-200:]}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def reference() -> None:
    """A1111's `re_param` against `scan_settings` on the issue's hostile line."""
    from ponybot_core.image_parameters import scan_settings

    a1111 = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    print("\nreference: the settings line alone, CPU seconds (process_time)")
    print(f"{'characters':>12}  {'A1111 re_param':>15}  {'scan_settings':>14}")
    for chars in (5_000, 10_000, 20_000):
        line = hostile.hostile_line(chars)
        started = time.process_time()
        a1111.findall(line)
        regex_s = time.process_time() - started
        started = time.process_time()
        scan_settings(line)
        print(f"{chars:>12,}  {regex_s:>15.3f}  {time.process_time() - started:>14.4f}")
    line = hostile.hostile_line(1_000_000)
    started = time.process_time()
    scan = scan_settings(line)
    print(f"{1_000_000:>12,}  {'(not run)':>15}  {time.process_time() - started:>14.4f}"
          f"   ({scan.visited / len(line):.2f} characters visited per character)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    if args.one:
        read_one(args.one)
        return

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, build in enumerate(CORPUS.values()):
            paths.append(Path(folder) / f"{index}.bin")
            paths[-1].write_bytes(build())
        # Each picture in its own process: CPU and peak RSS are that process's own, so a few
        # run side by side without changing what each one measures.
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(measure, paths))
        rows = [(name, path.stat().st_size, result)
                for name, path, result in zip(CORPUS, paths, results, strict=True)]
    print(f"{'picture':<42} {'file':>9} {'CPU s':>7} {'peak RSS Δ':>11}  outcome")
    for name, size, result in rows:
        print(f"{name:<42} {hostile_size(size):>9} {result['cpu_s']:>7.3f} "
              f"{result['peak_rss_delta_mib']:>8.1f} MiB  {str(result['outcome'])[:70]}")
    killed = [name for name, _, result in rows if str(result["outcome"]).startswith("KILLED")]
    measured = [row for row in rows if row[0] not in killed]
    if not measured:
        sys.exit("every picture failed: see the outcomes above")
    worst_cpu = max(measured, key=lambda row: float(row[2]["cpu_s"]))
    worst_rss = max(measured,
                    key=lambda row: float(row[2]["peak_rss_delta_mib"]))
    print(f"\nworst CPU:      {worst_cpu[2]['cpu_s']:.3f} s ({worst_cpu[0]})")
    print(f"worst peak RSS: +{worst_rss[2]['peak_rss_delta_mib']:.1f} MiB ({worst_rss[0]})")
    if killed:
        print(f"KILLED or failed ({len(killed)}): {', '.join(killed)}")
    print(f"{len(rows)} pictures in {time.perf_counter() - started:.1f} s (building included)")
    if not args.no_reference:
        reference()


def hostile_size(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size / 1024:.1f} KiB"


if __name__ == "__main__":
    main()
