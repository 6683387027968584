"""Pictures users give the bot, fetched and opened within bounds: the one way in for the bot
(the Parameters menu) and the workers (`/pony image:`, `/upscale`).

A URL in a job or a message is data a user influenced, so nothing about it is trusted:
- only Discord's attachment hosts are fetched (`uploads.hosts`; a bare host means https), and
  a redirect is not followed: it could lead anywhere;
- the download is cut off past `uploads.max_bytes` (whatever Content-Length says) and
  abandoned after `uploads.timeout_s`;
- what the bytes are is read from the bytes (PNG, JPEG or WebP signatures), never from the
  file name or a Content-Type header;
- the picture's size is read from its header and refused over the pixel limit before a pixel
  is decompressed (a 100-byte PNG can declare 100,000 × 100,000 pixels);
- an animation (APNG, animated WebP) counts every frame against that limit, from its header
  (a 10 MiB APNG can hold 160,000 frames), and only its first frame is ever decoded;
- decoding stops at the next block of the file it reads once its job is cancelled or its
  deadline has passed (`DecodeGuard`), and no block makes libjpeg work without end: a JPEG of
  more than `MAX_JPEG_SCANS` scans is refused from a walk over its markers;
- EXIF never reaches Pillow's EXIF reader, which makes a Python object of every value of a
  tag (a million in a 10 MB tag, outside the guard's reach): the Orientation and the
  `parameters` are read by hand, bounded (`image_parameters.read_exif`), the picture turned
  upright here, and a JPEG's EXIF segments left out of what Pillow opens;
- whatever Pillow raises on damaged bytes is one `DownloadRefused` naming the damage: retrying
  a file that cannot be read does not make it readable;
- every mode a PNG, JPEG or WebP decodes to (16-bit gray, palettes with transparency, CMYK, ...)
  comes out as the 8-bit RGB or RGBA it shows (`normalised`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from PIL import Image, ImageMath

from ponybot_core.image_parameters import (
    MAX_CHUNKS,
    UnreadablePicture,
    find_exif,
    find_parameters,
    read_exif,
)

log = logging.getLogger(__name__)

# The picture formats we take, by the content type Discord reports and by Pillow's name.
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_CHUNK = 64 * 1024


class DownloadRefused(Exception):
    """The picture cannot be used, and trying again will not change that; `str(error)` says
    why, for the user."""


class DownloadFailed(Exception):
    """The download did not work this time (connection, timeout, Discord's 5xx)."""


class DecodeCancelled(Exception):
    """The job whose picture was being decoded was cancelled: the decode stopped."""


# What Pillow raises on bytes it cannot read: its own fuzzers' list of "known exceptions"
# (Tests/oss-fuzz), plus EOFError (a frame that is not there) and the struct/index errors of a
# header cut short. Any of them means the file is damaged, not that the worker is.
PILLOW_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, EOFError, ValueError, MemoryError, NotImplementedError, OverflowError,
    IndexError, struct.error, Image.DecompressionBombError, Image.DecompressionBombWarning)

DAMAGED = "the picture is damaged or cut off and cannot be read"

# Scans in one JPEG. Every scan makes libjpeg go over the whole picture once more, and Pillow
# feeds it the file in 64 KiB blocks: thousands of empty scans (10 bytes each) fit in one, where
# no deadline or Cancel is looked at. libjpeg's progressive script (what Pillow, cjpeg and most
# tools write) makes 10 scans for a colour picture, 6 for gray, 18 for CMYK. libjpeg-turbo's
# answer to this attack is a limit too (djpeg -maxscans, TJPARAM_SCANLIMIT; its own fuzzers use
# 500 on pictures of at most 1 Mpx): ours, five times the most an encoder writes, keeps a decode
# of up to uploads.max_pixels to 100 passes over its pixels.
MAX_JPEG_SCANS = 100
# A marker in a JPEG, between segments or ending a scan's entropy-coded data: 0xFF, then neither
# a stuffed zero, a fill byte nor a restart marker (RSTn belong to the scan's data).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")


@dataclass(frozen=True)
class JpegLayout:
    scans: int  # SOS segments counted; the walk stops at MAX_JPEG_SCANS + 1
    exif: list[tuple[int, int]]  # (start, end) of each APP1 `Exif` segment
    markers: int  # markers walked: at most MAX_CHUNKS


def jpeg_layout(data: bytes) -> JpegLayout:
    """Where a JPEG's scans and EXIF segments are, by a walk over its markers: a segment is
    skipped by its length, a scan's entropy-coded data by a regex search for the next marker
    (C speed, one step per marker, not per byte). A file cut off ends the walk: Pillow says
    what is wrong with it when it opens it."""
    scans, markers = 0, 0
    exif: list[tuple[int, int]] = []
    at = 2  # after SOI
    while (found := _JPEG_MARKER.search(data, at)) is not None:
        markers += 1
        if markers > MAX_CHUNKS:
            raise DownloadRefused(f"the picture has more than {MAX_CHUNKS:,} JPEG segments")
        marker, at = data[found.start() + 1], found.end()
        if marker == 0xD9:  # EOI
            break
        if marker in (0x01, 0xD8):  # TEM, SOI: no segment follows
            continue
        if at + 2 > len(data):
            break
        (length,) = struct.unpack_from(">H", data, at)
        if length < 2:
            raise DownloadRefused(DAMAGED)
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                break
        elif marker == 0xE1 and data.startswith(b"Exif\x00\x00", at + 2):
            exif.append((found.start(), at + length))
        at += length
    return JpegLayout(scans, exif, markers)


def _jpeg_for_pillow(data: bytes) -> bytes:
    """The JPEG refused past MAX_JPEG_SCANS scans, and without its EXIF: Pillow joins every
    APP1 `Exif` segment into one block (a 64 KiB segment each, but any number of them) and
    reads it while it opens the file; the worker reads what it needs by hand (`_orientation`)."""
    layout = jpeg_layout(data)
    if layout.scans > MAX_JPEG_SCANS:
        raise DownloadRefused(f"the picture is a JPEG of more than {MAX_JPEG_SCANS} scans "
                              "(encoders write about 10): save it again, or as a PNG")
    if not layout.exif:
        return data
    view, kept, at = memoryview(data), [], 0
    for start, end in layout.exif:
        kept.append(view[at:start])
        at = end
    kept.append(view[at:])
    return b"".join(kept)


@dataclass(frozen=True)
class Downloaded:
    data: bytes
    format: str  # "PNG", "JPEG" or "WEBP", from the bytes


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL, or None when it has no host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def url_allowed(url: str, hosts: list[str]) -> bool:
    """Whether `url` is on one of `hosts`: a bare host (https, port 443) or an origin."""
    found = origin(url)
    if found is None or "@" in urlsplit(url).netloc:  # no user:password@ tricks
        return False
    return any(found == origin(entry if "://" in entry else f"https://{entry}") for entry in hosts)


def sniff_format(data: bytes) -> str | None:
    """PNG, JPEG or WEBP from the file's first bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def describe_bytes(size: int) -> str:
    return f"{size / (1024 * 1024):.3g} MiB" if size >= 1024 * 1024 else f"{size / 1024:.3g} KiB"


async def download_image(url: str, *, hosts: list[str], max_bytes: int,
                         timeout_s: float) -> Downloaded:
    """The picture at `url`, within the bounds the module docstring lists. Raises
    DownloadRefused (for the user) or DownloadFailed (worth another try)."""
    if not url_allowed(url, hosts):
        raise DownloadRefused("the picture is not on Discord's attachment servers")
    try:
        async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session, \
                session.get(url, allow_redirects=False) as response:
            if response.status in (403, 404, 410):
                raise DownloadRefused("the picture is no longer on Discord (deleted or expired)")
            if response.status != 200:
                raise DownloadFailed(f"Discord answered {response.status} for the picture")
            if (response.content_length or 0) > max_bytes:
                raise _too_big(response.content_length or 0, max_bytes)
            data = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise _too_big(len(data), max_bytes, at_least=True)
    except TimeoutError:
        raise DownloadFailed(f"the picture took longer than {timeout_s:g} s to download") from None
    except aiohttp.ClientError as exc:
        raise DownloadFailed(f"the picture could not be downloaded ({exc!r})") from exc
    found = sniff_format(bytes(data[:16]))
    if found is None:
        raise DownloadRefused("the file is not a PNG, JPEG or WebP picture")
    return Downloaded(bytes(data), found)


class DecodeGuard:
    """Stops a decode from outside and counts what it read. Pillow reads a file in blocks as it
    decompresses it (64 KiB of PNG data at a time), and every block is read through the guard:
    past the deadline the picture is refused, once `cancelled` is set the decode stops
    (`DecodeCancelled`). `bytes_read` bounds the work done: tests count it."""

    def __init__(self, *, timeout_s: float | None = None,
                 cancelled: threading.Event | None = None) -> None:
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.cancelled = cancelled
        self.bytes_read = 0

    def check(self) -> None:
        if self.cancelled is not None and self.cancelled.is_set():
            raise DecodeCancelled("the job was cancelled while its picture was decoded")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DownloadRefused(f"the picture took longer than {self.timeout_s:g} s to decode")


class _GuardedFile(io.BytesIO):
    """The picture's bytes as the file Pillow reads, each read checked by the guard."""

    def __init__(self, data: bytes, guard: DecodeGuard) -> None:
        super().__init__(data)
        self.guard = guard

    def read(self, size: int | None = -1, /) -> bytes:
        self.guard.check()
        chunk = super().read(size)
        self.guard.bytes_read += len(chunk)
        return chunk


@contextlib.contextmanager
def refused_when_damaged() -> Iterator[None]:
    """Whatever Pillow raises on bad bytes, as the one `DownloadRefused` a user is told."""
    try:
        yield
    except PILLOW_ERRORS as exc:
        raise DownloadRefused(DAMAGED) from exc


def open_image(data: bytes, *, max_pixels: int, guard: DecodeGuard | None = None) -> Image.Image:
    """The picture opened lazily (only its header read), refused when it is not a PNG, JPEG
    or WebP, cannot be read, or holds more than `max_pixels` pixels: in one frame, or in all
    the frames of an animation together."""
    found = sniff_format(data[:16])
    if found is None:
        raise DownloadRefused("the file is not a PNG, JPEG or WebP picture")
    if found == "JPEG":
        data = _jpeg_for_pillow(data)
    try:
        image = Image.open(_GuardedFile(data, guard or DecodeGuard()), formats=[found])
    except Image.DecompressionBombError:  # past Pillow's own limit, which is above ours
        raise DownloadRefused(f"the picture has more than {max_pixels:,} pixels") from None
    except PILLOW_ERRORS as exc:
        raise DownloadRefused(DAMAGED) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise DownloadRefused(f"the picture is {width}×{height}: more than {max_pixels:,} pixels")
    # Pillow counts frames from the header: APNG's acTL chunk (plus a default image that is
    # not part of the animation), animated WebP's frame list. A JPEG's extra images (MPO: an
    # HDR gain map, a stereo pair) are not frames of an animation: only the first is used.
    frames = getattr(image, "n_frames", 1) if image.format in ("PNG", "WEBP") else 1
    if frames > 1 and frames * width * height > max_pixels:
        raise DownloadRefused(
            f"the picture is an animation of {frames:,} frames of {width}×{height}: more than "
            f"{max_pixels:,} pixels in all (give a still picture, or a shorter animation: "
            f"only its first frame is used)")
    return image


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # the first frame, upright, 8-bit RGB or RGBA (`normalised`)
    parameters: str | None  # its AUTOMATIC1111 `parameters`, if it carries them


def decode_image(data: bytes, *, max_pixels: int, guard: DecodeGuard | None = None) -> Decoded:
    """The picture's first frame decoded, turned upright as its EXIF says and normalised,
    with its `parameters`; within the limits of `open_image` and the guard's."""
    guard = guard or DecodeGuard()
    image = open_image(data, max_pixels=max_pixels, guard=guard)
    with refused_when_damaged():
        image.load()  # the first frame only: Pillow decodes a later one only when asked
        # Nothing after this may hand the EXIF to Pillow's reader (getexif, exif_transpose):
        # what the picture needs of it is read by hand.
        image.info.pop("exif", None)
        picture = normalised(_upright(image, _orientation(data)))
    guard.check()
    return Decoded(picture, _parameters(data))


# Pillow's turn for each EXIF Orientation (2 to 8), the one ImageOps.exif_transpose makes.
_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
          6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}


def _orientation(data: bytes) -> int | None:
    # Pixels that decoded are a picture even when its EXIF is not: shown as stored, then.
    try:
        exif = find_exif(data)
        return read_exif(exif, comment=False).orientation if exif is not None else None
    except UnreadablePicture as exc:
        log.info("a picture's EXIF could not be read (%s); its orientation is ignored", exc)
        return None


def _upright(image: Image.Image, orientation: int | None) -> Image.Image:
    turn = _TURNS.get(orientation or 1)
    return image if turn is None else image.transpose(turn)


def _parameters(data: bytes) -> str | None:
    # From the file's bytes, as the Parameters menu reads them: chunk headers walked, no pixel
    # decoded, text and EXIF bounded. They only ride along to an upscale's file: a picture
    # whose parameters cannot be read is still a picture.
    try:
        found = find_parameters(data)
    except UnreadablePicture as exc:
        log.info("a picture's parameters could not be read (%s)", exc)
        return None
    return found.text if found else None


def normalised(image: Image.Image, *,
               background: tuple[int, int, int] | None = None) -> Image.Image:
    """The picture as the 8-bit RGB it shows, or RGBA where it is transparent; with a
    `background`, always RGB: the picture composited on it.

    Pillow's `convert` does most modes right; the ones it gets wrong are fixed first: 16-bit
    gray (`I;16*`, and `I`, which is how Pillow has read 16-bit gray PNGs) is clipped at 255
    by `convert`, turning every picture white, so it is scaled from 0-65535 instead; `F` is on
    L's 0-255 scale (Pillow's convention) and rounded, not truncated; a transparent level in a
    16-bit gray PNG (tRNS) becomes an alpha channel."""
    alpha: Image.Image | None = None
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I
        wide = image if image.mode == "I" else image.convert("I")
        transparent = image.info.get("transparency")
        if isinstance(transparent, int):
            alpha = ImageMath.lambda_eval(lambda a: (a["gray"] != transparent) * 255,
                                          gray=wide).convert("L")
        image = wide.point(lambda v: v * (255 / 65535) + 0.5).convert("L")
        if alpha is not None:
            image.putalpha(alpha)
    elif image.mode == "F":
        image = image.point(lambda v: v + 0.5).convert("L")
    has_alpha = "A" in image.getbands() or image.mode in ("RGBa", "La") or (
        image.info.get("transparency") is not None and image.mode in ("1", "L", "P", "RGB")) or (
        image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA")
    if image.mode != ("RGBA" if has_alpha else "RGB"):
        image = image.convert("RGBA" if has_alpha else "RGB")
    if background is None or image.mode == "RGB":
        return image
    flat = Image.new("RGBA", image.size, (*background, 255))
    flat.alpha_composite(image)
    return flat.convert("RGB")


def _too_big(size: int, limit: int, *, at_least: bool = False) -> DownloadRefused:
    if at_least:  # cut off: how big it really is was not waited for
        return DownloadRefused(f"the file is larger than the limit of {describe_bytes(limit)}")
    return DownloadRefused(f"the file is {describe_bytes(size)}; the limit is "
                           f"{describe_bytes(limit)}")
