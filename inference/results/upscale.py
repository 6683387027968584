"""Upscaling (step 7 of `Worker.process`: the U buttons, `/upscale`, `/pony upscale:true`) with
Real-ESRGAN (and other spandrel-supported) upscalers: loading, tiling, a small cache.

spandrel (what ComfyUI and chaiNNer use) detects the architecture and scale from the weights
alone: ESRGAN and Real-ESRGAN RRDBNet in both key layouts, the compact SRVGGNet, and more.

Tiling: the input is cut into `tile`-px tiles that overlap their neighbours by `tile_overlap`
px. Each seam lies in the middle of an overlap, and every tile keeps only its own side of the
seams (crop, no blend), so each kept output pixel saw at least `tile_overlap // 2` input pixels
of real context on every side. When the network's receptive field fits in that margin the tiled
result is the untiled one (up to float rounding: at most one 8-bit level). A trained RRDB net's
receptive field is far larger in theory, but its output depends mostly on nearby pixels, which
is why Real-ESRGAN's own inference script crops the same way with a 10 px pad (so use a
tile_overlap of 20 or more for the same margin). Cropping never averages two different
predictions, so there is no ghosting in the overlaps either.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file as load_safetensors
from spandrel import (
    ImageModelDescriptor,
    ModelLoader,
    ModelTiling,
    UnsupportedModelError,
    canonicalize_state_dict,
)

from inference.results.sources import SOURCE_PARAMETERS
from ponybot_core.config import Config, UpscalerEntry, resolve_path
from ponybot_core.downloads import normalised
from ponybot_core.job import Job, JobKind

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


class UpscaleError(Exception):
    """An upscaler file is missing, unreadable, or not an image upscaler; the message says which
    file and what was found."""


class UpscalerUnavailable(Exception):
    """No upscaler is configured, or it cannot be loaded; `str(error)` tells the user."""


@dataclass(frozen=True)
class _Span:
    """One tile along one axis: the input it reads and the part of it it keeps."""

    start: int  # input slice [start, end)
    end: int
    keep_start: int  # output (in input coordinates) it writes: [keep_start, keep_end)
    keep_end: int


def tile_spans(length: int, tile: int, overlap: int, multiple_of: int = 1) -> list[_Span]:
    """Tiles of `tile` px along an axis of `length` px, neighbours overlapping by at least
    `overlap` px, seams in the middle of each overlap. tile=0 (or a short axis) = one span.

    Starts are multiples of `multiple_of` so models that pixel-unshuffle their input see the
    same pixel grid in every tile as in the whole image.
    """
    if tile <= 0 or length <= tile:
        return [_Span(0, length, 0, length)]
    tile = max(multiple_of, tile // multiple_of * multiple_of)
    stride = (tile - overlap) // multiple_of * multiple_of
    if stride <= 0:
        raise ValueError(f"tile_overlap ({overlap}) must be smaller than tile ({tile})")
    starts = list(range(0, length - tile, stride))
    starts.append((length - tile) // multiple_of * multiple_of)  # the last tile ends at the edge
    starts = sorted(set(starts))
    ends = [min(start + tile, length) for start in starts]
    ends[-1] = length
    # Seam between tiles i and i+1: the middle of their overlap [starts[i+1], ends[i]).
    seams = [(starts[i + 1] + ends[i]) // 2 for i in range(len(starts) - 1)]
    keeps = [0, *seams, length]
    return [_Span(starts[i], ends[i], keeps[i], keeps[i + 1]) for i in range(len(starts))]


class Upscaler:
    """A loaded upscaling network on its device. `upscale` is synchronous and GPU-bound: call
    it from a worker thread."""

    def __init__(self, entry: UpscalerEntry, path: Path, descriptor: ImageModelDescriptor,
                 *, tile: int, overlap: int) -> None:
        self.entry = entry
        self.path = path
        self.descriptor = descriptor
        self.tile = tile
        self.overlap = overlap

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    @property
    def device(self) -> torch.device:
        return self.descriptor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.descriptor.dtype

    def describe(self) -> str:
        tags = " ".join(self.descriptor.tags)
        dtype = str(self.dtype).removeprefix("torch.")
        return (f"{self.entry.id}: {self.descriptor.architecture.name} x{self.scale} ({tags}) "
                f"on {self.device.type} {dtype}")

    def upscale(self, image: Image.Image) -> Image.Image:
        """The image `scale` times larger; alpha, if any, is resized alongside."""
        # 1. The picture as the 8-bit RGB(A) it shows (16-bit gray would clip to white), and
        #    what the network does not see split off.
        image = normalised(image)
        alpha = image.getchannel("A") if image.mode == "RGBA" else None
        mode = "L" if self.descriptor.input_channels == 1 else "RGB"
        pixels = np.array(image.convert(mode))  # a writable copy for torch
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        # 2. Run the network tile by tile.
        with torch.inference_mode():
            source = torch.from_numpy(pixels).to(self.device).permute(2, 0, 1).unsqueeze(0)
            output = self._upscale_tiles(source)
        # 3. Back to a PIL image.
        array = output.squeeze(0).permute(1, 2, 0).cpu().numpy()
        result = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode)
        if alpha is not None:
            result.putalpha(alpha.resize(result.size, Image.Resampling.BICUBIC))
        return result

    def _upscale_tiles(self, source: torch.Tensor) -> torch.Tensor:
        """uint8 (1, C, H, W) on the device -> uint8 (1, C, H*scale, W*scale) on the device."""
        _, channels, height, width = source.shape
        scale = self.scale
        multiple_of = self.descriptor.size_requirements.multiple_of
        output = torch.empty((1, channels, height * scale, width * scale), dtype=torch.uint8,
                             device=self.device)
        rows = tile_spans(height, self.tile, self.overlap, multiple_of)
        cols = tile_spans(width, self.tile, self.overlap, multiple_of)
        for row in rows:
            for col in cols:
                tile = source[:, :, row.start:row.end, col.start:col.end]
                result = self.descriptor(tile.to(self.dtype).div_(255))
                top, left = row.keep_start - row.start, col.keep_start - col.start
                kept = result[:, :, top * scale:(top + row.keep_end - row.keep_start) * scale,
                              left * scale:(left + col.keep_end - col.keep_start) * scale]
                output[:, :, row.keep_start * scale:row.keep_end * scale,
                       col.keep_start * scale:col.keep_end * scale] = (
                    kept.float().mul_(255).round_().clamp_(0, 255).to(torch.uint8))
        return output


def _read_state_dict(path: Path) -> Mapping[str, object]:
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        try:
            return load_safetensors(str(path), device="cpu")
        except Exception as exc:
            raise UpscaleError(f"{path}: not a readable safetensors file ({exc})") from exc
    if suffix in PICKLE_SUFFIXES:
        try:
            # weights_only: tensors and plain containers only, never arbitrary pickled objects.
            # (spandrel's own loader uses a restricted unpickler instead; torch's is stricter
            # about what a global may be and is maintained with torch.)
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" in str(exc):
                raise UpscaleError(
                    f"{path}: refused to load: the file holds pickled Python objects, not only "
                    f"tensors (torch.load weights_only). Convert it to .safetensors with a tool "
                    f"you trust.") from exc
            raise UpscaleError(f"{path}: not a readable PyTorch file ({exc})") from exc
        except Exception as exc:
            raise UpscaleError(f"{path}: not a readable PyTorch file ({exc})") from exc
        if not isinstance(state, dict):
            raise UpscaleError(f"{path}: holds a {type(state).__name__}, not a state dict")
        return state
    raise UpscaleError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected "
                       f"{', '.join((*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX))}")


def _choose_dtype(descriptor: ImageModelDescriptor, device: torch.device,
                  dtype: torch.dtype) -> torch.dtype:
    # fp16 on GPUs where the architecture supports it; CPUs are faster (and exact) in fp32.
    if device.type == "cpu":
        return torch.float32
    if dtype == torch.float16 and not descriptor.supports_half:
        return torch.float32
    if dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        return torch.float32
    return dtype


def load_upscaler(entry: UpscalerEntry, *, base_dir: Path, device: torch.device | str,
                  dtype: torch.dtype) -> Upscaler:
    """Load `entry`'s network (relative paths resolve against base_dir) onto device."""
    # 1. Check the inputs.
    path = resolve_path(entry.path, base_dir)
    if not path.is_file():
        raise UpscaleError(f"upscaler {entry.id!r}: file not found: {path}")
    if entry.tile and entry.tile_overlap >= entry.tile:
        raise UpscaleError(f"upscaler {entry.id!r}: tile_overlap ({entry.tile_overlap}) must be "
                           f"smaller than tile ({entry.tile})")
    device = torch.device(device)
    started = time.perf_counter()
    # 2. Read the weights and let spandrel detect the architecture.
    state = canonicalize_state_dict(_read_state_dict(path))
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError as exc:
        keys = ", ".join(list(state)[:4])
        raise UpscaleError(f"{path}: spandrel does not recognise this network "
                           f"(first keys: {keys or 'none'})") from exc
    except Exception as exc:  # a known architecture with inconsistent shapes
        raise UpscaleError(f"{path}: spandrel could not load this network ({exc})") from exc
    # 3. Refuse what is not an image upscaler.
    arch = descriptor.architecture.name
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UpscaleError(f"{path}: is a {arch} {descriptor.purpose} model (image + mask), "
                           f"not an image upscaler")
    if descriptor.purpose != "SR" or descriptor.scale < 2:
        raise UpscaleError(f"{path}: is a {arch} {descriptor.purpose} model at "
                           f"{descriptor.scale}x, not an upscaler")
    if descriptor.input_channels not in (1, 3) or (
            descriptor.output_channels != descriptor.input_channels):
        raise UpscaleError(f"{path}: {arch} takes {descriptor.input_channels} channels and "
                           f"gives {descriptor.output_channels}; only RGB or grey nets are used")
    # 4. Place it.
    dtype = _choose_dtype(descriptor, device, dtype)
    descriptor = descriptor.to(device, dtype).eval()
    tile = entry.tile
    if descriptor.tiling is ModelTiling.INTERNAL:
        tile = 0  # the model tiles itself and needs the whole image
    elif descriptor.tiling is ModelTiling.DISCOURAGED and tile:
        log.warning("upscaler %s: %s discourages tiling; tiles of %d px may show", entry.id,
                    arch, tile)
    upscaler = Upscaler(entry, path, descriptor, tile=tile, overlap=entry.tile_overlap)
    log.info("loaded upscaler %s from %s in %.2f s", upscaler.describe(), path,
             time.perf_counter() - started)
    return upscaler


class UpscalerCache:
    """Loaded upscalers by id, least recently used dropped past `max_loaded` (most deployments
    configure one or two). Thread-safe: the worker upscales in a thread."""

    def __init__(self, *, base_dir: Path, device: torch.device | str, dtype: torch.dtype,
                 max_loaded: int = 2) -> None:
        self.base_dir = base_dir
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_loaded = max(1, max_loaded)
        self._loaded: OrderedDict[str, Upscaler] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, entry: UpscalerEntry) -> Upscaler:
        with self._lock:
            upscaler = self._loaded.get(entry.id)
            if upscaler is not None and upscaler.entry == entry:
                self._loaded.move_to_end(entry.id)
                return upscaler
            upscaler = load_upscaler(entry, base_dir=self.base_dir, device=self.device,
                                     dtype=self.dtype)
            self._loaded[entry.id] = upscaler
            self._loaded.move_to_end(entry.id)
            while len(self._loaded) > self.max_loaded:
                dropped, _ = self._loaded.popitem(last=False)
                log.info("dropped upscaler %s from the cache", dropped)
            return upscaler

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def upscale_images(config: Config, upscalers: UpscalerCache, images: list[Image.Image],
                   upscaler_id: str | None = None) -> tuple[list[Image.Image], str]:
    """The images through the configured upscaler `upscaler_id` (None: the default), and its
    description (`Real-ESRGAN x4plus ×4`). Blocking: call it off the event loop."""
    try:
        entry = config.upscaler(upscaler_id)
    except KeyError:
        raise UpscalerUnavailable(f"the upscaler {upscaler_id!r} is not configured" if upscaler_id
                                  else "no upscaler is configured") from None
    try:
        upscaler = upscalers.get(entry)
    except UpscaleError as exc:
        raise UpscalerUnavailable(f"the upscaler {entry.id!r} could not be loaded") from exc
    return ([_with_source_parameters(upscaler.upscale(image), image) for image in images],
            f"{entry.name} ×{upscaler.scale}")


def _with_source_parameters(upscaled: Image.Image, source: Image.Image) -> Image.Image:
    if SOURCE_PARAMETERS in source.info:
        upscaled.info[SOURCE_PARAMETERS] = source.info[SOURCE_PARAMETERS]
    return upscaled


def upscale_for(config: Config, upscalers: UpscalerCache, job: Job, images: list[Image.Image],
                notes: list[str]) -> tuple[list[Image.Image], str | None]:
    """The images through the configured upscaler when the job asks for it, and the
    upscaler's description. An upscale job without one raises UpscalerUnavailable (it is
    given up); a picture asked with `upscale:true` is posted as drawn, with a note."""
    if job.kind is not JobKind.UPSCALE and not job.upscale:
        return images, None
    try:
        return upscale_images(config, upscalers, images, job.upscaler_id)
    except UpscalerUnavailable as exc:
        if job.kind is JobKind.UPSCALE:
            raise
        notes.append(f"not upscaled: {exc}")
        return images, None
