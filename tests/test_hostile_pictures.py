"""Reading `parameters` out of hostile pictures (ponybot_core.image_parameters.find_parameters):
the bytes are walked as containers (PNG chunks, JPEG segments, WebP RIFF chunks), no pixel is
ever decoded, compressed text inflates no further than the text limit, the walk is capped, and
a picture that cannot be read says why instead of raising whatever Pillow raises (issue 16).

Bounds are counted, not timed: pixels decoded (Pillow's load, spied), bytes allocated
(tracemalloc's peak), chunks walked (the cap)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from PIL import Image, ImageFile

from ponybot_core.image_parameters import (
    MAX_CHUNKS,
    PARAMETERS_LIMIT,
    FoundParameters,
    UnreadablePicture,
    find_parameters,
    parameters_exif,
)
from ponybot_testkit.hostile_pictures import (
    BAD_EXIF,
    apng_bomb,
    exif_picture,
    exif_png,
    exif_webp,
    hostile_parameters,
    hostile_pictures,
    jpeg_with_app1,
    large_tag_exif,
    long_comment_jpeg,
    long_comment_webp,
    many_chunks_png,
    png,
    png_chunk,
    png_with_text,
    split_exif_jpeg,
    truncated,
    webp_declaring,
    webp_with_exif,
    with_bad_crc,
    ztxt_bomb_png,
)

THEIRS = ("1girl, pony ears\nNegative prompt: lowres\nSteps: 30, Sampler: Euler a, CFG scale: 7, "
          "Seed: 12, Size: 512x512, Model hash: abc123, Model: anything-v3")


@pytest.fixture
def pixels_decoded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every picture Pillow opens or decodes while the test runs."""
    seen: list[str] = []
    real_open, real_load = Image.open, ImageFile.ImageFile.load

    def spy_open(*args, **kwargs):
        seen.append("open")
        return real_open(*args, **kwargs)

    def spy_load(self):
        seen.append(f"load {self.format} {self.size}")
        return real_load(self)

    monkeypatch.setattr(Image, "open", spy_open)
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    yield seen


def peak_bytes_while(read, data: bytes):
    """What `read(data)` returns, and the most memory it held at once (tracemalloc)."""
    tracemalloc.start()
    try:
        found = read(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return found, peak


# --- found, wherever A1111 or anyone else put them ----------------------------------------------


@pytest.mark.parametrize("kind", ["tEXt", "iTXt", "iTXt-z", "zTXt"])
@pytest.mark.parametrize("after_pixels", [False, True], ids=["before pixels", "after pixels"])
def test_parameters_are_found_in_every_png_text_chunk_before_or_after_the_pixels(
        kind, after_pixels, pixels_decoded):
    found = find_parameters(png_with_text(THEIRS, kind=kind, after_pixels=after_pixels))

    assert found == FoundParameters(text=THEIRS, cut=False, where=f"PNG {kind[:4]} chunk")
    assert pixels_decoded == []


def test_a_png_exif_user_comment_is_read_when_there_is_no_text_chunk():
    found = find_parameters(png(after=[png_chunk(b"eXIf", parameters_exif(THEIRS)[6:])]))

    assert found is not None and (found.text, found.where) == (THEIRS, "EXIF UserComment")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_jpeg_and_webp_exif_comments_are_read_from_their_containers(fmt, pixels_decoded):
    found = find_parameters(exif_picture(fmt, THEIRS))

    assert found is not None and (found.text, found.where) == (THEIRS, "EXIF UserComment")
    assert pixels_decoded == []


def test_a_picture_cut_off_after_its_parameters_still_shows_them():
    whole = png_with_text(THEIRS)

    found = find_parameters(truncated(whole, len(whole) - 20))  # cut in the pixels

    assert found is not None and found.text == THEIRS


# --- bombs: no pixels, bounded memory ---------------------------------------------------------


def test_an_animated_png_bomb_is_read_without_decoding_a_pixel(pixels_decoded):
    bomb = apng_bomb(frames=1000, width=4096, height=4096, parameters=THEIRS)  # 16 GiB decoded

    found, peak = peak_bytes_while(find_parameters, bomb)

    assert found is not None and found.text == THEIRS
    assert pixels_decoded == []
    assert peak < 256 * 1024, f"held {peak} bytes reading a {len(bomb)}-byte file"


def test_a_webp_declaring_a_huge_canvas_is_read_without_setting_it_up(pixels_decoded):
    bomb = webp_declaring(16384, 16384, frames=1000, exif=parameters_exif(THEIRS))

    found = find_parameters(bomb)

    assert found is not None and found.text == THEIRS
    assert pixels_decoded == []


@pytest.mark.parametrize("kind", ["zTXt", "iTXt"])
def test_a_compressed_text_bomb_inflates_no_further_than_the_text_limit(kind):
    bomb = ztxt_bomb_png(64 << 20, kind=kind)  # 64 MiB of text in about 65 KB

    found, peak = peak_bytes_while(find_parameters, bomb)

    assert found is not None and found.cut and len(found.text) == PARAMETERS_LIMIT
    assert peak < 16 * PARAMETERS_LIMIT, f"held {peak} bytes inflating the text"


@pytest.mark.parametrize("read", [long_comment_webp, lambda: ztxt_bomb_png(1 << 20)],
                         ids=["webp exif comment", "png ztxt"])
def test_text_over_the_limit_is_cut_there_and_says_so(read):
    found = find_parameters(read())

    assert found is not None and found.cut and len(found.text) == PARAMETERS_LIMIT


def test_the_longest_jpeg_comment_fits_the_limit_whole():
    found = find_parameters(long_comment_jpeg(32_000))

    assert found is not None and not found.cut
    assert found.text == hostile_parameters(32_000)


def test_the_chunk_walk_stops_at_its_cap_and_says_so():
    assert find_parameters(many_chunks_png(MAX_CHUNKS - 10, parameters=THEIRS)) is not None

    with pytest.raises(UnreadablePicture, match=f"more than {MAX_CHUNKS:,} chunks"):
        find_parameters(many_chunks_png(MAX_CHUNKS + 10, parameters=THEIRS))


# --- damaged: a reason, never Pillow's exceptions ---------------------------------------------


def _cut_in_text() -> bytes:
    whole = png_with_text(THEIRS, after_pixels=True)
    return truncated(whole, len(whole) - 40)


@pytest.mark.parametrize(("data", "reason"), [
    (_cut_in_text(), "cut off"),
    (truncated(png(), 40), "cut off"),
    (with_bad_crc(png_with_text(THEIRS), b"tEXt"), "checksum"),
    (png()[:8] + png()[33:], "does not start with its header"),
    (truncated(exif_picture("JPEG", THEIRS), 60), "cut off"),
    (truncated(exif_picture("WEBP", THEIRS), 60), "cut off"),
    (b"\xff\xd8\xff" + b"\x00" * 40, "not a JPEG marker"),
    (b"GIF89a" + b"\0" * 40, "not a PNG, JPEG or WebP"),
    (webp_with_exif(b"Exif\0\0garbage, not a TIFF header"), "EXIF"),
], ids=["png cut in its text", "png cut in its pixels", "png bad checksum", "png without IHDR",
        "jpeg cut in its exif", "webp cut in its exif", "jpeg without markers", "a gif",
        "exif not tiff"])
def test_a_damaged_picture_is_unreadable_with_its_reason(data, reason):
    with pytest.raises(UnreadablePicture, match=reason):
        find_parameters(data)


@pytest.mark.parametrize("exif", sorted(BAD_EXIF), ids=str)
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_bad_exif_says_nothing_or_why_never_raises_anything_else(exif, fmt):
    data = BAD_EXIF[exif]
    picture = jpeg_with_app1(b"Exif\0\0" + data) if fmt == "JPEG" else webp_with_exif(data)

    try:
        assert find_parameters(picture) is None
    except UnreadablePicture as exc:
        assert "EXIF" in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_pictures())
def test_whatever_the_bytes_the_reader_answers_or_says_why(data):
    try:
        found = find_parameters(data)
    except UnreadablePicture as exc:
        assert str(exc)
        return
    assert found is None or len(found.text) <= PARAMETERS_LIMIT


# --- EXIF bombs: the comment read, nothing else (fix-a) ----------------------------------------


@pytest.mark.parametrize("wrap", [exif_png, exif_webp], ids=["png eXIf", "webp EXIF"])
def test_an_exif_tag_of_a_quarter_million_values_costs_no_more_than_the_comment_beside_it(
        wrap, bytes_to_pillows_exif_reader):
    # 2 MB of RATIONALs in the Exif IFD, beside A1111's UserComment: Pillow's get_ifd(Exif)
    # made 250,000 Python objects (a 9.9 MB one: 1.2 million, 3.8 s, +335 MiB).
    bomb = wrap(large_tag_exif(2_000_000, parameters=THEIRS, orientation=6))

    found, peak = peak_bytes_while(find_parameters, bomb)

    assert found is not None and found.text == THEIRS
    assert bytes_to_pillows_exif_reader == []
    assert peak < 64 * 1024, f"held {peak} bytes reading a {len(bomb)}-byte file"


def test_a_jpeg_whose_exif_is_split_over_many_segments_is_read_from_the_first_alone(
        bytes_to_pillows_exif_reader):
    bomb = split_exif_jpeg(large_tag_exif(2_000_000, tag=0x0128, in_exif_ifd=False))

    found, peak = peak_bytes_while(find_parameters, bomb)

    assert found is None
    assert bytes_to_pillows_exif_reader == []
    assert peak < 64 * 1024, f"held {peak} bytes reading a {len(bomb)}-byte file"
