"""Every posted file fits Discord's attachment limit, losing as little as it must, and keeps its
generation parameters wherever the format can carry them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import ExifTags, Image

from inference.results.fit import encode_webp, fit_image, fit_images, png_with_parameters
from ponybot_core.image_parameters import read_parameters

PARAMETERS = ("twilight sparkle, unicorn, solo, scr100\nNegative prompt: explicit\n"
              "Steps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 1234, Size: 512x512, "
              "Model: Pony Diffusion — ✓ ünïcode")


def noise(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """The worst case for every codec."""
    values = np.random.default_rng(seed).integers(0, 256, (height, width, len(mode)), np.uint8)
    return Image.fromarray(values, mode)


def smooth(width: int, height: int, seed: int = 0) -> Image.Image:
    """Soft gradients: where lossless WebP beats PNG by far, like generated art."""
    return noise(8, 8, seed).resize((width, height), Image.Resampling.BICUBIC)


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def exif_user_comment(data: bytes) -> str:
    """Read back the way AUTOMATIC1111 does (piexif's UserComment: 'UNICODE\\0' + UTF-16 BE)."""
    exif = opened(data).getexif()
    assert exif.endian == ">"  # big-endian EXIF, as piexif writes it
    comment = exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert comment[:8] == b"UNICODE\x00"
    return comment[8:].decode("utf-16-be")


def test_a_small_picture_stays_png_with_its_parameters_chunk() -> None:
    image = smooth(64, 64)

    fitted = fit_image(image, PARAMETERS, limit_bytes=10 * 1024 * 1024)

    assert (fitted.format, fitted.extension, fitted.reencoded, fitted.note) == (
        "PNG", "png", False, None)
    assert fitted.data == png_with_parameters(image, PARAMETERS)
    assert opened(fitted.data).text["parameters"] == PARAMETERS
    assert read_parameters(fitted.data) == PARAMETERS
    assert fitted.filename("pony-1234") == "pony-1234.png"


def test_a_png_over_the_limit_becomes_lossless_webp_with_the_same_pixels() -> None:
    image = smooth(256, 256)
    png = len(png_with_parameters(image, PARAMETERS))
    lossless = len(encode_webp(image, PARAMETERS, quality=None))
    assert lossless < png  # what makes this case possible
    limit = (lossless + png) // 2

    fitted = fit_image(image, PARAMETERS, limit_bytes=limit)

    assert len(fitted.data) <= limit
    assert (fitted.format, fitted.extension, fitted.lossless, fitted.reencoded) == (
        "WEBP", "webp", True, True)
    assert fitted.note is not None and "re-encoded as WebP (lossless)" in fitted.note
    assert np.array_equal(np.asarray(opened(fitted.data)), np.asarray(image))
    assert exif_user_comment(fitted.data) == PARAMETERS
    assert read_parameters(fitted.data) == PARAMETERS


def test_then_lossy_webp_stepping_the_quality_down() -> None:
    image = noise(128, 128)
    q95 = len(encode_webp(image, PARAMETERS, quality=95))
    q90 = len(encode_webp(image, PARAMETERS, quality=90))
    assert q90 < q95 < len(encode_webp(image, PARAMETERS, quality=None))
    limit = (q90 + q95) // 2

    fitted = fit_image(image, PARAMETERS, limit_bytes=limit)

    assert len(fitted.data) <= limit
    assert (fitted.format, fitted.lossless, fitted.quality) == ("WEBP", False, 90)
    assert (fitted.width, fitted.height) == (128, 128)
    assert fitted.note is not None and "WebP (quality 90)" in fitted.note
    assert read_parameters(fitted.data) == PARAMETERS


def test_then_downscaled_as_a_last_resort() -> None:
    image = noise(128, 128)
    limit = len(encode_webp(image, PARAMETERS, quality=80)) // 3

    fitted = fit_image(image, PARAMETERS, limit_bytes=limit)

    assert len(fitted.data) <= limit
    assert fitted.width < 128 and fitted.height < 128
    assert opened(fitted.data).size == (fitted.width, fitted.height)
    assert fitted.note is not None and fitted.note.startswith(
        f"downscaled to {fitted.width}x{fitted.height}")
    assert exif_user_comment(fitted.data) == PARAMETERS


def test_the_note_names_the_limit() -> None:
    image = noise(64, 64)

    fitted = fit_image(image, PARAMETERS, limit_bytes=8 * 1024)

    assert fitted.note is not None and fitted.note.endswith("to fit Discord's 8 KiB limit")


def test_parameters_too_large_for_the_limit_are_left_out_not_fatal() -> None:
    parameters = "pony, " * 400  # ~4.8 KiB as UTF-16

    fitted = fit_image(noise(32, 32), parameters, limit_bytes=4096)

    assert len(fitted.data) <= 4096
    assert not fitted.parameters_kept
    assert fitted.note is not None and "parameters were left out" in fitted.note


def test_an_impossible_limit_still_gives_a_picture() -> None:
    fitted = fit_image(noise(64, 64), PARAMETERS, limit_bytes=16)

    assert (fitted.width, fitted.height) == (1, 1)
    assert opened(fitted.data).size == (1, 1)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA"])
def test_other_modes_are_fitted_too(mode: str) -> None:
    image = noise(96, 96, mode="RGBA").convert(mode)
    limit = len(png_with_parameters(image, PARAMETERS)) // 2

    fitted = fit_image(image, PARAMETERS, limit_bytes=limit)

    assert len(fitted.data) <= limit
    assert read_parameters(fitted.data) == PARAMETERS


def test_fit_images_limits_each_file_and_an_optional_total() -> None:
    images = [(noise(96, 96, seed), f"{PARAMETERS} #{seed}") for seed in range(3)]
    png = len(png_with_parameters(images[0][0], PARAMETERS))

    each = fit_images(images, limit_bytes=png * 2)
    assert [f.format for f in each] == ["PNG"] * 3

    total = png * 3 // 2
    shared = fit_images(images, limit_bytes=png * 2, total_limit_bytes=total)
    assert sum(len(f.data) for f in shared) <= total
    assert [read_parameters(f.data) for f in shared] == [p for _, p in images]
