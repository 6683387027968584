"""Every kind of pixel a PNG, JPEG or WebP can hold reaches img2img and the upscaler with the
colours it shows: one function (`ponybot_core.downloads.normalised`) turns each mode into 8-bit
RGB, or RGBA where the picture is transparent, and img2img flattens that on white as
AUTOMATIC1111 does. A mode converted naively goes wrong quietly: a 16-bit gray picture turns
white, a transparent palette picture shows the colour behind its transparency."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.drawing.img2img import starting_image
from ponybot_core.downloads import decode_image, normalised

MAX_PIXELS = 4096 * 4096
WHITE = (255, 255, 255)


def filled(mode: str, value: object, size: tuple[int, int] = (4, 4)) -> Image.Image:
    return Image.new(mode, size, value)  # type: ignore[arg-type]


def palette(transparent: bool) -> Image.Image:
    """Index 0 red (transparent when asked), index 1 green; pixel (0, 0) is index 0."""
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((1, 0), 1)
    if transparent:
        image.info["transparency"] = 0
    return image


def with_transparency(image: Image.Image, value: object) -> Image.Image:
    image.info["transparency"] = value
    return image


def saved(image: Image.Image, fmt: str, **options: object) -> Image.Image:
    """The picture written as a real file and read back by the worker's decoder."""
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return decode_image(out.getvalue(), max_pixels=MAX_PIXELS).image


# (mode built, the picture, pixel (0, 0) normalised, pixel (0, 0) flattened on white)
MODES: dict[str, tuple[Callable[[], Image.Image], tuple[int, ...], tuple[int, int, int]]] = {
    "16-bit gray, mid": (lambda: filled("I;16", 128 * 257), (128, 128, 128), (128, 128, 128)),
    "16-bit gray, dark": (lambda: filled("I;16", 20 * 257), (20, 20, 20), (20, 20, 20)),
    "16-bit gray, white": (lambda: filled("I;16", 65535), WHITE, WHITE),
    "16-bit gray, big-endian": (lambda: filled("I;16B", 200 * 257), (200,) * 3, (200,) * 3),
    "16-bit gray, little-endian": (lambda: filled("I;16L", 60 * 257), (60,) * 3, (60,) * 3),
    "16-bit gray with a transparent level": (
        lambda: with_transparency(filled("I;16", 128 * 257), 128 * 257),
        (128, 128, 128, 0), WHITE),
    "I (32-bit, as Pillow reads 16-bit gray)": (lambda: filled("I", 128 * 257), (128,) * 3,
                                                 (128,) * 3),
    "I below zero": (lambda: filled("I", -5), (0, 0, 0), (0, 0, 0)),
    "I past 16 bits": (lambda: filled("I", 1 << 20), WHITE, WHITE),
    "F (on L's 0-255 scale, as Pillow has it)": (lambda: filled("F", 127.6), (128,) * 3,
                                                  (128,) * 3),
    "1 (bilevel), white": (lambda: filled("1", 1), WHITE, WHITE),
    "1 (bilevel), black": (lambda: filled("1", 0), (0, 0, 0), (0, 0, 0)),
    "L": (lambda: filled("L", 77), (77, 77, 77), (77, 77, 77)),
    "L with a transparent level": (lambda: with_transparency(filled("L", 77), 77),
                                   (77, 77, 77, 0), WHITE),
    "LA, transparent": (lambda: filled("LA", (100, 0)), (100, 100, 100, 0), WHITE),
    "LA, half": (lambda: filled("LA", (0, 128)), (0, 0, 0, 128), (127, 127, 127)),
    "P": (lambda: palette(transparent=False), (255, 0, 0), (255, 0, 0)),
    "P with a transparent index (tRNS)": (lambda: palette(transparent=True), (255, 0, 0, 0),
                                          WHITE),
    "PA": (lambda: filled("PA", (0, 0)), (0, 0, 0, 0), WHITE),
    "RGB": (lambda: filled("RGB", (10, 20, 30)), (10, 20, 30), (10, 20, 30)),
    "RGB with a transparent colour": (
        lambda: with_transparency(filled("RGB", (10, 20, 30)), (10, 20, 30)),
        (10, 20, 30, 0), WHITE),
    "RGBA, opaque": (lambda: filled("RGBA", (10, 20, 30, 255)), (10, 20, 30, 255),
                     (10, 20, 30)),
    "RGBA, half": (lambda: filled("RGBA", (0, 0, 0, 128)), (0, 0, 0, 128), (127, 127, 127)),
    "RGBa (premultiplied)": (lambda: filled("RGBa", (50, 50, 50, 128)), (99, 99, 99, 128),
                             (176, 176, 176)),
    "CMYK, no ink": (lambda: filled("CMYK", (0, 0, 0, 0)), WHITE, WHITE),
    "CMYK, cyan": (lambda: filled("CMYK", (255, 0, 0, 0)), (0, 255, 255), (0, 255, 255)),
    "CMYK, black": (lambda: filled("CMYK", (0, 0, 0, 255)), (0, 0, 0), (0, 0, 0)),
    "YCbCr": (lambda: filled("YCbCr", (128, 128, 128)), (128, 128, 128), (128, 128, 128)),
    # The same, as real files through the worker's decoder.
    "16-bit gray PNG file": (
        lambda: saved(filled("I;16", 128 * 257), "PNG"), (128, 128, 128), (128, 128, 128)),
    "palette PNG file with tRNS": (
        lambda: saved(palette(transparent=True), "PNG", transparency=0), (255, 0, 0, 0), WHITE),
    "gray PNG file with tRNS": (
        lambda: saved(filled("L", 77), "PNG", transparency=77), (77, 77, 77, 0), WHITE),
    "LA PNG file": (lambda: saved(filled("LA", (100, 0)), "PNG"), (100, 100, 100, 0), WHITE),
    "bilevel PNG file": (lambda: saved(filled("1", 1), "PNG"), WHITE, WHITE),
    "bilevel PNG file with tRNS": (lambda: saved(filled("1", 0), "PNG", transparency=0),
                                   (0, 0, 0, 0), WHITE),
    "CMYK JPEG file": (lambda: saved(filled("CMYK", (255, 0, 0, 0), (16, 16)), "JPEG",
                                     quality=100), (0, 255, 255), (0, 255, 255)),
}


@pytest.mark.parametrize(("build", "expected", "_flat"), MODES.values(), ids=MODES.keys())
def test_every_mode_becomes_8_bit_rgb_or_rgba_with_the_colours_it_shows(build, expected, _flat):
    image = normalised(build())

    assert image.mode == ("RGBA" if len(expected) == 4 else "RGB")
    assert _close(image.getpixel((0, 0)), expected)


@pytest.mark.parametrize(("build", "_expected", "flat"), MODES.values(), ids=MODES.keys())
def test_img2img_starts_from_the_picture_flattened_on_white(build, _expected, flat):
    source = build()

    start = starting_image(source, 8, 8)

    assert start.mode == "RGB" and start.size == (8, 8)
    assert _close(start.getpixel((0, 0)), flat)


def test_a_16_bit_gray_ramp_keeps_every_level_in_order():
    ramp = np.arange(0, 65536, 257, dtype=np.uint16).reshape(1, 256)  # 256 levels, 0..65535
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"

    pixels = np.asarray(normalised(image))

    assert pixels.shape == (1, 256, 3)
    assert list(pixels[0, :, 0]) == list(range(256))


def test_the_upscaler_sees_a_16_bit_gray_picture_as_the_gray_it_is(tmp_path: Path):
    import torch

    from inference.results.upscale import load_upscaler
    from ponybot_core.config import UpscalerEntry
    from ponybot_testkit.tiny_esrgan import realesrgan_state_dict, save_pth

    path = save_pth(realesrgan_state_dict(), tmp_path / "tiny-x4.pth")
    upscaler = load_upscaler(UpscalerEntry(id="tiny", name="Tiny", path=path),
                             base_dir=tmp_path, device="cpu", dtype=torch.float32)

    gray16 = upscaler.upscale(filled("I;16", 128 * 257, (16, 16)))
    gray8 = upscaler.upscale(filled("RGB", (128, 128, 128), (16, 16)))

    assert gray16.mode == "RGB" and np.array_equal(np.asarray(gray16), np.asarray(gray8))


def _close(got: object, expected: tuple[int, ...], tolerance: int = 3) -> bool:
    """Equal up to rounding (and a JPEG's few levels of loss)."""
    values = got if isinstance(got, tuple) else (got,)
    return len(values) == len(expected) and all(
        abs(int(a) - b) <= tolerance for a, b in zip(values, expected, strict=True))
