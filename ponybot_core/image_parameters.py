"""AUTOMATIC1111-style `parameters`: written into every picture the workers post, read back by
the bot's **Parameters** menu from any picture, ours or another tool's.

One module for the format, torch-free, so the bot process (which never imports the ML stack)
and the workers read and write exactly the same text:

- where it lives: a PNG `tEXt`/`iTXt` chunk named `parameters`, or for WebP and JPEG the EXIF
  UserComment, written the way A1111 writes it (piexif's "UNICODE" UTF-16 comment in a
  big-endian EXIF block) through Pillow's own Exif API;
- what it says: the prompt, `Negative prompt: ...`, then one line of `Key: value` pairs
  (`Steps: 25, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: ...`), a value
  with a comma, colon or newline in double quotes (A1111's `quote`), read back by the same
  rules as A1111's `parse_generation_parameters`.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import TYPE_CHECKING

from PIL import ExifTags, Image
from pydantic import BaseModel, ConfigDict

from ponybot_core.config import Sampler

if TYPE_CHECKING:
    from ponybot_core.job import Job

# How A1111 names our samplers, both ways.
SAMPLER_NAMES = {Sampler.DDIM: "DDIM", Sampler.EULER_A: "Euler a",
                 Sampler.DPMPP_2M_KARRAS: "DPM++ 2M Karras"}

_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_NEGATIVE = "Negative prompt:"
# A1111's `re_param`: `Key: value` pairs, a value either quoted or up to the next comma.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


def quote(value: str) -> str:
    """A value as A1111 writes it: as is, or JSON-quoted when it would break the line."""
    return value if not any(c in value for c in ",\n:") else json.dumps(value, ensure_ascii=False)


def format_parameters(job: Job, seed: int, *, model_name: str) -> str:
    """The `parameters` text of one image of `job` (seed `seed`)."""
    lines = [job.prompt]
    if job.negative_prompt:
        lines.append(f"{_NEGATIVE} {job.negative_prompt}")
    lines.append(
        f"Steps: {job.steps}, Sampler: {SAMPLER_NAMES.get(job.sampler, job.sampler.value)}, "
        f"CFG scale: {job.cfg:g}, Seed: {seed}, Size: {job.width}x{job.height}, "
        f"Model: {quote(model_name)}"
    )
    return "\n".join(lines)


def parameters_exif(parameters: str) -> bytes:
    """An EXIF block holding `parameters` in UserComment, as AUTOMATIC1111 writes it."""
    exif = Image.Exif()  # big-endian ("MM") by default, like piexif
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = (
        _UNICODE_PREFIX + parameters.encode("utf-16-be"))
    return exif.tobytes()


def parameters_of(image: Image.Image) -> str | None:
    """The `parameters` an opened picture carries (PNG text chunk or EXIF UserComment).
    Reading a PNG's text may decode the whole picture: open it with a pixel limit first
    (`ponybot_core.downloads.open_image`)."""
    early = image.info.get("parameters")  # a PNG chunk before the pixels, as A1111 writes it
    if isinstance(early, str):
        return early or None
    text = getattr(image, "text", None)  # PNG: this decodes the pixels to reach later chunks
    if text and "parameters" in text:
        return text["parameters"] or None
    exif = image.getexif()
    comment = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if comment is None:
        return None
    if not isinstance(comment, bytes):
        return str(comment) or None
    if comment.startswith(_UNICODE_PREFIX):
        encoding = "utf-16-le" if exif.endian == "<" else "utf-16-be"
        return comment[len(_UNICODE_PREFIX):].decode(encoding, errors="replace") or None
    if comment.startswith(_ASCII_PREFIX):
        comment = comment[len(_ASCII_PREFIX):]
    return comment.rstrip(b"\x00").decode("utf-8", errors="replace") or None


def read_parameters(data: bytes) -> str | None:
    """The parameters of a file we made (fit_image's PNG or WebP)."""
    with Image.open(io.BytesIO(data)) as image:
        return parameters_of(image)


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

    def our_sampler(self) -> Sampler | None:
        """The sampler as one of ours, if it is one."""
        wanted = (self.sampler or "").casefold()
        return next((s for s, name in SAMPLER_NAMES.items()
                     if wanted in (name.casefold(), s.value)), None)


def parse_parameters(text: str) -> A1111Parameters:
    """Read a `parameters` text the way A1111 reads it: the last line is the settings when it
    has at least three `Key: value` pairs; before it the prompt, then the negative prompt."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
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
    for key, value in _PAIR.findall(last):
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
        width=int(size[1]) if size else None,
        height=int(size[2]) if size else None,
        model=pairs.pop("Model", None) or None,
        denoising_strength=_float(pairs.pop("Denoising strength", None)),
        other=pairs,
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is None or math.isfinite(number) else None
