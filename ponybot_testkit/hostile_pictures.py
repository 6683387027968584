"""Hostile pictures, built byte by byte: what a user can attach to make the bot or a worker
spend CPU and memory, or fail in a way it does not expect. The tests (tests/
test_hostile_pictures.py, tests/test_parameters_menu.py, tests/test_downloads.py) and the bench
(bench/hostile_pictures.py) use the same builders, and hypothesis strategies draw damaged ones.

Each builder returns the file's bytes and says in its docstring what it attacks. They are built
by hand (chunks, segments, RIFF chunks) rather than through Pillow because Pillow refuses to
write most of them: an animated PNG of a thousand 4096² frames, a text chunk after the end of
the pixels, a chunk whose checksum is wrong, a file cut off in the middle of a chunk.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterable

from hypothesis import strategies as st
from PIL import Image

from ponybot_core.image_parameters import parameters_exif

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --- hostile `parameters` text ------------------------------------------------------------------

# Settings lines that are hard to read: the first two and the last make A1111's `re_param` (the
# bot's regex before issue 16) take time quadratic in their length (a key that never meets its
# colon); the others are hard on a hand parser (quotes that do not close their value, escapes,
# colons without keys).
HOSTILE_LINES: dict[str, Callable[[int], str]] = {
    "one long word": lambda n: "a" * n,
    "words and spaces": lambda n: ("ab " * (n // 3 + 1))[:n],
    "unclosed quotes": lambda n: ('ke: "x,' * (n // 7 + 1))[:n],
    "escaped quotes": lambda n: ('ke: "' + '\\"' * n)[:n],
    "colons": lambda n: ("a:" * (n // 2 + 1))[:n],
    "keys without values": lambda n: ("Steps-a/b c" * (n // 11 + 1))[:n],
}


def hostile_line(chars: int, shape: str = "one long word") -> str:
    """One line of `chars` characters in one of the `HOSTILE_LINES` shapes."""
    return HOSTILE_LINES[shape](chars)


def hostile_parameters(chars: int, shape: str = "one long word") -> str:
    """A `parameters` text whose last line (the one read as settings) is hostile."""
    return "pinkie pie, balloons\nNegative prompt: lowres\n" + hostile_line(chars, shape)


# --- PNG ----------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    """One PNG chunk: length, type, data, CRC (the right one unless `crc` is given)."""
    if crc is None:
        crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def text_chunk(keyword: str, text: str) -> bytes:
    """tEXt: Latin-1, as A1111 writes text that fits Latin-1."""
    return png_chunk(b"tEXt", keyword.encode("latin-1") + b"\0" +
                     text.encode("latin-1", errors="replace"))


def itxt_chunk(keyword: str, text: str, *, compressed: bool = False) -> bytes:
    """iTXt: UTF-8, optionally zlib-compressed, as A1111 writes other text."""
    body = text.encode("utf-8")
    if compressed:
        body = zlib.compress(body, 9)
    return png_chunk(b"iTXt", keyword.encode("latin-1") + b"\0" + bytes([compressed, 0]) +
                     b"\0\0" + body)


def deflated(pattern: bytes, size: int, *, level: int = 9) -> bytes:
    """A zlib stream that inflates to `size` bytes of `pattern` repeated, compressed piece by
    piece so building a bomb does not need its inflated size in memory."""
    compressor = zlib.compressobj(level)
    piece = pattern * max(1, (1 << 20) // len(pattern))
    parts, left = [], size
    while left > 0:
        parts.append(compressor.compress(piece[:left]))
        left -= min(left, len(piece))
    parts.append(compressor.flush())
    return b"".join(parts)


def ztxt_chunk(keyword: str, compressed: bytes) -> bytes:
    """zTXt with an already compressed body (method 0, deflate)."""
    return png_chunk(b"zTXt", keyword.encode("latin-1") + b"\0\0" + compressed)


def _ihdr(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type,
                                          0, 0, 0))


def _gray_rows(width: int, height: int, bit_depth: int) -> bytes:
    row = 1 + (width * bit_depth + 7) // 8  # a filter byte, then the packed samples
    return deflated(b"\0", row * height)


def png(width: int = 8, height: int = 8, *, before: Iterable[bytes] = (),
        after: Iterable[bytes] = ()) -> bytes:
    """A valid greyscale PNG with the chunks `before` its pixels and `after` them (A1111
    writes its text before; nothing stops a file from putting it after)."""
    return (PNG_SIGNATURE + _ihdr(width, height) + b"".join(before)
            + png_chunk(b"IDAT", _gray_rows(width, height, 8)) + b"".join(after)
            + png_chunk(b"IEND", b""))


def png_with_text(parameters: str, *, kind: str = "tEXt", after_pixels: bool = False) -> bytes:
    """A PNG whose `parameters` are in a tEXt, iTXt or compressed iTXt/zTXt chunk."""
    chunk = {
        "tEXt": lambda: text_chunk("parameters", parameters),
        "iTXt": lambda: itxt_chunk("parameters", parameters),
        "iTXt-z": lambda: itxt_chunk("parameters", parameters, compressed=True),
        "zTXt": lambda: ztxt_chunk("parameters", zlib.compress(parameters.encode("latin-1"))),
    }[kind]()
    return png(after=[chunk]) if after_pixels else png(before=[chunk])


def long_line_png(chars: int = 30_000, shape: str = "one long word") -> bytes:
    """A small PNG whose `parameters` end in one hostile line of `chars` characters (the 30 KB
    PNG that stalled the bot for 9 s in issue 16)."""
    return png_with_text(hostile_parameters(chars, shape))


def ztxt_bomb_png(inflated: int = 256 << 20, *, kind: str = "zTXt") -> bytes:
    """A PNG whose compressed `parameters` (zTXt, or compressed iTXt with `kind="iTXt"`)
    inflate to `inflated` bytes: about a thousand times its size."""
    body = deflated(b"a", inflated)
    if kind == "zTXt":
        chunk = ztxt_chunk("parameters", body)
    else:
        chunk = png_chunk(b"iTXt", b"parameters\0\x01\0\0\0" + body)
    return png(before=[chunk])


def many_chunks_png(count: int = 100_000, *, parameters: str | None = None) -> bytes:
    """A PNG with `count` small text chunks, and `parameters` (if given) after all of them and
    after the pixels: a reader must walk every chunk to find them."""
    chunks = [text_chunk(f"c{i}", "x") for i in range(count)]
    after = [text_chunk("parameters", parameters)] if parameters is not None else []
    return png(before=chunks, after=after)


def apng_bomb(frames: int = 1000, width: int = 4096, height: int = 4096, *,
              parameters: str | None = None) -> bytes:
    """An animated PNG of `frames` frames of `width` × `height` 1-bit pixels: about 2 KB per
    4096² frame on disk, 16 MiB per frame once Pillow decodes it. `parameters`, if given, come
    after the last frame, where Pillow's `image.text` decodes every frame to reach them."""
    rows = _gray_rows(width, height, 1)

    def fctl(sequence: int) -> bytes:
        return png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0,
                                              1, 10, 0, 0))

    chunks = [png_chunk(b"acTL", struct.pack(">II", frames, 0)), fctl(0),
              png_chunk(b"IDAT", rows)]
    sequence = 1
    for _ in range(frames - 1):
        chunks.append(fctl(sequence))
        chunks.append(png_chunk(b"fdAT", struct.pack(">I", sequence + 1) + rows))
        sequence += 2
    if parameters is not None:
        chunks.append(text_chunk("parameters", parameters))
    return (PNG_SIGNATURE + _ihdr(width, height, bit_depth=1) + b"".join(chunks)
            + png_chunk(b"IEND", b""))


def truncated(data: bytes, keep: int | float = 0.5) -> bytes:
    """`data` cut off after `keep` bytes (an int) or that share of it (a float)."""
    return data[:keep if isinstance(keep, int) else int(len(data) * keep)]


def with_bad_crc(data: bytes, kind: bytes) -> bytes:
    """A PNG whose first `kind` chunk's checksum is wrong."""
    at = 8
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        end = at + 12 + length
        if data[at + 4:at + 8] == kind:
            crc = data[end - 4:end]
            return data[:end - 4] + bytes(b ^ 0xFF for b in crc) + data[end:]
        at = end
    raise ValueError(f"no {kind!r} chunk")


# --- JPEG and WebP ------------------------------------------------------------------------------


def _pillow(fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 40, 200)).save(out, format=fmt, **save)
    return out.getvalue()


def exif_picture(fmt: str, parameters: str) -> bytes:
    """A JPEG or WebP carrying `parameters` in its EXIF UserComment, as A1111 writes them."""
    return _pillow(fmt, exif=parameters_exif(parameters))


def long_comment_jpeg(chars: int = 32_000, shape: str = "one long word") -> bytes:
    """A JPEG whose EXIF UserComment ends in a hostile line (a JPEG segment holds at most 64 KiB,
    so about 32,000 UTF-16 characters)."""
    return exif_picture("JPEG", hostile_parameters(chars, shape))


def long_comment_webp(chars: int = 1_000_000, shape: str = "one long word") -> bytes:
    """A WebP whose EXIF UserComment ends in a hostile line (WebP's EXIF chunk has no 64 KiB
    limit: a million characters is 2 MB)."""
    return exif_picture("WEBP", hostile_parameters(chars, shape))


def jpeg_with_app1(app1: bytes) -> bytes:
    """A small JPEG with one APP1 segment holding `app1` (for EXIF: `b"Exif\\0\\0" + TIFF`)."""
    plain = _pillow("JPEG")
    segment = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    return plain[:2] + segment + plain[2:]


def webp_with_exif(exif: bytes) -> bytes:
    """A small WebP whose EXIF chunk holds `exif` as given."""
    return _pillow("WEBP", exif=exif)


# EXIF blocks that are not what they say: an IFD past the end, an IFD that counts 65,535
# entries, an Exif IFD that points at itself, a UserComment that claims 4 GiB.
BAD_EXIF: dict[str, bytes] = {
    "ifd past the end": b"MM\x00\x2a" + struct.pack(">I", 0x7FFFFFF0),
    "huge entry count": b"MM\x00\x2a" + struct.pack(">IH", 8, 0xFFFF) + b"\0" * 12,
    "exif ifd loop": (b"MM\x00\x2a" + struct.pack(">IH", 8, 1)
                      + struct.pack(">HHII", 0x8769, 4, 1, 8) + b"\0\0\0\0"),
    "comment claims 4 GiB": (b"MM\x00\x2a" + struct.pack(">IH", 8, 1)
                             + struct.pack(">HHII", 0x8769, 4, 1, 26) + b"\0\0\0\0"
                             + struct.pack(">H", 1)
                             + struct.pack(">HHII", 0x9286, 7, 0xFFFFFFF0, 8) + b"\0\0\0\0"),
    "not tiff": b"Exif\0\0garbage, not a TIFF header at all",
}


def _riff_chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def webp_declaring(width: int, height: int, *, frames: int = 1,
                   exif: bytes | None = None) -> bytes:
    """An animated WebP whose VP8X header declares a `width` × `height` canvas (up to 16384²)
    and `frames` frames of 8×8 pixels: a few hundred bytes, while libwebp's decoder sets up the
    whole canvas it declares before any frame is drawn."""
    small = _pillow("WEBP", lossless=True)
    assert small[12:16] == b"VP8L"
    frame_chunk = small[12:]  # the VP8L chunk, as Pillow wrote it
    flags = 0x02 | (0x08 if exif is not None else 0)  # animation, EXIF
    vp8x = _riff_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
                       + (height - 1).to_bytes(3, "little"))
    anim = _riff_chunk(b"ANIM", struct.pack("<IH", 0, 0))
    # ANMF: x/2 and y/2 (24 bits each), width-1, height-1, duration (24 bits), flags.
    anmf = _riff_chunk(b"ANMF", (0).to_bytes(3, "little") * 2 + (7).to_bytes(3, "little") * 2
                       + (100).to_bytes(3, "little") + b"\0" + frame_chunk)
    extra = _riff_chunk(b"EXIF", exif) if exif is not None else b""
    body = b"WEBP" + vp8x + anim + anmf * frames + extra
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --- hypothesis: damaged and hostile pictures ---------------------------------------------------

_PIECES = ["a", "Z", "1", " ", "  ", "\t", ":", ": ", ",", ", ", '"', "\\", '\\"', "-", "/", "_",
           "é", "\u00a0", "\x85", "\u2028", "\r", "\n", "Steps", "Seed: ", "Size: 5x5",
           "Negative prompt:", "Model: ", "CFG scale: ", "x", "nan", "1e999", "9" * 50]


def hostile_texts(max_pieces: int = 200) -> st.SearchStrategy[str]:
    """Texts made of the pieces that matter to A1111's format (quotes, escapes, colons,
    commas, line breaks, known keys), mixed with any text at all."""
    return st.one_of(
        st.lists(st.sampled_from(_PIECES), max_size=max_pieces).map("".join),
        st.text(max_size=max_pieces),
        st.builds(lambda shape, n, tail: hostile_parameters(n, shape) + tail,
                  st.sampled_from(sorted(HOSTILE_LINES)), st.integers(0, 3000),
                  st.text(max_size=20)),
    )


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    cut = st.integers(0, len(data)).map(lambda n: data[:n])
    flips = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)),
                     min_size=1, max_size=8).map(
        lambda changes: _flip(data, changes))
    inserted = st.tuples(st.integers(8, len(data)), st.binary(max_size=64)).map(
        lambda p: data[:p[0]] + p[1] + data[p[0]:])
    return st.one_of(st.just(data), cut, flips, inserted)


def _flip(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, mask in changes:
        out[at] ^= mask
    return bytes(out)


def _exif_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from(sorted(BAD_EXIF.values())), st.binary(max_size=200),
                     hostile_texts(40).map(parameters_exif).flatmap(_mutations))


def hostile_pictures() -> st.SearchStrategy[bytes]:
    """PNG, JPEG and WebP files, valid or damaged: cut off, bytes flipped, bytes inserted,
    text chunks of every kind before or after the pixels, bad EXIF."""
    pngs = st.builds(png_with_text, hostile_texts(30).map(lambda t: t.encode("latin-1", "replace")
                                                             .decode("latin-1")),
                     kind=st.sampled_from(["tEXt", "iTXt", "iTXt-z", "zTXt"]),
                     after_pixels=st.booleans())
    jpegs = _exif_bytes().map(lambda exif: jpeg_with_app1(b"Exif\0\0" + exif[:60_000]))
    webps = _exif_bytes().map(webp_with_exif)
    return st.one_of(pngs, jpegs, webps).flatmap(_mutations)


# --- h2-pictures builders (the worker's picture tests) -----------------------------------------


def apng_frames(width: int, height: int, frames: int, *, declared: int | None = None,
                damaged: bool = False, parameters: str | None = None) -> bytes:
    """An animated PNG of `frames` 8-bit gray frames of `width`×`height` (frame i is gray
    `i % 256`) whose acTL chunk declares `declared` frames (`frames` by default).

    `damaged`: no frame's data is valid zlib, so decoding any frame fails; a refusal that
    names the frames is then proof it was made from the header alone. `parameters`: an
    A1111 `parameters` text chunk after the last frame (where only walking every frame
    reaches it). 160,000 frames of 1×1 make about 10 MiB: the reviewer's CPU bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressed: dict[int, bytes] = {}

    def pixels(level: int) -> bytes:
        if damaged:
            return b"\xde\xad\xbe\xef" * 4
        if level not in compressed:
            compressed[level] = zlib.compress((b"\x00" + bytes([level]) * width) * height, 9)
        return compressed[level]

    def fctl(sequence: int) -> bytes:
        return png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0,
                                               1, 10, 0, 0))

    out = [b"\x89PNG\r\n\x1a\n", png_chunk(b"IHDR", ihdr),
           png_chunk(b"acTL", struct.pack(">II", declared or frames, 0)),
           fctl(0), png_chunk(b"IDAT", pixels(0))]
    sequence = 1
    for frame in range(1, frames):
        out.append(fctl(sequence))
        out.append(png_chunk(b"fdAT", struct.pack(">I", sequence + 1) + pixels(frame % 256)))
        sequence += 2
    if parameters is not None:
        out.append(png_chunk(b"tEXt", b"parameters\x00" + parameters.encode("latin-1")))
    out.append(png_chunk(b"IEND", b""))
    return b"".join(out)


def animated_webp(width: int, height: int, frames: int) -> bytes:
    """An animated WebP of `frames` frames of `width`×`height`, each a different gray."""
    images = [Image.new("RGB", (width, height), (i * 40 % 256,) * 3) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, format="WEBP", save_all=True, append_images=images[1:], lossless=True)
    return out.getvalue()


# --- fix-a-pictures builders: EXIF bombs and JPEG scan bombs -----------------------------------

RATIONAL = 5  # TIFF type: two LONGs, 8 bytes, an IFDRational object each once Pillow reads it
_TIFF_UNIT = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 10: 8, 12: 8}


def large_tag_exif(size: int = 9_900_000, *, tag: int = 0x9999, tag_type: int = RATIONAL,
                   in_exif_ifd: bool = True, orientation: int | None = None,
                   parameters: str | None = None) -> bytes:
    """A big-endian EXIF (TIFF) block with one tag of `size` bytes of `tag_type` values, in the
    Exif sub-IFD (or in IFD0 with `in_exif_ifd=False`), beside an Orientation (IFD0) and an
    A1111 UserComment (Exif IFD) if given. 9.9 MB of RATIONALs is 1.2 million values: Pillow's
    `Exif.get_ifd(Exif)` (the Parameters menu's reader before fix-a) and `exif_transpose` (the
    worker's) turn every one into a Python object, 4 to 14 s of CPU and 300 to 500 MiB."""
    unit = _TIFF_UNIT[tag_type]
    # (tag, type, count, value): a value of bytes goes after the IFDs, its offset in the entry.
    ifd0: list[tuple[int, int, int, bytes | int]] = []
    sub: list[tuple[int, int, int, bytes | int]] = []
    if orientation is not None:
        ifd0.append((0x0112, 3, 1, orientation << 16))  # a SHORT, left-justified
    (sub if in_exif_ifd else ifd0).append(
        (tag, tag_type, size // unit, (bytes(range(1, 256)) * (size // 255 + 1))[:size // unit
                                                                                  * unit]))
    if parameters is not None:
        comment = b"UNICODE\0" + parameters.encode("utf-16-be")
        sub.append((0x9286, 7, len(comment), comment))
    sub_at = 8 + 2 + 12 * (len(ifd0) + bool(sub)) + 4
    if sub:
        ifd0.append((0x8769, 4, 1, sub_at))
    values_at = sub_at + (2 + 12 * len(sub) + 4 if sub else 0)
    values: list[bytes] = []

    def ifd(entries: list[tuple[int, int, int, bytes | int]]) -> bytes:
        nonlocal values_at
        packed = []
        for entry_tag, kind, count, value in sorted(entries, key=lambda e: e[0]):
            if isinstance(value, bytes):
                values.append(value)
                value, values_at = values_at, values_at + len(values[-1])
            packed.append(struct.pack(">HHII", entry_tag, kind, count, value))
        return struct.pack(">H", len(entries)) + b"".join(packed) + b"\0\0\0\0"

    head = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd(ifd0) + (ifd(sub) if sub else b"")
    return head + b"".join(values)


def exif_png(exif: bytes, width: int = 16, height: int = 8) -> bytes:
    """A gray PNG whose eXIf chunk (before the pixels) holds `exif`."""
    return png(width, height, before=[png_chunk(b"eXIf", exif)])


def exif_webp(exif: bytes, width: int = 16, height: int = 8) -> bytes:
    """A WebP whose EXIF chunk holds `exif` (WebP's EXIF has no 64 KiB limit)."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 40, 200)).save(out, format="WEBP", exif=exif)
    return out.getvalue()


def split_exif_jpeg(exif: bytes, width: int = 16, height: int = 8) -> bytes:
    """A JPEG whose EXIF is split over as many APP1 `Exif` segments as it takes (64 KiB each),
    without the JFIF header: Pillow (since 11) joins the segments into one block and, lacking
    JFIF's density, reads the dpi from that block's IFD0 while it opens the file."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 40, 200)).save(out, format="JPEG")
    plain = out.getvalue()
    (app0,) = struct.unpack(">H", plain[4:6])  # Pillow writes JFIF APP0 first
    piece = 0xFFFF - 2 - 6
    segments = [b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(exif[at:at + piece])) + b"Exif\0\0"
                + exif[at:at + piece] for at in range(0, len(exif), piece)]
    return plain[:2] + b"".join(segments) + plain[4 + app0:]


def progressive_jpeg_with_empty_scans(size: int = 4096, scans: int = 13_000) -> bytes:
    """A `size`² gray progressive JPEG followed by `scans` copies of an empty DC scan (a 10-byte
    SOS header, no data): libjpeg goes over the whole picture once per scan, all of them in
    one 64 KiB block Pillow feeds it, where no deadline or Cancel is looked at. 4096² and
    13,000 scans: 196 KB, about 8 s of CPU."""
    out = io.BytesIO()
    Image.new("L", (size, size)).save(out, format="JPEG", progressive=True, quality=50)
    jpeg = out.getvalue()
    first = jpeg.index(b"\xff\xda")
    (length,) = struct.unpack(">H", jpeg[first + 2:first + 4])
    return jpeg[:-2] + jpeg[first:first + 2 + length] * scans + b"\xff\xd9"
