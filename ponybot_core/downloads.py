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
  is decompressed (a 100-byte PNG can declare 100,000 × 100,000 pixels).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from PIL import Image, ImageOps

# The picture formats we take, by the content type Discord reports and by Pillow's name.
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_CHUNK = 64 * 1024


class DownloadRefused(Exception):
    """The picture cannot be used, and trying again will not change that; `str(error)` says
    why, for the user."""


class DownloadFailed(Exception):
    """The download did not work this time (connection, timeout, Discord's 5xx)."""


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


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """The picture opened lazily (only its header read), refused when it is not a PNG, JPEG
    or WebP or has more than `max_pixels` pixels."""
    found = sniff_format(data[:16])
    if found is None:
        raise DownloadRefused("the file is not a PNG, JPEG or WebP picture")
    try:
        image = Image.open(io.BytesIO(data), formats=[found])
    except Image.DecompressionBombError:
        raise DownloadRefused(f"the picture has more than {max_pixels:,} pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DownloadRefused("the picture could not be read") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise DownloadRefused(f"the picture is {width}×{height}: more than {max_pixels:,} pixels")
    return image


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """The picture decoded (its first frame, turned upright as its EXIF says), within the
    same limits as `open_image`."""
    image = open_image(data, max_pixels=max_pixels)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DownloadRefused("the picture could not be read (damaged or cut off)") from exc
    return ImageOps.exif_transpose(image)


def _too_big(size: int, limit: int, *, at_least: bool = False) -> DownloadRefused:
    if at_least:  # cut off: how big it really is was not waited for
        return DownloadRefused(f"the file is larger than the limit of {describe_bytes(limit)}")
    return DownloadRefused(f"the file is {describe_bytes(size)}; the limit is "
                           f"{describe_bytes(limit)}")
