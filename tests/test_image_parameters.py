"""The AUTOMATIC1111 `parameters` format (ponybot_core/image_parameters.py): what the workers
write into every picture is what the bot's Parameters menu reads back, and pictures from
A1111 itself read the same way, from PNG text and from WebP/JPEG EXIF."""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from inference.results.fit import encode_webp, png_with_parameters
from ponybot_core.config import Sampler
from ponybot_core.image_parameters import (
    MAX_IFD_ENTRIES,
    PARAMETERS_LIMIT,
    UnreadablePicture,
    format_parameters,
    parameters_exif,
    parse_parameters,
    quote,
    read_exif,
    read_parameters,
    scan_settings,
)
from ponybot_testkit.hostile_pictures import (
    HOSTILE_LINES,
    hostile_parameters,
    hostile_texts,
    large_tag_exif,
)
from ponybot_testkit.world import make_job

A1111_TEXT = (
    "masterpiece, pinkie pie, (party:1.2),\n"
    "balloons, confetti\n"
    "Negative prompt: lowres, bad anatomy\n"
    "blurry\n"
    'Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3141592653, Size: 512x768, '
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "pony: 1a2b, x: 3c", '
    "Denoising strength: 0.45, Version: v1.9.4"
)


def test_a_jobs_parameters_read_back_as_they_were_drawn():
    job = make_job(prompt="scr100, twilight sparkle, unicorn", negative_prompt="explicit, blurry",
                   steps=17, cfg=6.5, sampler=Sampler.EULER_A, width=64, height=96)

    parsed = parse_parameters(format_parameters(job, 4242, model_name="Tiny Pony"))

    assert parsed.prompt == "scr100, twilight sparkle, unicorn"
    assert parsed.negative_prompt == "explicit, blurry"
    assert (parsed.steps, parsed.cfg, parsed.seed) == (17, 6.5, 4242)
    assert (parsed.width, parsed.height) == (64, 96)
    assert parsed.sampler == "Euler a" and parsed.our_sampler() is Sampler.EULER_A
    assert parsed.model == "Tiny Pony"


def test_a_model_name_with_a_comma_or_colon_is_quoted_as_a1111_quotes_it():
    text = format_parameters(make_job(), 1, model_name="Pony: V2, beta")

    assert 'Model: "Pony: V2, beta"' in text
    assert parse_parameters(text).model == "Pony: V2, beta"


def test_a1111s_own_text_reads_with_multiline_prompts_and_quoted_values():
    parsed = parse_parameters(A1111_TEXT)

    assert parsed.prompt == "masterpiece, pinkie pie, (party:1.2),\nballoons, confetti"
    assert parsed.negative_prompt == "lowres, bad anatomy\nblurry"
    assert (parsed.steps, parsed.cfg, parsed.seed) == (28, 6.5, 3141592653)
    assert parsed.our_sampler() is Sampler.DPMPP_2M_KARRAS
    assert (parsed.width, parsed.height) == (512, 768)
    assert parsed.model == "v1-5-pruned-emaonly"
    assert parsed.denoising_strength == 0.45
    assert parsed.other["Lora hashes"] == "pony: 1a2b, x: 3c"
    assert parsed.other["Model hash"] == "6ce0161689"


def test_text_without_a_settings_line_is_all_prompt_and_nonsense_numbers_are_none():
    assert parse_parameters("just a prompt, with: a colon").prompt == \
        "just a prompt, with: a colon"
    parsed = parse_parameters("p\nSteps: many, Seed: -, CFG scale: nan, Size: big")
    assert (parsed.steps, parsed.seed, parsed.cfg, parsed.width) == (None, None, None, None)


@given(prompt=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                      min_size=1).map(str.strip).filter(bool),
       negative=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))).map(
           str.strip),
       seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 150),
       cfg=st.floats(0.5, 30, allow_nan=False).map(lambda x: round(x, 2)))
def test_whatever_the_prompt_it_reads_back_as_written(prompt, negative, seed, steps, cfg):
    job = make_job(prompt=prompt, negative_prompt=negative, steps=steps, cfg=cfg)

    parsed = parse_parameters(format_parameters(job, seed, model_name="Tiny Pony"))

    if prompt.startswith("Negative prompt:"):
        return  # A1111 reads such a prompt as a negative one too
    assert (parsed.prompt, parsed.negative_prompt) == (prompt, negative)
    assert (parsed.seed, parsed.steps, parsed.cfg) == (seed, steps, float(f"{cfg:g}"))


def _png(parameters: str) -> bytes:
    info = PngInfo()
    info.add_itxt("parameters", parameters)  # A1111 writes iTXt for non-Latin-1 text
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _jpeg(parameters: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="JPEG", exif=parameters_exif(parameters))
    return out.getvalue()


@pytest.mark.parametrize("encode", [
    _png, _jpeg, lambda p: encode_webp(Image.new("RGB", (8, 8)), p, quality=90),
    lambda p: png_with_parameters(Image.new("RGB", (8, 8)), p),
], ids=["png-itxt", "jpeg-exif", "webp-exif", "png-ours"])
def test_parameters_are_found_in_png_text_and_webp_or_jpeg_exif(encode):
    text = A1111_TEXT + ", Note: ünïcødé 🐴"

    assert read_parameters(encode(text)) == text


def test_a_parameters_chunk_after_the_pixels_is_found_too():
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG")
    data = out.getvalue()
    body = b"tEXt" + b"parameters\x00" + A1111_TEXT.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    iend = data.rindex(b"IEND") - 4  # before IEND's length field

    assert read_parameters(data[:iend] + chunk + data[iend:]) == A1111_TEXT


def test_an_ascii_exif_user_comment_reads_too():
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"ASCII\x00\x00\x00" + \
        A1111_TEXT.encode()
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="JPEG", exif=exif.tobytes())

    assert read_parameters(out.getvalue()) == A1111_TEXT


def test_a_picture_without_parameters_has_none():
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="WEBP")

    assert read_parameters(out.getvalue()) is None


# --- hostile text: linear work, A1111's answers (issue 16) ------------------------------------

# A1111's `re_param`, as modules/infotext_utils.py has it: the reference the scanner must agree
# with, on lines short enough for its backtracking.
A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
MEGABYTE = 1_000_000


@pytest.mark.parametrize("shape", sorted(HOSTILE_LINES))
def test_a_megabyte_settings_line_is_scanned_in_steps_linear_in_its_length(shape):
    line = HOSTILE_LINES[shape](MEGABYTE)

    scan = scan_settings(line)

    # Every character is looked at a bounded number of times: A1111's regex looks at the
    # characters after each start position again, about n²/2 steps for these lines.
    assert scan.visited <= 4 * len(line), (shape, scan.visited)


@given(st.text(st.sampled_from(list('ab1_ \t:,"\\-/é\u00a0\x85\n')), max_size=60)
       | st.text(max_size=60))
def test_the_scanner_finds_exactly_the_pairs_a1111s_regex_finds(line):
    assert scan_settings(line).pairs == A1111_RE_PARAM.findall(line)


def test_a_text_longer_than_the_limit_is_cut_there_and_says_so():
    text = hostile_parameters(MEGABYTE)

    parsed = parse_parameters(text)

    assert parsed.cut
    assert parsed.prompt.startswith("pinkie pie") and parsed.negative_prompt.startswith("lowres")
    assert len(parsed.negative_prompt) <= PARAMETERS_LIMIT
    assert not parse_parameters(A1111_TEXT).cut


@given(hostile_texts())
def test_any_text_at_all_parses_without_raising(text):
    parsed = parse_parameters(text)

    assert len(parsed.prompt) + len(parsed.negative_prompt) <= len(text)
    assert parsed.cut == (len(text) > PARAMETERS_LIMIT)


def test_numbers_too_long_for_python_are_none_not_an_error():
    digits = "9" * 5000  # int() refuses more than 4300 digits
    parsed = parse_parameters(f"p\nSteps: {digits}, Seed: {digits}, Size: {digits}x{digits}")

    assert (parsed.steps, parsed.seed, parsed.width, parsed.height) == (None, None, None, None)


_LINE = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
_KEY = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_ /-]{0,12}[A-Za-z0-9_]\Z")
_KNOWN = {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Denoising strength"}


@given(prompt=st.lists(st.text(_LINE, max_size=30).map(str.strip), min_size=1, max_size=4)
       .filter(lambda lines: lines[0] != "").map("\n".join),
       negative=st.lists(st.text(_LINE, max_size=30).map(str.strip), max_size=3)
       .filter(lambda lines: not lines or lines[0] != "").map("\n".join),
       steps=st.integers(1, 150), seed=st.integers(0, 2**32 - 1),
       sampler=st.text(_LINE, min_size=1, max_size=20).map(str.strip).filter(bool),
       cfg=st.floats(0.5, 30, allow_nan=False).map(lambda x: round(x, 2)),
       size=st.tuples(st.integers(8, 4096), st.integers(8, 4096)),
       model=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
       .map(str.strip).filter(lambda v: v != "" and not v.startswith('"')),
       other=st.dictionaries(_KEY.filter(lambda k: k not in _KNOWN),
                             st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                                     max_size=30).map(str.strip)
                             .filter(lambda v: v != "" and not v.startswith('"')),
                             max_size=5))
def test_any_a1111_parameters_text_reads_back_as_written(prompt, negative, steps, seed, sampler,
                                                         cfg, size, model, other):
    if any(line.startswith("Negative prompt:") for line in prompt.split("\n")):
        return  # A1111 reads such a prompt line as the start of the negative prompt
    pairs = {"Steps": str(steps), "Sampler": sampler, "CFG scale": f"{cfg:g}",
             "Seed": str(seed), "Size": f"{size[0]}x{size[1]}", "Model": model, **other}
    text = "\n".join([prompt, *([f"Negative prompt: {negative}"] if negative else []),
                      ", ".join(f"{k}: {quote(v)}" for k, v in pairs.items())])

    parsed = parse_parameters(text)

    assert (parsed.prompt, parsed.negative_prompt) == (prompt, negative)
    assert (parsed.steps, parsed.seed, parsed.cfg) == (steps, seed, float(f"{cfg:g}"))
    assert (parsed.sampler, parsed.model, (parsed.width, parsed.height)) == (sampler, model, size)
    assert parsed.other == other
    assert not parsed.cut


# --- EXIF read by hand: two fields, bounded work (fix-a) ---------------------------------------


@given(order=st.sampled_from(["<", ">"]), orientation=st.none() | st.integers(1, 8),
       text=hostile_texts(60))
def test_the_orientation_and_comment_pillow_writes_read_back_in_either_byte_order(
        order, orientation, text):
    exif = Image.Exif()
    exif.endian = order
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    comment = b"UNICODE\x00" + text.encode("utf-16-le" if order == "<" else "utf-16-be")
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment

    fields = read_exif(exif.tobytes())

    assert (fields.orientation, fields.comment, fields.comment_cut) == (
        orientation, comment, False)
    assert fields.little_endian == (order == "<")


def test_the_exif_walk_reads_ifd_entries_and_the_comment_never_the_values_beside_them():
    # 1.2 million RATIONALs beside the comment: Pillow's reader made an object of each.
    block = large_tag_exif(9_900_000, orientation=6, parameters=A1111_TEXT)
    tracemalloc.start()
    try:
        fields = read_exif(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert fields.orientation == 6
    assert fields.comment == b"UNICODE\x00" + A1111_TEXT.encode("utf-16-be")
    assert fields.entries_read == 4  # IFD0: Orientation, the Exif IFD; Exif IFD: two tags
    assert peak < 16 * 1024 + len(fields.comment)


def _ifd_of(entries: int) -> bytes:
    """An EXIF block whose IFD0 has `entries` entries, all there (Artist, ASCII, inline)."""
    return (b"MM\x00\x2a" + struct.pack(">IH", 8, entries)
            + struct.pack(">HHI4s", 0x013B, 2, 4, b"pon\0") * entries + b"\0\0\0\0")


def test_an_ifd_of_more_entries_than_any_camera_writes_is_refused_before_one_is_read():
    assert read_exif(_ifd_of(MAX_IFD_ENTRIES)).entries_read == MAX_IFD_ENTRIES

    with pytest.raises(UnreadablePicture, match="an IFD of 65,535 entries"):
        read_exif(_ifd_of(0xFFFF))


def test_a_comment_over_the_limit_is_read_no_further_than_the_limit_and_says_so():
    block = large_tag_exif(8, parameters="a" * (4 * PARAMETERS_LIMIT))

    fields = read_exif(block)

    assert fields.comment_cut and fields.comment is not None
    assert len(fields.comment) == len(b"UNICODE\x00") + 4 * PARAMETERS_LIMIT
