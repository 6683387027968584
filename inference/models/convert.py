"""`python -m inference convert <model-id> [--to diffusers] [--trust-pickle]`.

Converts a configured model once, next to the original, into a format that loads safely and
faster; the loader prefers an up-to-date converted copy over the original (see
inference/models/loading.py):

* `--to safetensors` (default), for a `.ckpt`: `<stem>.safetensors` with the checkpoint's state
  dict only: tensors, nothing pickled, in the same CompVis key layout and dtypes.
* `--to diffusers`, for a `.ckpt` or `.safetensors` of any supported family (SD 1.x, SD 2.x,
  SDXL): a diffusers folder `<stem>.diffusers/` (float32), assembled with the same single-file
  configs the loader uses (so an SDXL file gives a `StableDiffusionXLPipeline` folder with both
  text encoders).

A `.ckpt` that pickles Python objects besides its weights (most training checkpoints do) is
converted only with `--trust-pickle`: reading it then runs `torch.load(weights_only=False)`,
which can execute code from the file. Do that only for files from a source you trust. Classes
from modules that are not installed here (pytorch_lightning callbacks...) are replaced by inert
stand-ins while reading, since only the tensors are kept.

Converting again is a no-op while the copy is newer than the original.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from inference.models.files import (
    checkpoint_layout,
    converted_diffusers_path,
    converted_safetensors_path,
    folder_architecture,
    is_up_to_date,
    is_zip_checkpoint,
)
from inference.models.loading import (
    ModelLoadError,
    load_from,
    single_file_config_dir,
    unsafe_pickle_globals,
)
from ponybot_core.config import Architecture, Config, ModelEntry, ModelFormat, resolve_path

Target = Literal["safetensors", "diffusers"]
Report = Callable[[str], None]


def convert(
    entry: ModelEntry,
    *,
    base_dir: Path,
    trust_pickle: bool = False,
    to: Target = "safetensors",
    report: Report | None = print,
) -> Path:
    """Write the converted copy of `entry` (if not already up to date) and return its path."""
    say: Report = report or (lambda _message: None)
    source = resolve_path(entry.path, base_dir)
    fmt = entry.resolved_format()
    if to == "safetensors":
        return _to_safetensors(entry, source, fmt, trust_pickle, say)
    if to == "diffusers":
        return _to_diffusers(entry, source, fmt, trust_pickle, base_dir, say)
    raise ValueError(f"unknown target format {to!r}")


# ---------------------------------------------------------------------------------------------
# .ckpt -> .safetensors


def _to_safetensors(
    entry: ModelEntry, source: Path, fmt: ModelFormat, trust_pickle: bool, say: Report
) -> Path:
    if fmt is ModelFormat.SAFETENSORS:
        say(f"{source} is already a safetensors file: nothing to convert.")
        return source
    if fmt is ModelFormat.DIFFUSERS:
        raise ModelLoadError(
            f"model {entry.id!r}: {source} is a diffusers folder, which already stores "
            f"safetensors weights; there is nothing to convert."
        )
    target = converted_safetensors_path(source)
    if target.exists() and is_up_to_date(target, source):
        say(f"{target} is up to date ({_size(target)}): nothing to do.")
        return target
    if not source.is_file():
        raise ModelLoadError(f"model {entry.id!r}: {source} does not exist (or is not a file).")

    started = time.perf_counter()
    state_dict = read_ckpt_state_dict(entry, source, trust_pickle=trust_pickle, say=say)
    problem = checkpoint_layout(list(state_dict)).problem
    if problem:
        say(f"warning: {source} {problem} Converting it anyway.")
    write_safetensors(state_dict, target, metadata={"converted_from": source.name})
    say(
        f"wrote {target} ({_size(target)}, {len(state_dict)} tensors) in "
        f"{time.perf_counter() - started:.1f} s; it is loaded instead of {source.name} from now on"
    )
    return target


def read_ckpt_state_dict(
    entry: ModelEntry, source: Path, *, trust_pickle: bool, say: Report = print
) -> dict[str, torch.Tensor]:
    """The tensors of a `.ckpt`'s state dict. Refuses pickled objects unless `trust_pickle`."""
    unsafe = unsafe_pickle_globals(source)
    if unsafe and not trust_pickle:
        raise ModelLoadError(
            f"model {entry.id!r}: {source} contains pickled Python objects besides the weights "
            f"({', '.join(unsafe)}); reading it can run code from the file. If you trust where "
            f"it came from, run again with --trust-pickle: "
            f"`python -m inference convert {entry.id} --trust-pickle`."
        )
    mmap = is_zip_checkpoint(source)
    try:
        if unsafe:
            say(
                f"--trust-pickle: reading {source.name} with weights_only=False (it pickles "
                f"{', '.join(unsafe)}); only its tensors are kept."
            )
            checkpoint = torch.load(
                source,
                map_location="cpu",
                weights_only=False,
                mmap=mmap,
                pickle_module=_TOLERANT_PICKLE,
            )
        else:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise ModelLoadError(
            f"model {entry.id!r}: could not read {source}: {type(exc).__name__}: {exc}"
        ) from exc

    # Same unwrapping as diffusers' single-file loader.
    while isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ModelLoadError(
            f"model {entry.id!r}: {source} holds a {type(checkpoint).__name__}, not a state dict."
        )
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    dropped = sorted(str(k) for k in checkpoint if k not in tensors)
    if dropped:
        say(f"dropped {len(dropped)} non-tensor entries: {', '.join(dropped[:5])}")
    if not tensors:
        raise ModelLoadError(f"model {entry.id!r}: {source} has no tensors in its state dict.")
    return tensors


def write_safetensors(
    state_dict: dict[str, torch.Tensor], target: Path, metadata: dict[str, str] | None = None
) -> None:
    """Save atomically; tensors made contiguous and given their own storage where needed (a
    `.ckpt` may hold views or tensors sharing storage, which safetensors refuses)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        tensor = value.detach().to("cpu")
        storage = tensor.untyped_storage()
        if (
            not tensor.is_contiguous()
            or storage.data_ptr() in seen
            or storage.nbytes() != tensor.nbytes
        ):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    partial = target.with_name(target.name + ".partial")
    try:
        save_file(tensors, partial, metadata={"format": "pt", **(metadata or {})})
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


class _Inert:
    """Stands in for a pickled class whose module is not installed; keeps nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ModuleNotFoundError, AttributeError):
            return type(name, (_Inert,), {"__module__": f"missing.{module}"})


_TOLERANT_PICKLE = types.SimpleNamespace(
    __name__="tolerant_pickle", Unpickler=_TolerantUnpickler, load=pickle.load
)


# ---------------------------------------------------------------------------------------------
# single file -> diffusers folder


def _to_diffusers(
    entry: ModelEntry,
    source: Path,
    fmt: ModelFormat,
    trust_pickle: bool,
    base_dir: Path,
    say: Report,
) -> Path:
    if fmt is ModelFormat.DIFFUSERS:
        say(f"{source} is already a diffusers folder: nothing to convert.")
        return source
    target = converted_diffusers_path(source)
    if target.exists() and is_up_to_date(target, source):
        say(f"{target} is up to date ({_size(target)}): nothing to do.")
        return target

    weights, weights_fmt = source, fmt
    if fmt is ModelFormat.CKPT:
        copy = converted_safetensors_path(source)
        if copy.exists() and is_up_to_date(copy, source):
            weights, weights_fmt = copy, ModelFormat.SAFETENSORS
        elif source.is_file() and unsafe_pickle_globals(source):
            # Goes through the (refusing unless trusted) safetensors conversion first.
            weights = _to_safetensors(entry, source, fmt, trust_pickle, say)
            weights_fmt = ModelFormat.SAFETENSORS

    started = time.perf_counter()
    pipe = load_from(entry, weights, weights_fmt, base_dir=base_dir)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        pipe.save_pretrained(partial, safe_serialization=True)
        _keep_tokenizer_files(entry, partial, base_dir)
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
        (target / "model_index.json").touch()  # the freshness marker (see is_up_to_date)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    say(
        f"wrote {target}/ ({_size(target)}) from {weights.name} in "
        f"{time.perf_counter() - started:.1f} s; it is loaded instead of {source.name} from now on"
    )
    return target


def _keep_tokenizer_files(entry: ModelEntry, folder: Path, base_dir: Path) -> None:
    """The tokenizers exactly as loading had them: transformers 5.x saves a tokenizer as one
    tokenizer.json and drops `split_special_tokens`, which SD 2.x's and SDXL's OpenCLIP
    tokenizers need (a typed `!` is text there, not padding; see tools/make_model_configs.py)."""
    architecture = folder_architecture(folder) or Architecture.SD1
    config_dir = single_file_config_dir(entry, base_dir, architecture)
    for name in ("tokenizer", "tokenizer_2"):
        if (folder / name).is_dir() and (config_dir / name).is_dir():
            shutil.rmtree(folder / name)
            shutil.copytree(config_dir / name, folder / name)


# ---------------------------------------------------------------------------------------------
# CLI


def _size(path: Path) -> str:
    total: float
    if path.is_dir():
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    else:
        total = path.stat().st_size
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if total < 1024 or unit == "TiB":
            break
        total /= 1024
    return f"{total:.0f} {unit}" if unit == "bytes" else f"{total:.2f} {unit}"


def main(argv: list[str], config: Config, base_dir: Path) -> int:
    """`python -m inference convert ...`; `argv` is what follows `convert`."""
    parser = argparse.ArgumentParser(
        prog="python -m inference convert",
        description="Convert a configured model once, next to the original, into a format "
        "that loads safely and faster (the worker then loads the copy).",
    )
    parser.add_argument("model_id", help="the model's id in the config file")
    parser.add_argument(
        "--to",
        choices=["safetensors", "diffusers"],
        default="safetensors",
        help="safetensors: <stem>.safetensors from a .ckpt (default); "
        "diffusers: a <stem>.diffusers/ folder from a .ckpt or .safetensors",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read a .ckpt that pickles Python objects (runs torch.load with weights_only=False: "
        "only for files from a source you trust)",
    )
    args = parser.parse_args(argv)
    try:
        entry = config.model(args.model_id)
    except KeyError:
        known = ", ".join(m.id for m in config.models)
        print(f"unknown model {args.model_id!r}; configured models: {known}", file=sys.stderr)
        return 2
    try:
        convert(entry, base_dir=base_dir, trust_pickle=args.trust_pickle, to=args.to)
    except ModelLoadError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0
