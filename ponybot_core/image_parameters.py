"""AUTOMATIC1111-style `parameters`: written into every picture the workers post, read back by
the bot's **Parameters** menu from any picture, ours or another tool's.

One module for the format, torch-free, so the bot process (which never imports the ML stack)
and the workers read and write exactly the same text:

- where it lives: a PNG `tEXt`/`iTXt`/`zTXt` chunk named `parameters`, or for WebP and JPEG
  the EXIF UserComment, written the way A1111 writes it (piexif's "UNICODE" UTF-16 comment in
  a big-endian EXIF block) through Pillow's own Exif API;
- what it says: the prompt, `Negative prompt: ...`, then one line of `Key: value` pairs
  (`Steps: 25, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: ...`), a value
  with a comma, colon or newline in double quotes (A1111's `quote`), read back by the same
  rules as A1111's `parse_generation_parameters`.

Any picture a user posts can be hostile, so reading one (`find_parameters`) decodes no pixel
at all: it walks the file's container (PNG chunks, JPEG segments, WebP RIFF chunks; at most
`MAX_CHUNKS`), inflates compressed text no further than `PARAMETERS_LIMIT` characters, reads
EXIF by hand (`read_exif`: two IFDs of at most `MAX_IFD_ENTRIES` entries, and only the values it
wants: Pillow's reader makes a Python object of every value, a million of them in a 10 MB tag),
and says why a file it cannot read is damaged (`UnreadablePicture`); the workers read a
picture's Orientation with the same `read_exif`. Reading the settings line (`scan_settings`)
takes time linear in its length, where A1111's regex takes time quadratic in it. Both are CPU
work: callers on an event loop run them in a thread.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import ExifTags, Image
from pydantic import BaseModel, ConfigDict

from ponybot_core.config import Sampler

if TYPE_CHECKING:
    from ponybot_core.job import Job

# How A1111 names our samplers, both ways.
SAMPLER_NAMES = {Sampler.DDIM: "DDIM", Sampler.EULER_A: "Euler a",
                 Sampler.DPMPP_2M_KARRAS: "DPM++ 2M Karras"}

# Characters of `parameters` text read from a picture or parsed; the rest is cut, and said to
# be. A1111's own texts are a few KB even with long prompts and many LoRA hashes.
PARAMETERS_LIMIT = 64 * 1024
# Chunks (PNG), segments (JPEG) or RIFF chunks (WebP) walked in one file. A PNG of 10 MiB in
# libpng's 8 KiB IDAT chunks has about 1,300; a file of nothing but empty chunks, 870,000.
MAX_CHUNKS = 10_000

_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_NEGATIVE = "Negative prompt:"
_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")
_KEYWORD = b"parameters\x00"
# The most bytes one character takes in each encoding the text may come in.
_BYTES_PER_CHAR = {"latin-1": 1, "utf-8": 4, "utf-16-be": 4, "utf-16-le": 4}


def quote(value: str) -> str:
    """A value as A1111 writes it: as is, or JSON-quoted when it would break the line."""
    return value if not any(c in value for c in ",\n:") else json.dumps(value, ensure_ascii=False)


def format_parameters(job: Job, seed: int, *, model_name: str,
                      model_hash: str | None = None) -> str:
    """The `parameters` text of one image of `job` (seed `seed`); `Model hash` (A1111's AutoV2
    short hash of the checkpoint file) before `Model`, where A1111 writes it."""
    lines = [job.prompt]
    if job.negative_prompt:
        lines.append(f"{_NEGATIVE} {job.negative_prompt}")
    lines.append(
        f"Steps: {job.steps}, Sampler: {SAMPLER_NAMES.get(job.sampler, job.sampler.value)}, "
        f"CFG scale: {job.cfg:g}, Seed: {seed}, Size: {job.width}x{job.height}, "
        + (f"Model hash: {model_hash}, " if model_hash else "")
        + f"Model: {quote(model_name)}"
    )
    return "\n".join(lines)


def parameters_exif(parameters: str) -> bytes:
    """An EXIF block holding `parameters` in UserComment, as AUTOMATIC1111 writes it."""
    exif = Image.Exif()  # big-endian ("MM") by default, like piexif
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = (
        _UNICODE_PREFIX + parameters.encode("utf-16-be"))
    return exif.tobytes()


# --- reading a picture --------------------------------------------------------------------------


class UnreadablePicture(Exception):
    """The picture is damaged or not one we can read; `str(error)` says why, for the user."""


@dataclass(frozen=True)
class FoundParameters:
    text: str  # at most PARAMETERS_LIMIT characters
    cut: bool  # the picture's text went on past PARAMETERS_LIMIT: the rest was not read
    where: str  # "PNG tEXt chunk", "EXIF UserComment", ...


def find_parameters(data: bytes) -> FoundParameters | None:
    """The `parameters` a PNG, JPEG or WebP file carries, None when it carries none; raises
    UnreadablePicture when it cannot be read. Decodes no pixel: the whole cost is one walk
    over at most MAX_CHUNKS chunk headers and at most PARAMETERS_LIMIT characters of text.
    In a PNG the first `parameters` text chunk wins, wherever it is (A1111 writes it before
    the pixels); a file cut off after it still shows it."""
    if data.startswith(_PNG_SIGNATURE):
        return _png_parameters(data)
    exif = find_exif(data)
    return _exif_parameters(exif) if exif is not None else None


def find_exif(data: bytes) -> memoryview | None:
    """The EXIF block of a PNG (its first eXIf chunk), JPEG (its first APP1 `Exif` segment) or
    WebP (its EXIF chunk), in place, not copied; None when it has none. Raises
    UnreadablePicture when the file cannot be walked to it, by the walks of `find_parameters`."""
    if data.startswith(_PNG_SIGNATURE):
        return _png_exif(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg_exif(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_exif(data)
    raise UnreadablePicture("it is not a PNG, JPEG or WebP picture")


def read_parameters(data: bytes) -> str | None:
    """The text of `find_parameters`: for files we made (fit_image's PNG or WebP)."""
    found = find_parameters(data)
    return found.text if found else None


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, end) of a PNG's chunks up to IEND, each checked to be whole; at most
    MAX_CHUNKS of them."""
    at = len(_PNG_SIGNATURE)
    for count in range(MAX_CHUNKS):
        if at + 8 > len(data):
            raise UnreadablePicture(f"it is cut off after {at:,} bytes, before its end (IEND)")
        length, kind = struct.unpack_from(">I4s", data, at)
        end = at + 12 + length
        if count == 0 and kind != b"IHDR":
            raise UnreadablePicture("it does not start with its header (IHDR)")
        if end > len(data):
            raise UnreadablePicture(f"it is cut off in {_chunk_name(kind, at)}")
        if kind == b"IEND":
            return
        yield kind, at, end
        at = end
    raise UnreadablePicture(f"it has more than {MAX_CHUNKS:,} chunks")


def _png_parameters(data: bytes) -> FoundParameters | None:
    exif: tuple[int, int] | None = None  # where the first eXIf chunk is, if any
    for kind, at, end in _png_chunks(data):
        body = at + 8
        if kind in _PNG_TEXT and data.startswith(_KEYWORD, body):
            _check_crc(data, at, end, "its `parameters` text")
            found = _png_text(kind, data, body + len(_KEYWORD), end - 4)
            return found if found.text else None
        if kind == b"eXIf" and exif is None:
            exif = (at, end)
    if exif is None:
        return None
    _check_crc(data, *exif, "its EXIF data")
    return _exif_parameters(memoryview(data)[exif[0] + 8:exif[1] - 4])


def _png_exif(data: bytes) -> memoryview | None:
    for kind, at, end in _png_chunks(data):
        if kind == b"eXIf":
            _check_crc(data, at, end, "its EXIF data")
            return memoryview(data)[at + 8:end - 4]
    return None


def _chunk_name(kind: bytes, at: int) -> str:
    """How to name a chunk to the user: by its type when it is one (`IDAT`, `VP8 `)."""
    name = kind.decode("latin-1").strip()
    return f"its `{name}` chunk" if name.isascii() and name.isalnum() else f"a chunk at byte {at:,}"


def _check_crc(data: bytes, at: int, end: int, what: str) -> None:
    (expected,) = struct.unpack_from(">I", data, end - 4)
    if zlib.crc32(memoryview(data)[at + 4:end - 4]) != expected:
        raise UnreadablePicture(f"{what} fails its checksum")


def _png_text(kind: bytes, data: bytes, start: int, end: int) -> FoundParameters:
    """The text of a tEXt, zTXt or iTXt chunk whose body (after `parameters\\0`) is
    data[start:end]."""
    where = f"PNG {kind.decode()} chunk"
    body = memoryview(data)[start:end]
    if kind == b"tEXt":
        return FoundParameters(*_decoded(body, "latin-1"), where=where)
    if kind == b"zTXt":
        if body[:1].tobytes() != b"\x00":
            raise UnreadablePicture("its `parameters` text is compressed in an unknown way")
        return FoundParameters(*_decoded(*_inflated(body[1:], "latin-1")), where=where)
    # iTXt: compression flag and method, language tag, translated keyword, then the text.
    language_end = data.find(b"\x00", start + 2, end)
    keyword_end = data.find(b"\x00", language_end + 1, end) if language_end >= 0 else -1
    if len(body) < 2 or keyword_end < 0:
        raise UnreadablePicture("its `parameters` text chunk is malformed")
    text = memoryview(data)[keyword_end + 1:end]
    if body[0]:
        if body[1] != 0:
            raise UnreadablePicture("its `parameters` text is compressed in an unknown way")
        return FoundParameters(*_decoded(*_inflated(text, "utf-8")), where=where)
    return FoundParameters(*_decoded(text, "utf-8"), where=where)


def _inflated(compressed: memoryview, encoding: str) -> tuple[bytes, str, bool]:
    """Inflated no further than the bytes PARAMETERS_LIMIT characters can take: a zTXt bomb
    of gigabytes costs what its first 256 KiB cost."""
    cap = PARAMETERS_LIMIT * _BYTES_PER_CHAR[encoding]
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, cap + 1)
    except zlib.error as exc:
        raise UnreadablePicture(f"its compressed `parameters` text is damaged ({exc})") from None
    if len(raw) <= cap and not inflater.eof:
        raise UnreadablePicture("its compressed `parameters` text is cut off")
    return raw, encoding, len(raw) > cap


def _decoded(raw: bytes | memoryview, encoding: str, more: bool = False) -> tuple[str, bool]:
    """`raw` as text of at most PARAMETERS_LIMIT characters, and whether any was cut (`more`:
    the text went on past `raw`)."""
    cap = PARAMETERS_LIMIT * _BYTES_PER_CHAR[encoding]
    cut = more or len(raw) > cap
    # Not final when cut: half a character at the cut is dropped, not shown as U+FFFD.
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    text = decoder.decode(bytes(raw[:cap]), final=not cut)
    if len(text) > PARAMETERS_LIMIT:
        text, cut = text[:PARAMETERS_LIMIT], True
    return text, cut


def _jpeg_exif(data: bytes) -> memoryview | None:
    """The first EXIF block (APP1 `Exif\\0\\0`) before a JPEG's pixels (SOS): its IFDs are there,
    where cameras and A1111 write them, whatever later segments hold."""
    at = 2
    for _ in range(MAX_CHUNKS):
        if at + 2 > len(data):
            raise UnreadablePicture(f"it is cut off after {at:,} bytes, before its pixels")
        if data[at] != 0xFF or data[at + 1] == 0x00:
            raise UnreadablePicture(f"byte {at:,} is not a JPEG marker")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        at += 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a segment
            continue
        if marker in (0xD9, 0xDA):  # the end, or the pixels: EXIF is not after them
            return None
        if at + 2 > len(data):
            raise UnreadablePicture(f"it is cut off after {at:,} bytes, before its pixels")
        (length,) = struct.unpack_from(">H", data, at)
        end = at + length
        if length < 2:
            raise UnreadablePicture(f"its segment at byte {at - 2:,} has an impossible length")
        if end > len(data):
            raise UnreadablePicture(f"it is cut off in a segment at byte {at - 2:,}")
        if marker == 0xE1 and data.startswith(b"Exif\x00\x00", at + 2):
            return memoryview(data)[at + 2:end]
        at = end
    raise UnreadablePicture(f"it has more than {MAX_CHUNKS:,} segments before its pixels")


def _webp_exif(data: bytes) -> memoryview | None:
    """The EXIF chunk of a WebP (RIFF) file."""
    (riff_size,) = struct.unpack_from("<I", data, 4)
    riff_end = 8 + riff_size
    at = 12
    for _ in range(MAX_CHUNKS):
        if at >= riff_end:
            return None
        if at + 8 > len(data):
            raise UnreadablePicture(f"it is cut off after {at:,} bytes, before its end")
        fourcc, size = struct.unpack_from("<4sI", data, at)
        end = at + 8 + size
        if end > len(data):
            raise UnreadablePicture(f"it is cut off in {_chunk_name(fourcc, at)}")
        if fourcc == b"EXIF":
            return memoryview(data)[at + 8:end]
        at = end + (size & 1)  # chunks are padded to an even size
    raise UnreadablePicture(f"it has more than {MAX_CHUNKS:,} chunks")


# --- EXIF, read by hand -------------------------------------------------------------------------

# Entries read in one IFD. Cameras write a few dozen in IFD0 and in the Exif IFD (their hundreds
# of maker-note entries are an IFD of their own, never read here); TIFF allows 65,535.
MAX_IFD_ENTRIES = 1024
_EXIF_HEADER = b"Exif\x00\x00"
_TIFF_HEADERS = {b"MM\x00\x2a": ">", b"II\x2a\x00": "<"}
_ORIENTATION = 0x0112  # IFD0
_EXIF_IFD = 0x8769  # IFD0: where the Exif IFD is
_USER_COMMENT = 0x9286  # Exif IFD
_SHORT, _LONG, _IFD = 3, 4, 13
_BYTES = (1, 2, 7)  # BYTE, ASCII, UNDEFINED: one byte per value
# Bytes of UserComment read: its 8-byte character code, then as much text as PARAMETERS_LIMIT
# characters can take in any encoding.
_COMMENT_LIMIT = len(_UNICODE_PREFIX) + PARAMETERS_LIMIT * max(_BYTES_PER_CHAR.values())


@dataclass(frozen=True)
class ExifFields:
    """The two EXIF fields the bot and the workers use, and what reading them cost."""

    orientation: int | None  # IFD0's Orientation, 1 to 8: how to turn the pixels upright
    comment: bytes | None  # the Exif IFD's UserComment: at most its first _COMMENT_LIMIT bytes
    comment_cut: bool  # the comment went on past them
    little_endian: bool
    entries_read: int  # IFD entries looked at: at most 2 * MAX_IFD_ENTRIES


def read_exif(block: bytes | memoryview, *, comment: bool = True) -> ExifFields:
    """Orientation and (with `comment`) UserComment from an EXIF block (a TIFF header and IFDs,
    `Exif\\0\\0` before it or not); raises UnreadablePicture when the block is damaged.

    Bounded whatever the block holds: IFD0 and the Exif IFD are walked entry by entry, at most
    MAX_IFD_ENTRIES each, and no value is read but the two wanted, the comment no further than
    _COMMENT_LIMIT bytes. Pillow's reader turns every value of every tag of an IFD into a
    Python object: a 10 MB tag of RATIONALs is 1.2 million objects, seconds of CPU, 300 MiB."""
    view = memoryview(block)
    if view[:len(_EXIF_HEADER)] == _EXIF_HEADER:
        view = view[len(_EXIF_HEADER):]
    order = _TIFF_HEADERS.get(bytes(view[:4]))
    if order is None or len(view) < 8:
        raise UnreadablePicture("its EXIF data is damaged (it is not TIFF)")
    (ifd0_at,) = struct.unpack_from(order + "I", view, 4)
    ifd0, read = _ifd(view, ifd0_at, order, (_ORIENTATION, _EXIF_IFD))
    orientation = None
    if _ORIENTATION in ifd0:
        kind, _, value = ifd0[_ORIENTATION]
        if kind in (_SHORT, _LONG):
            (orientation,) = struct.unpack_from(order + ("H" if kind == _SHORT else "I"), value)
            orientation = orientation if 1 <= orientation <= 8 else None
    found, cut = None, False
    if comment and _EXIF_IFD in ifd0 and ifd0[_EXIF_IFD][0] in (_LONG, _IFD):
        (exif_at,) = struct.unpack_from(order + "I", ifd0[_EXIF_IFD][2])
        exif_ifd, more = _ifd(view, exif_at, order, (_USER_COMMENT,))
        read += more
        if _USER_COMMENT in exif_ifd and exif_ifd[_USER_COMMENT][0] in _BYTES:
            _, count, value = exif_ifd[_USER_COMMENT]
            start = 0 if count <= 4 else struct.unpack_from(order + "I", value)[0]
            source = value if count <= 4 else view
            if start + count > len(source):
                raise UnreadablePicture("its EXIF UserComment is cut off")
            found, cut = bytes(source[start:start + min(count, _COMMENT_LIMIT)]), \
                count > _COMMENT_LIMIT
    return ExifFields(orientation, found, cut, order == "<", read)


def _ifd(view: memoryview, at: int, order: str,
         wanted: tuple[int, ...]) -> tuple[dict[int, tuple[int, int, bytes]], int]:
    """The entries of the IFD at `at` whose tags are `wanted`, as (type, count, the 4 bytes of
    value or offset), and how many entries the IFD has (all looked at)."""
    if at + 2 > len(view):
        raise UnreadablePicture("its EXIF data is damaged (an IFD past its end)")
    (count,) = struct.unpack_from(order + "H", view, at)
    if count > MAX_IFD_ENTRIES:
        raise UnreadablePicture(f"its EXIF data is damaged (an IFD of {count:,} entries)")
    end = at + 2 + 12 * count
    if end > len(view):
        raise UnreadablePicture("its EXIF data is cut off")
    found: dict[int, tuple[int, int, bytes]] = {}
    for tag, kind, values, value in struct.iter_unpack(order + "HHI4s", view[at + 2:end]):
        if tag in wanted and tag not in found:  # the first one, as Pillow keeps
            found[tag] = (kind, values, value)
    return found, count


def _exif_parameters(block: bytes | memoryview) -> FoundParameters | None:
    """The `parameters` in an EXIF block's UserComment (`read_exif`)."""
    exif = read_exif(block)
    comment = exif.comment
    if not comment:
        return None
    if comment.startswith(_UNICODE_PREFIX):
        encoding = "utf-16-le" if exif.little_endian else "utf-16-be"
        text, cut = _decoded(memoryview(comment)[len(_UNICODE_PREFIX):], encoding,
                             exif.comment_cut)
    else:
        body = comment[len(_ASCII_PREFIX):] if comment.startswith(_ASCII_PREFIX) else comment
        text, cut = _decoded(body.rstrip(b"\x00"), "utf-8", exif.comment_cut)
    return FoundParameters(text, cut, "EXIF UserComment") if text else None


# --- reading the text ---------------------------------------------------------------------------


class A1111Parameters(BaseModel):
    """What a `parameters` text says, typed; None where it says nothing (or nonsense)."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    cfg: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    denoising_strength: float | None = None
    # Every other `Key: value` pair, as written (`Model hash`, `Postprocess upscaler`, ...).
    other: dict[str, str] = {}
    # The text went on past PARAMETERS_LIMIT characters: what came after was not read.
    cut: bool = False

    def our_sampler(self) -> Sampler | None:
        """The sampler as one of ours, if it is one."""
        wanted = (self.sampler or "").casefold()
        return next((s for s, name in SAMPLER_NAMES.items()
                     if wanted in (name.casefold(), s.value)), None)


@dataclass(frozen=True)
class SettingsScan:
    pairs: list[tuple[str, str]]  # (key, value as written) in order, as A1111's regex finds them
    visited: int  # characters looked at, counted: a few times the line's length at most


# The pieces of A1111's `re_param`,
#     \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)
# each matched on its own: runs of one kind of character, which a regex matches in one pass.
_SPACES = re.compile(r"\s*")
_WORD = re.compile(r"\w")
_KEY_RUN = re.compile(r"[\w \-/]*")
_QUOTED_RUN = re.compile(r'[^\\"]*(?:\\.[^\\"]*)*')  # (?:\\.|[^\\"])*, unrolled


def scan_settings(line: str) -> SettingsScan:
    """The `Key: value` pairs of a settings line: what `re.findall(re_param, line)` finds, in
    time linear in the line's length.

    A backtracking search for `re_param` starts again at every position where a match failed
    and rescans what follows: a line of 30,000 letters without a colon takes half a billion
    steps. But every way it can fail is decided by a run of key characters that the next
    start would only rescan to the same end, so the scan jumps past it."""
    n = len(line)
    pairs: list[tuple[str, str]] = []
    visited = 0
    at = 0
    while at < n:
        # 1. `\s*` then `\w`: whitespace is not a key character, so `\s*` never gives any back.
        key_start = _SPACES.match(line, at).end()  # type: ignore[union-attr]  # `*`: always a match
        visited += key_start - at + 1
        if key_start >= n or not _WORD.match(line, key_start):
            at = key_start + 1  # every start up to key_start skips to the same character
            continue
        # 2. `[\w \-/]+:` -- the run of key characters ends where it ends; only a colon there,
        # after at least two key characters, makes a key. Starts inside the run meet the same
        # end (or are too short), so the next start worth trying is the end itself.
        key_end = _KEY_RUN.match(line, key_start + 1).end()  # type: ignore[union-attr]  # `*`: always a match
        visited += key_end - key_start
        if key_end - key_start < 2 or key_end >= n or line[key_end] != ":":
            at = key_end
            continue
        # 3. `\s*` then a quoted value followed by `,` or the end; else everything up to the
        # next comma (which always matches, so the key is never given back).
        value_start = _SPACES.match(line, key_end + 1).end()  # type: ignore[union-attr]  # `*`: always a match
        visited += value_start - key_end
        if value_start < n and line[value_start] == '"':
            # A later value's opening quote cannot lie inside this run (it follows a colon or
            # a space, never an escaping backslash): quoted runs never overlap.
            run_start = value_start + 1
            run_end = _QUOTED_RUN.match(line, run_start).end()  # type: ignore[union-attr]  # `*`: always a match
            visited += run_end - run_start + 1
            after = run_end + 1
            closed = run_end > run_start and run_end < n and line[run_end] == '"'
            if closed and (after == n or line[after] == "," or
                           (after == n - 1 and line[after] == "\n")):  # `$` before a last \n
                pairs.append((line[key_start:key_end], line[value_start:after]))
                at = after + 1 if after < n and line[after] == "," else after
                continue
        comma = line.find(",", value_start)
        value_end = n if comma < 0 else comma
        visited += value_end - value_start + 1
        pairs.append((line[key_start:key_end], line[value_start:value_end]))
        at = value_end + 1
    return SettingsScan(pairs, visited)


def parse_parameters(text: str, *, cut: bool = False) -> A1111Parameters:
    """Read a `parameters` text the way A1111 reads it: the last line is the settings when it
    has at least three `Key: value` pairs; before it the prompt, then the negative prompt.
    Only the first PARAMETERS_LIMIT characters are read; `cut`: the text was cut already."""
    if len(text) > PARAMETERS_LIMIT:
        text, cut = text[:PARAMETERS_LIMIT], True
    *lines, last = text.strip().split("\n")
    found = scan_settings(last).pairs
    if len(found) < 3:
        lines.append(last)
        found = []
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            negative.append(line[len(_NEGATIVE):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    pairs: dict[str, str] = {}
    for key, value in found:
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        pairs[key.strip()] = str(value).strip()
    size = _SIZE.match(pairs.pop("Size", ""))
    return A1111Parameters(
        prompt="\n".join(prompt),
        negative_prompt="\n".join(negative),
        steps=_int(pairs.pop("Steps", None)),
        sampler=pairs.pop("Sampler", None) or None,
        cfg=_float(pairs.pop("CFG scale", None)),
        seed=_int(pairs.pop("Seed", None)),
        width=_int(size[1]) if size else None,
        height=_int(size[2]) if size else None,
        model=pairs.pop("Model", None) or None,
        denoising_strength=_float(pairs.pop("Denoising strength", None)),
        other=pairs,
        cut=cut,
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:  # not a number, or more digits than Python converts (4,300)
        return None


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is None or math.isfinite(number) else None
