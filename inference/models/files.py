"""Where a configured model's files are, and which of them loading uses.

Torch-free on purpose: the loader, the converter, the start-up inventory of every worker, and
`ponybot up` / `ponybot models` / `ponybot check` must all agree on these rules, and the last
three should not pay for importing torch to read a directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ponybot_core.config import ModelFormat

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


def sd1_layout_problem(keys: list[str]) -> str | None:
    """Why a single file's keys are not a full SD 1.x checkpoint (None if they look right)."""
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "is an SDXL checkpoint; only SD 1.x models are supported."
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "is an SD 2.x checkpoint (OpenCLIP text encoder); only SD 1.x models are supported."
    if any(k.startswith("lora_") for k in keys):
        return "is a LoRA, not a full model; it cannot be loaded as a model."
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        return (
            "has no UNet weights (model.diffusion_model.*): it is not a full SD 1.x checkpoint "
            "(a VAE, an embedding or a diffusers-layout file?)."
        )
    return None
