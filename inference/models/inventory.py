"""Which configured models and upscalers are usable here, checked without loading any weights.

A first run used to find out that a model was missing only when a job for it failed. Every
worker now checks each configured file at start (present, readable, format detected, size, the
converted copy loading will prefer) and publishes the result in its heartbeat, so `/pony`
refuses at once what no worker can draw; `ponybot up`, `ponybot models` and `ponybot check`
print the same table with what to do about each problem.

Torch-free and cheap (a few `stat` calls and file headers per model), so the launcher and the
bot's side can use it, and a worker can re-check now and then to notice a newly added file.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from inference.models.files import (
    UnreadableFile,
    architecture_name,
    checkpoint_layout,
    ckpt_shapes,
    converted_copy,
    converted_safetensors_path,
    declared_mismatch,
    folder_architecture,
    is_zip_checkpoint,
    read_json_object,
    read_safetensors_header,
)
from ponybot_core.config import (
    Architecture,
    Config,
    ModelEntry,
    ModelFormat,
    UpscalerEntry,
    resolve_path,
)

# Components a diffusers folder must hold weights for (the safety checker is never loaded).
_WEIGHTED = ("unet", "vae", "text_encoder")
_CONFIG_ONLY = ("scheduler", "tokenizer")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt")
# A pickle stream starts with the PROTO opcode (protocol 2 and later).
_PICKLE_PROTO = 0x80
# Heartbeats key upscaler problems apart from model problems (the ids may be equal).
UPSCALER_KEY_PREFIX = "upscaler:"

log = logging.getLogger(__name__)

# Tensor names (and shapes, where known) -> why they are not a model this bot can draw with.
_KeysProblem = Callable[[list[str], dict[str, list[int]] | None], str | None]


class FileCheck(BaseModel):
    """One configured model or upscaler as found on disk."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["model", "upscaler"]
    id: str
    name: str
    path: Path  # resolved against the config file's folder
    format: str | None = None  # diffusers | ckpt | safetensors | pth, as detected
    size_bytes: int | None = None
    converted: Path | None = None  # the converted copy loading uses instead of `path`
    # sd1 | sd2 | sdxl: read from the file (a single file's tensor names, a folder's
    # model_index.json), else as declared (`base`); None = not known without loading it.
    architecture: str | None = None
    declared: bool = False  # the config declares `base` (and the file agrees, or is unread)
    problem: str | None = None  # why it cannot be used; None = usable
    fix: str | None = None  # what to do about the problem
    tip: str | None = None  # an improvement for a usable file (convert once)

    @property
    def usable(self) -> bool:
        return self.problem is None

    def architecture_label(self) -> str:
        """`SDXL`, `SD 2.x (declared)`, ... for tables; `-` for upscalers and unknowns."""
        if self.architecture is None:
            return "-"
        name = architecture_name(Architecture(self.architecture))
        return f"{name} (declared)" if self.declared else name


class Inventory(BaseModel):
    model_config = ConfigDict(frozen=True)

    models: list[FileCheck]
    upscalers: list[FileCheck]

    def usable_models(self) -> list[str]:
        return [m.id for m in self.models if m.usable]

    def usable_upscalers(self) -> list[str]:
        return [u.id for u in self.upscalers if u.usable]

    def unavailable(self) -> dict[str, str]:
        """Id -> problem for what cannot be used (upscalers as `upscaler:<id>`), for heartbeats."""
        problems = {m.id: m.problem for m in self.models if m.problem}
        problems.update({UPSCALER_KEY_PREFIX + u.id: u.problem for u in self.upscalers
                         if u.problem})
        return problems

    def heartbeat_fields(self) -> dict[str, object]:
        """What a worker's heartbeat says about its files
        (`ponybot_core.heartbeat.WorkerHeartbeat`)."""
        return {"serves": self.usable_models(), "upscalers": self.usable_upscalers(),
                "unavailable": self.unavailable()}

    def model(self, model_id: str) -> FileCheck:
        return next(m for m in self.models if m.id == model_id)

    def table(self, extra: dict[str, dict[str, str]] | None = None) -> str:
        """A plain-text table (models, then upscalers), then one line per problem with its fix.
        `extra` adds columns: column title -> {id: value}."""
        extra = extra or {}
        header = ["", "id", "format", "architecture", "size", "converted copy", *extra, "path"]
        rows = [header]
        for check in (*self.models, *self.upscalers):
            rows.append([
                ("✔" if check.usable else "✘") + (" upscaler" if check.kind == "upscaler" else ""),
                check.id, check.format or "-", check.architecture_label(),
                human_size(check.size_bytes),
                check.converted.name if check.converted else "-",
                *(column.get(check.id, "-") for column in extra.values()),
                str(check.path),
            ])  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        for check in (*self.models, *self.upscalers):
            if check.problem:
                lines.append(f"✘ {check.id}: {check.problem}")
                if check.fix:
                    lines.append(f"  → {check.fix}")
            elif check.tip:
                lines.append(f"· {check.id}: {check.tip}")
        return "\n".join(lines)


def check_all(config: Config, base_dir: Path) -> Inventory:
    """Every configured model and upscaler; relative paths resolve against `base_dir`."""
    return Inventory(
        models=[check_model(m, base_dir) for m in config.models],
        upscalers=[check_upscaler(u, base_dir) for u in config.upscalers],
    )


def check_model(entry: ModelEntry, base_dir: Path) -> FileCheck:
    path = resolve_path(entry.path, base_dir)
    try:
        return _check_model(entry, path, base_dir)
    except OSError as exc:  # a folder we may not list, a file vanishing while we look
        return FileCheck(kind="model", id=entry.id, name=entry.name, path=path,
                         problem=f"cannot read {path}: {exc}")
    except Exception as exc:
        # The readers above turn every malformed file they know of into a problem; this is the
        # backstop for one they do not: a worker checks on every heartbeat, and one file dropped
        # into models/ must not stop it (or `ponybot models`) serving the others.
        log.exception("checking model %r (%s) failed", entry.id, path)
        return FileCheck(kind="model", id=entry.id, name=entry.name, path=path,
                         problem=f"{path} is unreadable: {_short(exc)}",
                         fix="point `path` for this model at a usable file")


def _check_model(entry: ModelEntry, path: Path, base_dir: Path) -> FileCheck:
    fmt = entry.resolved_format()
    found = FileCheck(kind="model", id=entry.id, name=entry.name, path=path, format=fmt.value)
    if fmt is not ModelFormat.DIFFUSERS:
        copy = converted_copy(path, fmt, quiet=True)
        if copy is not None:
            # Loading takes the copy (even with the original gone): check what is loaded.
            copy_fmt = ModelFormat.DIFFUSERS if copy.is_dir() else ModelFormat.SAFETENSORS
            checked = _check_model_file(entry, copy, copy_fmt, found, base_dir)
            return checked.model_copy(update={"converted": copy, "path": path})
    checked = _check_model_file(entry, path, fmt, found, base_dir)
    if checked.usable and fmt is ModelFormat.CKPT:
        convert = (f"convert once for faster loads without pickle: `python -m inference "
                   f"convert {entry.id}` writes {converted_safetensors_path(path).name}")
        checked = checked.model_copy(update={"tip": "; ".join(
            t for t in (checked.tip, convert) if t)})
    return checked


def check_upscaler(entry: UpscalerEntry, base_dir: Path) -> FileCheck:
    path = resolve_path(entry.path, base_dir)
    try:
        return _check_upscaler(entry, path)
    except OSError as exc:
        return FileCheck(kind="upscaler", id=entry.id, name=entry.name, path=path,
                         problem=f"cannot read {path}: {exc}")
    except Exception as exc:  # the backstop of check_model, for the same reason
        log.exception("checking upscaler %r (%s) failed", entry.id, path)
        return FileCheck(kind="upscaler", id=entry.id, name=entry.name, path=path,
                         problem=f"{path} is unreadable: {_short(exc)}")


def _short(exc: BaseException) -> str:
    """An exception in one line of a table: its type, and its message cut short."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _check_upscaler(entry: UpscalerEntry, path: Path) -> FileCheck:
    suffix = path.suffix.lower()
    fmt = "safetensors" if suffix == ".safetensors" else "pth" if suffix in _PICKLE_SUFFIXES \
        else None
    found = FileCheck(kind="upscaler", id=entry.id, name=entry.name, path=path, format=fmt)
    if not path.exists():
        return found.model_copy(update={
            "problem": f"not found: {path}",
            "fix": f"download the {entry.name} weights ({path.name}) and put them at {path}, "
                   f"or remove this [[upscalers]] entry"})  # fmt: skip
    if fmt is None:
        return found.model_copy(update={
            "problem": f"{path.name}: unsupported file type (expected .pth or .safetensors)"})
    problem = _single_file_problem(path, fmt, keys_problem=None)
    return found.model_copy(update={"size_bytes": _size(path), "problem": problem})


# --- models ---------------------------------------------------------------------------------


def _check_model_file(entry: ModelEntry, path: Path, fmt: ModelFormat, found: FileCheck,
                      base_dir: Path) -> FileCheck:
    declared = entry.base if entry.base is not Architecture.AUTO else None
    found = found.model_copy(update={"architecture": declared and declared.value,
                                     "declared": declared is not None})
    if not path.exists():
        return found.model_copy(update={"problem": f"not found: {path}",
                                        "fix": missing_model_fix(entry, path)})
    detected: Architecture | None = None
    if fmt is ModelFormat.DIFFUSERS:
        problem = _diffusers_problem(path)
        if problem is None:
            detected = folder_architecture(path)
            problem = _diffusers_components_problem(path, detected)
    elif path.is_dir():
        problem = (f"{path} is a folder, but the format is {fmt.value!r} (a single file); set "
                   f"`format = \"diffusers\"` for a diffusers folder")
    else:
        reader = _ModelKeys(entry)
        problem = _single_file_problem(path, fmt.value, keys_problem=reader)
        if problem is None and fmt is ModelFormat.CKPT:
            shapes = ckpt_shapes(path)
            if shapes is not None:
                problem = reader(list(shapes), shapes)
                problem = f"{path} {problem}" if problem else None
        detected = reader.detected
    fix = None
    if problem is None:
        mismatch = declared_mismatch(entry.base, detected)
        if mismatch:
            problem = f"{path} {mismatch}"
            fix = f"set base = \"{detected.value if detected else 'auto'}\" for this model"
    if problem is None and entry.vae is not None:
        vae = resolve_path(entry.vae, base_dir)
        if not vae.exists():
            problem = f"its vae {vae} is not there"
            fix = f"put the VAE at {vae}, or remove `vae` for this model"
    if detected is not None:
        found = found.model_copy(update={"architecture": detected.value, "declared": False})
    tip = None
    if problem is None and entry.base is Architecture.AUTO and detected in _NOT_SD1_SIZES:
        # The bot sizes pictures from the config alone (it never opens model files).
        tip = (f"declare base = \"{detected.value}\" for this model: with base = \"auto\" "
               f"/pony draws at the config's [sizes] (SD 1.x's), not "
               f"{_NOT_SD1_SIZES[detected]}")
    if problem and fix is None:
        fix = (f"replace it: {missing_model_fix(entry, path)}" if "truncated" in problem
               or "corrupt" in problem else "point `path` for this model at a usable file")
    return found.model_copy(update={"size_bytes": _size(path), "problem": problem, "fix": fix,
                                    "tip": tip})


_NOT_SD1_SIZES = {Architecture.SD2: "SD 2.x's 768 px", Architecture.SDXL: "SDXL's 1024 px"}


class _ModelKeys:
    """A `keys_problem` for model checkpoints that also remembers the architecture it read."""

    def __init__(self, entry: ModelEntry) -> None:
        self.entry = entry
        self.detected: Architecture | None = None

    def __call__(self, keys: list[str], shapes: dict[str, list[int]] | None = None) -> str | None:
        layout = checkpoint_layout(keys, shapes)
        self.detected = layout.architecture
        if layout.problem:
            return layout.problem
        if not layout.has_vae and self.entry.vae is None:
            return ("has no VAE weights (first_stage_model.*); set `vae` for this model to a VAE "
                    "file or folder")
        return None


def _diffusers_components_problem(folder: Path, architecture: Architecture | None) -> str | None:
    """SDXL folders also need the second text tower and its tokenizer."""
    if architecture is not Architecture.SDXL:
        return None
    for component in ("text_encoder_2", "tokenizer_2"):
        if not (folder / component).is_dir():
            return f"{folder} has no {component}/ folder (an SDXL pipeline needs it)"
    sub = folder / "text_encoder_2"
    weights = [p for p in sub.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
    if not any(p.stat().st_size > 0 for p in weights):
        return f"{sub} has no weights (.safetensors or .bin; an incomplete download?)"
    return None


def missing_model_fix(entry: ModelEntry, path: Path) -> str:
    """What to do to get `entry`'s file: pull it from the hub, or fetch it by hand."""
    if entry.hub_repo:
        return f"run `ponybot models pull {entry.id}` (downloads {entry.hub_repo} into {path})"
    where = f"from {entry.download_url} " if entry.download_url else ""
    return (f"download `{path.name}` {where}into {path.parent}/ "
            f"(`ponybot models pull {entry.id}` says how)")


def _diffusers_problem(folder: Path) -> str | None:
    if not folder.is_dir():
        return (f"{folder} is a file, but the format is 'diffusers' (a folder); single files "
                f"must end in .ckpt/.pt/.pth or .safetensors, or set `format`")
    index = folder / "model_index.json"
    try:
        read_json_object(index)
    except FileNotFoundError:
        return f"{folder} has no model_index.json: not a diffusers pipeline folder"
    except (OSError, ValueError) as exc:
        return f"{index} is not readable JSON ({exc})"
    for component in (*_WEIGHTED, *_CONFIG_ONLY):
        if not (folder / component).is_dir():
            return f"{folder} has no {component}/ folder (an incomplete download?)"
    for component in _WEIGHTED:
        sub = folder / component
        if not (sub / "config.json").is_file():
            return f"{sub} has no config.json (an incomplete download?)"
        try:
            read_json_object(sub / "config.json")
        except ValueError as exc:
            return f"{sub / 'config.json'} is not readable JSON ({exc})"
        weights = [p for p in sub.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
        if not any(p.stat().st_size > 0 for p in weights):
            return f"{sub} has no weights (.safetensors or .bin; an incomplete download?)"
        for weight in weights:
            if weight.suffix == ".safetensors":
                problem = _safetensors_problem(weight, keys_problem=None)
                if problem:
                    return problem
    return None


# --- single files -----------------------------------------------------------------------------


def _single_file_problem(path: Path, fmt: str, keys_problem: _KeysProblem | None
                         ) -> str | None:
    if not os.access(path, os.R_OK):
        return f"{path} is not readable (permissions)"
    if fmt == "safetensors":
        return _safetensors_problem(path, keys_problem=keys_problem)
    return _pickle_problem(path)


def _pickle_problem(path: Path) -> str | None:
    """A `torch.save` file: a zip with a data.pkl inside (opening the zip reads only its
    directory, at the end of the file: a truncated download fails here), or a bare pickle."""
    try:
        if is_zip_checkpoint(path):
            with zipfile.ZipFile(path) as archive:
                if not any(n.endswith("data.pkl") for n in archive.namelist()):
                    return f"{path} is a zip without data.pkl: not a PyTorch checkpoint"
            return None
        with open(path, "rb") as f:
            first = f.read(1)
    # zipfile also raises ValueError (a name that is not UTF-8, a negative offset), EOFError and
    # NotImplementedError (a zip version or compression it does not know) on a crafted archive.
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
        return f"{path} is truncated or corrupt (not a readable PyTorch checkpoint: {exc})"
    if not first or first[0] != _PICKLE_PROTO:
        return f"{path} is not a PyTorch checkpoint (corrupt, or another format under this name)"
    return None


def _safetensors_problem(path: Path, keys_problem: _KeysProblem | None) -> str | None:
    """The header (an 8-byte length, then JSON naming each tensor's byte range) read without
    the tensors: unreadable, truncated, or (for checkpoints) not a layout this bot can draw
    with."""
    try:
        header = read_safetensors_header(path)
    except UnreadableFile as exc:
        return f"{path} is truncated or corrupt (unreadable safetensors header: {exc})"
    size = path.stat().st_size
    if size < header.data_end:
        return (f"{path} is truncated: {size} of {header.data_end} bytes (an interrupted "
                f"download?)")
    if keys_problem is not None:
        what = keys_problem(list(header.tensors), header.shapes())
        if what:
            return f"{path} {what}"
    return None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
