"""Bounded downloads (ponybot_core/downloads.py), against a real HTTP server on 127.0.0.1 that
misbehaves the ways a URL can: not Discord's, a redirect, a lying or missing Content-Length, a
trickle, bytes that are not what the name says, a decompression bomb; and bounded decoding of
what comes back: animations counted frame by frame from their header, only a first frame ever
decoded, every damaged file refused with one reason, a decode stopped by its deadline or a
cancel."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from ponybot_core.downloads import (
    MAX_JPEG_SCANS,
    DecodeCancelled,
    DecodeGuard,
    DownloadFailed,
    DownloadRefused,
    decode_image,
    download_image,
    jpeg_layout,
    open_image,
    url_allowed,
)
from ponybot_testkit.hostile_pictures import (
    BAD_EXIF,
    animated_webp,
    apng_bomb,
    apng_frames,
    exif_png,
    exif_webp,
    hostile_pictures,
    jpeg_with_app1,
    large_tag_exif,
    progressive_jpeg_with_empty_scans,
    split_exif_jpeg,
    truncated,
    webp_declaring,
    webp_with_exif,
)

LIMIT = 64 * 1024


def png(width: int = 16, height: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 50)).save(out, format="PNG")
    return out.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG a few hundred bytes long whose header declares `width` × `height`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * 1024)  # far fewer than the rows it claims
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                              0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


class Server:
    """A real aiohttp server whose routes the tests choose; it records every path asked."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.seen: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.origin}{path}"

    def route(self, path: str, handler) -> None:
        async def recorded(request: web.Request) -> web.StreamResponse:
            self.seen.append(request.path)
            return await handler(request)

        self.app.router.add_get(path, recorded)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    s.route("/picture.png", lambda r: _body(png(), "image/png"))
    s.route("/named.png", lambda r: _body(b"<html>not a picture</html>", "image/png"))
    s.route("/really-a-png.txt", lambda r: _body(png(), "text/plain"))
    s.route("/big.png", lambda r: _body(png() + b"\0" * (2 * LIMIT), "image/png"))
    s.route("/streamed-big.png", _streamed_big)
    s.route("/trickle.png", _trickle)
    s.route("/redirect.png", lambda r: _redirect("/picture.png"))
    s.route("/gone.png", lambda r: _status(404))
    s.route("/busy.png", lambda r: _status(503))
    runner = web.AppRunner(s.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    s.port = int(runner.addresses[0][1])
    s.runner = runner
    yield s
    await runner.cleanup()


async def _body(data: bytes, content_type: str) -> web.Response:
    return web.Response(body=data, headers={"Content-Type": content_type})


async def _status(status: int) -> web.Response:
    return web.Response(status=status)


async def _redirect(to: str) -> web.Response:
    raise web.HTTPFound(to)


async def _streamed_big(request: web.Request) -> web.StreamResponse:
    # No Content-Length (chunked): only counting the bytes can stop it.
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client hangs up, as it should
        await response.write(png())
        for _ in range(64):
            await response.write(b"\0" * LIMIT)
    return response


async def _trickle(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        for byte in png():
            await response.write(bytes([byte]))
            await asyncio.sleep(0.05)
    return response


async def fetch(server: Server, path: str, *, timeout_s: float = 5.0,
                hosts: list[str] | None = None):
    return await download_image(server.url(path), hosts=hosts or [server.origin],
                                max_bytes=LIMIT, timeout_s=timeout_s)


async def test_a_picture_on_an_allowed_host_downloads_with_its_format_from_its_bytes(server):
    downloaded = await fetch(server, "/picture.png")

    assert downloaded.format == "PNG" and downloaded.data == png()


async def test_the_type_comes_from_the_bytes_not_the_name_or_the_header(server):
    with pytest.raises(DownloadRefused, match="not a PNG, JPEG or WebP"):
        await fetch(server, "/named.png")
    assert (await fetch(server, "/really-a-png.txt")).format == "PNG"


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://cdn.discordapp.com/attachments/1/2/p.png?ex=1&is=2&hm=3", True),
    ("https://media.discordapp.net/attachments/1/2/p.png", True),
    ("https://CDN.DiscordApp.com/attachments/1/2/p.png", True),
    ("http://cdn.discordapp.com/attachments/1/2/p.png", False),  # a bare host means https
    ("https://cdn.discordapp.com:8443/attachments/1/2/p.png", False),
    ("https://cdn.discordapp.com.evil.example/p.png", False),
    ("https://evil.example/cdn.discordapp.com/p.png", False),
    ("https://user@cdn.discordapp.com/p.png", False),
    ("https://evil.example\\@cdn.discordapp.com/p.png", False),
    ("file:///etc/passwd", False),
    ("cdn.discordapp.com/p.png", False),
    ("", False),
])
def test_only_discords_attachment_hosts_are_allowed_by_default(url, allowed):
    assert url_allowed(url, ["cdn.discordapp.com", "media.discordapp.net"]) is allowed


def test_an_origin_entry_allows_exactly_that_scheme_host_and_port():
    hosts = ["http://127.0.0.1:8080"]
    assert url_allowed("http://127.0.0.1:8080/attachments/1/2/p.png", hosts)
    assert not url_allowed("http://127.0.0.1:8081/p.png", hosts)
    assert not url_allowed("https://127.0.0.1:8080/p.png", hosts)
    assert not url_allowed("http://localhost:8080/p.png", hosts)


async def test_a_url_that_is_not_allowed_is_never_requested(server):
    with pytest.raises(DownloadRefused, match="not on Discord's attachment servers"):
        await fetch(server, "/picture.png", hosts=["cdn.discordapp.com"])
    assert server.seen == []


async def test_a_redirect_is_not_followed(server):
    with pytest.raises(DownloadFailed, match="302"):
        await fetch(server, "/redirect.png")
    assert server.seen == ["/redirect.png"]


async def test_a_file_over_the_limit_is_refused_by_its_content_length(server):
    with pytest.raises(DownloadRefused, match="the limit is 64 KiB"):
        await fetch(server, "/big.png")


async def test_a_stream_without_a_length_is_cut_off_past_the_limit(server):
    started = time.monotonic()
    with pytest.raises(DownloadRefused, match="larger than the limit of 64 KiB"):
        await fetch(server, "/streamed-big.png")
    assert time.monotonic() - started < 5


async def test_a_download_that_trickles_is_abandoned_after_the_timeout(server):
    started = time.monotonic()
    with pytest.raises(DownloadFailed, match=r"longer than 0\.5 s"):
        await fetch(server, "/trickle.png", timeout_s=0.5)
    assert time.monotonic() - started < 3


async def test_a_deleted_picture_is_refused_and_a_busy_discord_is_worth_another_try(server):
    with pytest.raises(DownloadRefused, match="no longer on Discord"):
        await fetch(server, "/gone.png")
    with pytest.raises(DownloadFailed, match="503"):
        await fetch(server, "/busy.png")


def test_a_decompression_bomb_is_refused_from_its_header_before_any_decoding():
    bomb = bomb_png(100_000, 100_000)  # 10^10 pixels in a few hundred bytes
    assert len(bomb) < 1000

    with pytest.raises(DownloadRefused, match="pixels"):
        decode_image(bomb, max_pixels=16_777_216)


def test_the_pixel_limit_holds_below_pillows_own_bomb_limit():
    # 25 M pixels: Pillow would decode it (its limit is 89 M); ours is 16 M.
    with pytest.raises(DownloadRefused, match="5000×5000: more than 16,777,216 pixels"):
        open_image(bomb_png(5000, 5000), max_pixels=16_777_216)


def test_a_damaged_picture_is_refused_when_decoded():
    with pytest.raises(DownloadRefused, match="damaged or cut off"):
        decode_image(png(64, 64)[:-40], max_pixels=16_777_216)


def test_a_jpeg_is_decoded_upright_as_its_exif_says():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    out = io.BytesIO()
    Image.new("RGB", (40, 20)).save(out, format="JPEG", exif=exif.tobytes())

    assert decode_image(out.getvalue(), max_pixels=10_000).image.size == (20, 40)


# --- animations ------------------------------------------------------------------------------

MAX_PIXELS = 4096 * 4096


@pytest.mark.parametrize(("bomb", "said"), [
    (apng_frames(64, 64, 3, declared=160_000, damaged=True), "160,000 frames of 64×64"),
    (apng_bomb(1000, 4096, 4096), "1,000 frames of 4096×4096"),
], ids=["160,000 frames declared, none decodable", "1,000 frames of 4096²"])
def test_an_animation_with_more_pixels_in_all_than_the_limit_is_refused_from_its_header(
        bomb, said):
    guard = DecodeGuard()

    with pytest.raises(DownloadRefused, match=f"animation of {said}") as refused:
        decode_image(bomb, max_pixels=MAX_PIXELS, guard=guard)

    # Only the header was read: the acTL chunk that declares the frames comes before any
    # pixel data (and where no frame can be decoded, decoding one would say "damaged").
    assert guard.bytes_read < bomb.index(b"IDAT") + 64
    assert "damaged" not in str(refused.value)


@pytest.mark.parametrize("webp", [animated_webp(64, 64, 5), webp_declaring(64, 64, frames=5)],
                         ids=["written by Pillow", "built by hand"])
def test_an_animated_webp_counts_its_frames_too(webp):
    with pytest.raises(DownloadRefused, match="animation of 5 frames of 64×64"):
        open_image(webp, max_pixels=64 * 64 * 4)


@pytest.mark.parametrize("animation", [apng_frames(8, 8, 3), animated_webp(8, 8, 3)],
                         ids=["APNG", "WebP"])
def test_an_animation_within_the_limit_gives_its_first_frame(animation):
    decoded = decode_image(animation, max_pixels=MAX_PIXELS)

    assert decoded.image.size == (8, 8)
    assert decoded.image.getpixel((0, 0))[:3] == (0, 0, 0)  # frame 0's gray; others differ


def test_the_10_mib_apng_of_160000_frames_is_decoded_from_its_first_frame_only():
    # 160,000 frames of one pixel: few pixels in all, but walking the frames (as reading a
    # PNG's text chunks at the end does) costs seconds of CPU per upload.
    bomb = apng_frames(1, 1, 160_000, parameters="walked every frame")
    assert len(bomb) > 9 * 1024 * 1024
    guard = DecodeGuard()

    decoded = decode_image(bomb, max_pixels=MAX_PIXELS, guard=guard)

    assert decoded.image.size == (1, 1) and decoded.parameters is None
    assert guard.bytes_read < 4096  # the header and the first frame, nothing past them


def test_a_pictures_own_parameters_come_with_it_decoded():
    still = io.BytesIO()
    info = PngInfo()
    info.add_text("parameters", "pinkie pie\nSteps: 20, Sampler: DDIM, CFG scale: 7")
    Image.new("RGB", (8, 8)).save(still, format="PNG", pnginfo=info)

    assert decode_image(still.getvalue(), max_pixels=MAX_PIXELS).parameters == \
        "pinkie pie\nSteps: 20, Sampler: DDIM, CFG scale: 7"


# --- damaged pictures ------------------------------------------------------------------------


def _saved(fmt: str, mode: str = "RGB", size: tuple[int, int] = (96, 96)) -> bytes:
    import numpy as np

    rng = np.random.default_rng(7)  # noise: no format can squeeze it into a few bytes
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if bands == 1 else pixels, mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _bad_crc(data: bytes) -> bytes:
    at = data.index(b"IHDR") + 4 + 13  # the IHDR chunk's CRC
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + 4]) + data[at + 4:]


def _bad_zlib(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 4
    return data[:at] + b"\xde\xad\xbe\xef" * 8 + data[at + 32:]


DAMAGED = {
    "PNG cut off": truncated(_saved("PNG")),
    "PNG cut off in its header": _saved("PNG")[:40],
    "PNG with a broken CRC": _bad_crc(_saved("PNG")),
    "PNG whose pixels are not zlib": _bad_zlib(_saved("PNG")),
    "JPEG cut off": truncated(_saved("JPEG"), 0.3),
    "JPEG cut off in its header": _saved("JPEG")[:30],
    "WebP cut off": truncated(_saved("WEBP")),
    "APNG cut off in its first frame": truncated(apng_frames(64, 64, 3), 0.1),
    "APNG whose frames are not zlib": apng_frames(64, 64, 3, damaged=True),
    "a PNG signature and nothing else": b"\x89PNG\r\n\x1a\n",
    "a RIFF WEBP header and nothing else": b"RIFF\x10\x00\x00\x00WEBPVP8 ",
}


@pytest.mark.parametrize("data", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_picture_is_refused_with_one_reason_whatever_pillow_raises(data):
    with pytest.raises(DownloadRefused, match="damaged"):
        decode_image(data, max_pixels=MAX_PIXELS)


# --- a decode stopped from outside -----------------------------------------------------------


def test_a_decode_stops_at_the_next_read_once_its_job_is_cancelled():
    cancelled = threading.Event()
    cancelled.set()
    guard = DecodeGuard(cancelled=cancelled)

    with pytest.raises(DecodeCancelled):
        decode_image(_saved("PNG", size=(512, 512)), max_pixels=MAX_PIXELS, guard=guard)
    assert guard.bytes_read == 0


def test_a_decode_is_refused_past_its_deadline():
    guard = DecodeGuard(timeout_s=0)  # already past: the first read stops it

    with pytest.raises(DownloadRefused, match=r"longer than 0 s to decode"):
        decode_image(_saved("JPEG", size=(512, 512)), max_pixels=MAX_PIXELS, guard=guard)
    assert guard.bytes_read == 0


@pytest.mark.parametrize("exif", BAD_EXIF.values(), ids=BAD_EXIF.keys())
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_a_picture_whose_exif_is_broken_is_used_as_stored(exif, fmt):
    data = jpeg_with_app1(b"Exif\0\0" + exif) if fmt == "JPEG" else webp_with_exif(exif)

    decoded = decode_image(data, max_pixels=MAX_PIXELS)

    assert decoded.image.size == (8, 8) and decoded.parameters is None


# --- EXIF and scan bombs: bounded work inside the guard's reach (fix-a) ------------------------

THEIRS = "pinkie pie\nNegative prompt: lowres\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1"


def _peak_bytes_while(action):
    tracemalloc.start()
    try:
        result = action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


EXIF_BOMBS = {
    # 2 MB of RATIONALs in the Exif IFD (the red team's 9.8 MB: 14 s of CPU, +518 MiB, past a
    # 1 s deadline), Orientation 6 and A1111's comment beside them.
    "PNG eXIf": lambda: exif_png(large_tag_exif(2_000_000, orientation=6, parameters=THEIRS)),
    "WebP EXIF": lambda: exif_webp(large_tag_exif(2_000_000, orientation=6, parameters=THEIRS)),
    # The same in IFD0's ResolutionUnit, split over 31 APP1 segments that Pillow joins and reads
    # for the dpi while it opens the file.
    "JPEG in 31 APP1 segments": lambda: split_exif_jpeg(large_tag_exif(
        2_000_000, tag=0x0128, in_exif_ifd=False, orientation=6)),
}


@pytest.mark.parametrize("build", EXIF_BOMBS.values(), ids=EXIF_BOMBS.keys())
def test_an_exif_bomb_costs_the_decode_no_exif_work_and_the_picture_still_turns_upright(
        build, bytes_to_pillows_exif_reader):
    bomb = build()

    decoded, peak = _peak_bytes_while(lambda: decode_image(bomb, max_pixels=MAX_PIXELS))

    assert decoded.image.size == (8, 16)  # 16×8 stored, Orientation 6: turned a quarter
    assert bytes_to_pillows_exif_reader == []
    # The file's own bytes, once or twice over (Pillow keeps a chunk it read): never the
    # hundreds of MiB of objects Pillow's EXIF reader made of its values.
    assert peak < 3 * len(bomb), f"held {peak:,} bytes decoding a {len(bomb):,}-byte file"


@pytest.mark.parametrize("build", list(EXIF_BOMBS.values())[:2], ids=list(EXIF_BOMBS)[:2])
def test_an_exif_bombs_parameters_still_come_with_the_picture(build):
    assert decode_image(build(), max_pixels=MAX_PIXELS).parameters == THEIRS


def test_a_jpeg_of_more_scans_than_any_encoder_writes_is_refused_before_a_byte_is_decoded():
    # 200 empty scans after a 64² progressive JPEG: at 4096² and 13,000 scans libjpeg spends 8 s
    # inside one block Pillow feeds it, past the deadline and deaf to Cancel.
    cancelled = threading.Event()
    guard = DecodeGuard(cancelled=cancelled)

    with pytest.raises(DownloadRefused, match="more than 100 scans"):
        decode_image(progressive_jpeg_with_empty_scans(64, 200), max_pixels=MAX_PIXELS,
                     guard=guard)
    assert guard.bytes_read == 0


def _noise(size: tuple[int, int]) -> Image.Image:
    import numpy as np

    pixels = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_turns_the_picture_as_pillows_exif_transpose_does(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    _noise((6, 4)).save(out, format="PNG", exif=exif.tobytes())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(out.getvalue())))

    decoded = decode_image(out.getvalue(), max_pixels=MAX_PIXELS)

    assert decoded.image.size == expected.size
    assert decoded.image.tobytes() == expected.convert("RGB").tobytes()


def test_the_scan_walk_stops_one_scan_past_the_limit_however_many_follow():
    layout = jpeg_layout(progressive_jpeg_with_empty_scans(64, 13_000))

    assert layout.scans == MAX_JPEG_SCANS + 1
    assert layout.markers < MAX_JPEG_SCANS + 20  # the header's segments, then one per scan


@pytest.mark.parametrize(("save", "scans"), [
    ({"progressive": True}, 10),  # libjpeg's progression for colour: 10 scans
    ({"restart_marker_blocks": 1}, 1),  # a restart marker after every MCU: 255
], ids=["progressive", "restart markers"])
def test_a_jpeg_as_encoders_write_it_has_its_scans_counted_in_a_step_per_segment(save, scans):
    out = io.BytesIO()
    _noise((256, 256)).save(out, format="JPEG", **save)

    layout = jpeg_layout(out.getvalue())

    assert layout.scans == scans
    assert layout.markers < 4 * scans + 12  # never a step per restart marker
    assert decode_image(out.getvalue(), max_pixels=MAX_PIXELS).image.size == (256, 256)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_pictures())
def test_whatever_the_bytes_a_decode_gives_a_picture_or_one_refusal(data):
    # The walks before Pillow (JPEG markers, EXIF IFDs) meet every damage Pillow meets, first.
    try:
        decoded = decode_image(data, max_pixels=MAX_PIXELS)
    except DownloadRefused as exc:
        assert str(exc)
        return
    assert decoded.image.mode in ("RGB", "RGBA")
