"""Where a configured model's files are, which of them loading uses, and which architecture
(SD 1.x, SD 2.x, SDXL) a file holds, read from its tensor names without loading the weights.

Torch-free on purpose: the loader, the converter, the start-up inventory of every worker, and
`ponybot up` / `ponybot models` / `ponybot check` must all agree on these rules, and the last
three should not pay for importing torch to read a directory.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import struct
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from ponybot_core.config import Architecture, ModelFormat

log = logging.getLogger(__name__)

CONVERTED_SAFETENSORS_SUFFIX = ".safetensors"
CONVERTED_DIFFUSERS_SUFFIX = ".diffusers"
ZIP_MAGIC = b"PK\x03\x04"


def converted_safetensors_path(path: Path) -> Path:
    """Where `convert` writes the safetensors copy of a `.ckpt`: `<stem>.safetensors`."""
    return path.with_suffix(CONVERTED_SAFETENSORS_SUFFIX)


def converted_diffusers_path(path: Path) -> Path:
    """Where `convert --to diffusers` writes the folder for a single file: `<stem>.diffusers/`."""
    return path.with_suffix(CONVERTED_DIFFUSERS_SUFFIX)


def is_up_to_date(copy: Path, source: Path) -> bool:
    """`copy` (a file, or a folder's model_index.json) exists and was written after `source`
    was last modified, or `source` is gone."""
    marker = copy / "model_index.json" if copy.is_dir() else copy
    if not marker.is_file():
        return False
    if not source.exists():
        return True
    return marker.stat().st_mtime >= source.stat().st_mtime


def converted_copy(path: Path, fmt: ModelFormat, *, quiet: bool = False) -> Path | None:
    """The up-to-date converted copy next to single file `path` that loading should use, if any.
    A stale copy is logged (unless `quiet`) and ignored."""
    candidates = [converted_diffusers_path(path)]
    if fmt is ModelFormat.CKPT:
        candidates.append(converted_safetensors_path(path))
    for copy in candidates:
        if copy == path or not copy.exists():
            continue
        if is_up_to_date(copy, path):
            return copy
        if not quiet:
            log.warning(
                "%s is older than %s, so it is not used; run the conversion again to refresh it",
                copy,
                path,
            )
    return None


def is_zip_checkpoint(path: Path) -> bool:
    """`torch.save`'s format since PyTorch 1.6 (a zip); older checkpoints are bare pickles."""
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


# --- which architecture a file holds ----------------------------------------------------------

_UNET = "model.diffusion_model."
_VAE = "first_stage_model."
# diffusers' own markers (CHECKPOINT_KEY_NAMES in diffusers/loaders/single_file_utils.py):
# SDXL base has CLIP-L under conditioner.embedders.0.transformer and OpenCLIP bigG under
# conditioner.embedders.1.model; the refiner has only OpenCLIP, as embedders.0.model; SD 2.x has
# OpenCLIP ViT-H under cond_stage_model.model; SD 1.x has CLIP-L under cond_stage_model.transformer.
_SDXL_OPEN_CLIP = "conditioner.embedders.1.model."
_SDXL_REFINER_OPEN_CLIP = "conditioner.embedders.0.model."
_SD2_OPEN_CLIP = "cond_stage_model.model."
_SD1_CLIP = "cond_stage_model.transformer."
_SDXL_LABEL_EMB = _UNET + "label_emb."
_UNET_CONV_IN = _UNET + "input_blocks.0.0.weight"
# A cross-attention key every SD UNet has; its input width is the text conditioning's width.
_CROSS_ATTENTION_K = "transformer_blocks.0.attn2.to_k.weight"
_CONTEXT_WIDTHS = {768: Architecture.SD1, 1024: Architecture.SD2, 2048: Architecture.SDXL}
_NAMES = {Architecture.SD1: "SD 1.x", Architecture.SD2: "SD 2.x", Architecture.SDXL: "SDXL"}


def architecture_name(architecture: Architecture | None) -> str:
    return _NAMES.get(architecture, "unknown") if architecture else "unknown"


@dataclass(frozen=True)
class Layout:
    """What a single file's tensor names (and shapes, where known) say it is."""

    architecture: Architecture | None  # None: not a model this bot can draw with, or unknown
    problem: str | None = None  # why it cannot be loaded as a model
    has_vae: bool = True


def checkpoint_layout(keys: Iterable[str], shapes: Mapping[str, Sequence[int]] | None = None
                      ) -> Layout:
    """Which architecture a single file holds, from its keys alone (no weights are read)."""
    keys = list(keys)
    shapes = shapes or {}

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if any(k.startswith(("lora_", "lora_unet_", "lora_te")) for k in keys):
        return Layout(None, "is a LoRA, not a full model; it cannot be loaded as a model.")
    if not has(_UNET):
        return Layout(None, "has no UNet weights (model.diffusion_model.*): it is not a full "
                            "Stable Diffusion checkpoint (a VAE, an embedding or a "
                            "diffusers-layout file?).")
    if has(_SDXL_OPEN_CLIP):
        architecture: Architecture | None = Architecture.SDXL
    elif has(_SDXL_REFINER_OPEN_CLIP):
        return Layout(None, "is an SDXL refiner (one OpenCLIP text tower): it only refines "
                            "another model's pictures and cannot draw from a prompt; use an SDXL "
                            "base model (Pony Diffusion V6 XL is one).")
    elif has(_SD2_OPEN_CLIP):
        architecture = Architecture.SD2
    elif has(_SD1_CLIP):
        architecture = Architecture.SD1
    elif any(k.startswith(_SDXL_LABEL_EMB) for k in keys):
        architecture = Architecture.SDXL
    else:
        width = next((shape[-1] for key, shape in shapes.items()
                      if key.startswith(_UNET) and key.endswith(_CROSS_ATTENTION_K) and shape),
                     None)
        architecture = _CONTEXT_WIDTHS.get(width) if width else None
        if architecture is None:
            return Layout(None, "has UNet weights but no text encoder "
                                "(cond_stage_model.* / conditioner.*): not a full checkpoint.")
    conv_in = shapes.get(_UNET_CONV_IN)
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        return Layout(architecture, f"is an inpainting or image-conditioned model "
                                    f"({conv_in[1]} UNet input channels, not 4): it cannot draw "
                                    f"from a prompt alone.")
    return Layout(architecture, None, has_vae=has(_VAE))


def declared_mismatch(declared: Architecture, detected: Architecture | None) -> str | None:
    """The config says one family, the file is another: loading would fail or draw noise."""
    if declared is Architecture.AUTO or detected is None or declared is detected:
        return None
    return (f"is an {architecture_name(detected)} checkpoint, but its config entry declares "
            f"base = \"{declared.value}\"; set base = \"{detected.value}\" (or \"auto\")")


def folder_architecture(folder: Path) -> Architecture | None:
    """A diffusers folder's family, from model_index.json's `_class_name` (SDXL) and, for
    `StableDiffusionPipeline`, its text encoder's activation: OpenCLIP (SD 2.x) uses GELU where
    OpenAI's CLIP-L (SD 1.x) uses quick GELU."""
    try:
        index = read_json_object(folder / "model_index.json")
    except (OSError, ValueError):
        return None
    name = index.get("_class_name", "")
    if not isinstance(name, str) or not name.startswith("StableDiffusion"):
        return None
    if name.startswith("StableDiffusionXL"):
        return Architecture.SDXL
    try:
        text = read_json_object(folder / "text_encoder" / "config.json")
    except (OSError, ValueError):
        return Architecture.SD1
    return Architecture.SD2 if text.get("hidden_act") == "gelu" else Architecture.SD1


# A pipeline's model_index.json and config.json files are a few KiB.
MAX_CONFIG_JSON_BYTES = 1024**2


class UnreadableFile(ValueError):
    """A model file (or a file of a model's folder) that cannot be made sense of; the message
    says why, short enough for a table."""


def read_json_object(path: Path, limit: int = MAX_CONFIG_JSON_BYTES) -> dict[str, Any]:
    """A small JSON object file, read at most `limit` bytes deep; raises OSError, or
    UnreadableFile for anything else (too big, not JSON, nested too deep, not an object)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(f"{path.name} is over {limit} bytes")
    return _json_object(data, path.name)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    # pydantic's parser (jiter) refuses nesting beyond a fixed depth with a ValueError, where
    # the standard library's recurses until RecursionError.
    try:
        value = pydantic_core.from_json(data)
    except ValueError as exc:
        raise UnreadableFile(f"{what} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "a value")
        raise UnreadableFile(f"{what} is {kind}, not a JSON object")
    return value


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}


# --- reading keys without loading tensors ------------------------------------------------------

# data.pkl of a 7 GB SDXL checkpoint is about 100 KiB; anything far bigger is not a state dict.
_MAX_PICKLE_BYTES = 64 * 1024**2


class _Opaque:
    """Whatever a checkpoint pickles besides dicts and tensors: kept inert, never imported."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        pass


# A tensor has a handful of dimensions; anything longer is a hostile pickle trying to make us
# copy one big memoised list over and over (a few bytes of pickle per copy).
_MAX_DIMENSIONS = 8


class _TensorShape:
    def __init__(self, shape: Any) -> None:
        self.shape = _size(shape) if isinstance(shape, (tuple, list)) else []


def _size(dimensions: Any) -> list[int]:
    if not isinstance(dimensions, (tuple, list)) or len(dimensions) > _MAX_DIMENSIONS:
        raise ValueError("not a tensor shape")
    return [int(d) for d in dimensions]


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    # torch.save pickles an OrderedDict as an empty one filled by SETITEMS.
    if args:
        raise ValueError("an OrderedDict built from arguments")
    return collections.OrderedDict()


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *rest: Any) -> _TensorShape:
    return _TensorShape(size)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


class _KeysUnpickler(pickle.Unpickler):
    """Reads a `torch.save` pickle's structure only: no module is imported, no class of the file
    is instantiated, tensors become their shapes. Safe on hostile files (never runs their
    code), unlike `torch.load(weights_only=False)`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _ordered_dict
        if (module, name) == ("torch", "Size"):
            return _size
        if module == "torch._utils" and name.startswith("_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        return _Opaque

    def persistent_load(self, pid: Any) -> None:
        return None


def ckpt_shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape of a zip `torch.save` checkpoint's state dict, read from its pickle
    alone; None when that is not possible (the pre-1.6 format, or not a state dict)."""
    if not is_zip_checkpoint(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")
                         or n == "data.pkl"), None)
            if name is None or archive.getinfo(name).file_size > _MAX_PICKLE_BYTES:
                return None
            data = archive.read(name)
        checkpoint = _KeysUnpickler(io.BytesIO(data)).load()
    except Exception:  # a hostile or broken pickle: unknown, decided when loading
        return None
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        return None
    return {str(k): v.shape for k, v in checkpoint.items() if isinstance(v, _TensorShape)}


# safetensors' own limit (MAX_HEADER_SIZE in huggingface/safetensors safetensors/src/tensor.rs):
# a file with a bigger header is refused by the library that would load it anyway.
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
_NonNegative = Annotated[StrictInt, Field(ge=0)]


class SafetensorsTensor(BaseModel):
    """One entry of a safetensors header: the library's `TensorInfo` (dtype, shape, byte range
    from the end of the header)."""

    model_config = ConfigDict(frozen=True)

    dtype: StrictStr
    shape: list[_NonNegative]
    data_offsets: tuple[_NonNegative, _NonNegative]


_TENSORS = TypeAdapter(dict[str, SafetensorsTensor])
_METADATA = TypeAdapter(dict[str, StrictStr])


@dataclass(frozen=True)
class SafetensorsHeader:
    length: int  # bytes of JSON after the 8-byte length
    tensors: Mapping[str, SafetensorsTensor]

    @property
    def data_end(self) -> int:
        """Where the last tensor's bytes end: a file shorter than this is truncated."""
        return 8 + self.length + max((t.data_offsets[1] for t in self.tensors.values()),
                                     default=0)

    def shapes(self) -> dict[str, list[int]]:
        return {name: list(t.shape) for name, t in self.tensors.items()}


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """A safetensors file's header (an 8-byte little-endian length, then a JSON object naming
    each tensor's dtype, shape and byte range), read without the tensors and never more than
    MAX_SAFETENSORS_HEADER_BYTES of it; raises OSError, or UnreadableFile saying what is wrong."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise UnreadableFile(f"{len(prefix)} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_SAFETENSORS_HEADER_BYTES:
            raise UnreadableFile(f"a header of {length} bytes, over the limit of "
                                 f"{MAX_SAFETENSORS_HEADER_BYTES}")
        data = f.read(length)
    if len(data) < length:
        raise UnreadableFile(f"the header is {length} bytes, the file holds {len(data)} after "
                             f"its length")
    header = _json_object(data, "the header")
    metadata = header.pop("__metadata__", {})
    try:
        _METADATA.validate_python(metadata)
    except ValidationError as exc:
        raise UnreadableFile(_first_error(exc, "__metadata__")) from exc
    try:
        tensors = _TENSORS.validate_python(header)
    except ValidationError as exc:
        raise UnreadableFile(_first_error(exc, None)) from exc
    for name, tensor in tensors.items():
        start, end = tensor.data_offsets
        if end < start:
            raise UnreadableFile(f"{_cut(name)}: data_offsets end before they start")
    return SafetensorsHeader(length=length, tensors=tensors)


def _first_error(exc: ValidationError, within: str | None) -> str:
    # pydantic's own message quotes the input: a hostile header could fill the table with it.
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(_cut(str(part)) for part in (within, *error["loc"]) if part is not None)
    msg = error["msg"].replace(f" or instance of {SafetensorsTensor.__name__}", "")
    return f"{loc or 'the header'}: {msg}"


def _cut(name: str, limit: int = 80) -> str:
    # Tensor names come from the file: one of megabytes must not become a heartbeat field.
    return name if len(name) <= limit else name[:limit] + "…"


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header; raises OSError / UnreadableFile (a
    ValueError) for unreadable files."""
    return read_safetensors_header(path).shapes()


def single_file_layout(path: Path, fmt: ModelFormat) -> Layout | None:
    """`checkpoint_layout` of a single file; None when its keys cannot be read cheaply."""
    try:
        if fmt is ModelFormat.SAFETENSORS:
            shapes = safetensors_shapes(path)
        else:
            found = ckpt_shapes(path)
            if found is None:
                return None
            shapes = found
    except (OSError, ValueError):
        return None
    return checkpoint_layout(shapes, shapes)
