"""Encode a picture so that it fits Discord's attachment limit, keeping its parameters.

A job must never fail because its file is too big. The ladder, cheapest loss first:
1. PNG with the `parameters` text chunk (what AUTOMATIC1111-style tools read);
2. lossless WebP, the pixels unchanged;
3. lossy WebP at quality 95, 90, 85, 80;
4. smaller lossy WebP (Lanczos downscale) until it fits.
WebP carries the parameters in EXIF UserComment, written the way AUTOMATIC1111 writes them for
WebP and JPEG (piexif's "UNICODE" UTF-16 big-endian comment in a big-endian EXIF block), here
through Pillow's own Exif API, in `ponybot_core.image_parameters` (the bot reads them back with
it). Discord's limit is per file (10 MiB by default; an interaction says its
`attachment_size_limit`), not per message.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image
from PIL.PngImagePlugin import PngInfo

# The format lives with the bot's Parameters menu, torch-free.
from ponybot_core.image_parameters import parameters_exif

LOSSY_QUALITIES = (95, 90, 85, 80)
DOWNSCALE_QUALITY = 90
# Lossless WebP is rarely under half the PNG (about 50-75 % on generated art); beyond that
# the ~1-3 s it takes on a 2048 px image are skipped.
LOSSLESS_WEBP_MAX_RATIO = 2.0
# Lossless WebP effort (quality means CPU effort here): 25/method 1 came within 2 % of the
# default's size at a quarter of its time on 2048 px test art. exact: keep the RGB under fully
# transparent pixels too.
LOSSLESS_WEBP_OPTIONS = {"lossless": True, "quality": 25, "method": 1, "exact": True}


@dataclass(frozen=True)
class Fitted:
    data: bytes
    format: str  # "PNG" or "WEBP"
    extension: str  # "png" or "webp"
    width: int
    height: int
    lossless: bool
    quality: int | None  # lossy WebP quality
    parameters_kept: bool
    note: str | None  # what was done, for the message; None when the PNG fitted

    @property
    def reencoded(self) -> bool:
        return self.format != "PNG"

    def filename(self, stem: str) -> str:
        return f"{stem}.{self.extension}"


def png_with_parameters(image: Image.Image, parameters: str) -> bytes:
    """PNG with the `parameters` text chunk AUTOMATIC1111-style tools read back."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    out = io.BytesIO()
    # compress_level 4: a third of the time of the default 6 for a few percent larger files.
    image.save(out, format="PNG", pnginfo=info, compress_level=4)
    return out.getvalue()


def describe_limit(limit_bytes: int) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit_bytes >= size:
            return f"{limit_bytes / size:.3g} {unit}"
    return f"{limit_bytes} bytes"


def encode_webp(image: Image.Image, parameters: str | None, *, quality: int | None) -> bytes:
    """Lossless WebP when quality is None, else lossy at that quality; parameters in EXIF."""
    options: dict[str, object] = (dict(LOSSLESS_WEBP_OPTIONS) if quality is None
                                  else {"quality": quality, "method": 4})
    if parameters:
        options["exif"] = parameters_exif(parameters)
    out = io.BytesIO()
    image.save(out, format="WEBP", **options)
    return out.getvalue()


def _fitted(data: bytes, image: Image.Image, *, quality: int | None, lossless: bool,
            parameters_kept: bool, note: str | None) -> Fitted:
    fmt = "PNG" if data[:4] == b"\x89PNG" else "WEBP"
    return Fitted(data=data, format=fmt, extension=fmt.lower(), width=image.width,
                  height=image.height, lossless=lossless, quality=quality,
                  parameters_kept=parameters_kept, note=note)


def _prepared(image: Image.Image) -> Image.Image:
    # WebP takes RGB or RGBA; anything else (P, L, I;16, CMYK) is converted once up front.
    if image.mode in ("RGB", "RGBA"):
        return image
    has_alpha = image.mode in ("LA", "PA") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def fit_image(image: Image.Image, parameters: str, *, limit_bytes: int) -> Fitted:
    """The best encoding of `image` no larger than `limit_bytes`; never raises for size."""
    limit = describe_limit(limit_bytes)
    # Parameters that would take half the budget are left out (only with absurd limits).
    keep = len(parameters.encode("utf-16-be")) + 64 <= limit_bytes // 2
    carried = parameters if keep else None
    dropped = "" if keep else "; the parameters were left out"

    # 1. PNG with the parameters chunk.
    png = png_with_parameters(image, parameters if keep else "")
    if len(png) <= limit_bytes:
        note = None if keep else f"the parameters were left out to fit the {limit} limit"
        return _fitted(png, image, quality=None, lossless=True, parameters_kept=keep, note=note)

    # 2. Lossless WebP, when it has a chance.
    image = _prepared(image)
    if len(png) <= limit_bytes * LOSSLESS_WEBP_MAX_RATIO:
        data = encode_webp(image, carried, quality=None)
        if len(data) <= limit_bytes:
            return _fitted(data, image, quality=None, lossless=True, parameters_kept=keep,
                           note=f"re-encoded as WebP (lossless) to fit Discord's {limit} "
                                f"limit{dropped}")

    # 3. Lossy WebP, stepping the quality down.
    sizes: dict[int, int] = {}
    for quality in LOSSY_QUALITIES:
        data = encode_webp(image, carried, quality=quality)
        sizes[quality] = len(data)
        if len(data) <= limit_bytes:
            return _fitted(data, image, quality=quality, lossless=False, parameters_kept=keep,
                           note=f"re-encoded as WebP (quality {quality}) to fit Discord's "
                                f"{limit} limit{dropped}")

    # 4. Downscale. Lossy size is about proportional to the pixel count.
    quality = DOWNSCALE_QUALITY
    size = sizes.get(quality) or len(encode_webp(image, carried, quality=quality))
    factor = 1.0
    while True:
        factor *= min(0.9, math.sqrt(limit_bytes / size) * 0.95)
        width, height = max(1, round(image.width * factor)), max(1, round(image.height * factor))
        smaller = image.resize((width, height), Image.Resampling.LANCZOS)
        data = encode_webp(smaller, carried, quality=quality)
        size = len(data)
        if size <= limit_bytes or (width == 1 and height == 1):
            break
    return _fitted(data, smaller, quality=quality, lossless=False, parameters_kept=keep,
                   note=f"downscaled to {width}x{height} and re-encoded as WebP (quality "
                        f"{quality}) to fit Discord's {limit} limit{dropped}")


def fit_images(images: Iterable[tuple[Image.Image, str]], limit_bytes: int,
               total_limit_bytes: int | None = None) -> list[Fitted]:
    """fit_image for each (image, parameters) of one message, each under `limit_bytes`; when
    the files together exceed `total_limit_bytes` (Discord caps a whole request too), each file
    over an equal share is refitted to that share."""
    items = list(images)
    fitted = [fit_image(image, parameters, limit_bytes=limit_bytes)
              for image, parameters in items]
    if total_limit_bytes is None or sum(len(f.data) for f in fitted) <= total_limit_bytes:
        return fitted
    share = min(limit_bytes, total_limit_bytes // max(1, len(items)))
    return [f if len(f.data) <= share else fit_image(image, parameters, limit_bytes=share)
            for f, (image, parameters) in zip(fitted, items, strict=True)]
