"""Model loading: a `ModelEntry` from config.toml -> a `StableDiffusionPipeline` on the CPU.

Three on-disk formats (`ModelEntry.resolved_format()`):

* a diffusers folder (`model_index.json` + component subfolders);
* a single `.safetensors` file in the CompVis/LDM key layout, as models are usually shared;
* a single `.ckpt` (`.pt`, `.pth`): a `torch.save` pickle. It is only ever read with
  `weights_only=True`. Training checkpoints often pickle Python objects besides the weights
  (hyper-parameter namespaces, Lightning callbacks); those are refused with a message that says
  to convert the file once (`python -m inference convert <id> --trust-pickle`).

Single files are assembled with the SD 1.x component configs shipped in `inference/sd1_config`
(or the entry's `single_file_config`), so nothing is fetched from the Hugging Face hub: every
call passes `local_files_only=True` and local paths only.

A converted copy beside a single file is preferred when it is at least as new as the file:
`<stem>.diffusers/` (fastest to load), then, for a `.ckpt`, `<stem>.safetensors`. A copy older
than its source is ignored (and said so in the log): it was made from a previous version.

The pipeline comes back on the CPU in float32 with the progress bar off and a DDIM scheduler
with the pony-diffusion settings; moving it to the GPU / half precision is the caller's job.
"""

from __future__ import annotations

import logging
import pickle
import re
import time
from pathlib import Path

import torch

# From where each is defined: diffusers' top level shows type checkers stand-in classes.
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from inference.drawing.schedulers import SEED_DDIM_CONFIG, make_scheduler
from inference.models.files import (
    CONVERTED_DIFFUSERS_SUFFIX,
    converted_copy,
    converted_safetensors_path,
    is_zip_checkpoint,
    sd1_layout_problem,
)
from ponybot_core.config import ModelEntry, ModelFormat, Sampler, resolve_path

log = logging.getLogger(__name__)

# inference/sd1_config (package data of `inference`, not of this sub-package).
SD1_CONFIG_DIR = Path(__file__).resolve().parent.parent / "sd1_config"
_COMPONENTS = ("unet", "vae", "text_encoder")
_MAX_CAUSE_CHARS = 1500


class ModelLoadError(Exception):
    """A model cannot be loaded. The message is shown to admins as is: it says what is wrong
    and what to do about it."""


# ---------------------------------------------------------------------------------------------
# Pickle safety.


def unsafe_pickle_globals(path: Path) -> list[str]:
    """Python objects (as `module.name`) pickled in a `torch.save` file that `weights_only`
    loading would refuse; `[]` for a weights-only checkpoint. Nothing is unpickled.

    Raises ModelLoadError if the file is not a readable PyTorch checkpoint.
    """
    path = Path(path)
    if is_zip_checkpoint(path):
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(
                f"{path} is not a readable PyTorch checkpoint (truncated or corrupt download?): "
                f"{_short(exc)}"
            ) from exc
    # Pre-1.6 (non-zip) format: no static scan; a weights_only load names the first offender.
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            return sorted(set(found))
        raise ModelLoadError(
            f"{path} is not a PyTorch checkpoint (truncated or corrupt download, or another "
            f"format under a .ckpt name?): {_short(exc)}"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable PyTorch checkpoint: {_short(exc)}") from exc
    return []


def _refuse_unsafe_pickle(entry: ModelEntry, path: Path) -> None:
    names = unsafe_pickle_globals(path)
    if names:
        raise ModelLoadError(
            f"model {entry.id!r}: {path} contains pickled Python objects besides the weights "
            f"({', '.join(names)}). Unpickling them could run arbitrary code, so the file is not "
            f"loaded. If you trust where it came from, convert it once: "
            f"`python -m inference convert {entry.id} --trust-pickle` writes "
            f"{converted_safetensors_path(path).name} (weights only) next to it, and that copy is "
            f"loaded from then on."
        )


# ---------------------------------------------------------------------------------------------
# Loading.


def load_pipeline(entry: ModelEntry, *, base_dir: Path) -> StableDiffusionPipeline:
    """Load `entry` (paths relative to `base_dir`, the config file's folder) on the CPU, float32."""
    path = resolve_path(entry.path, base_dir)
    fmt = entry.resolved_format()
    source, source_fmt = path, fmt
    if fmt is not ModelFormat.DIFFUSERS:
        copy = converted_copy(path, fmt)
        if copy is not None:
            source = copy
            source_fmt = (
                ModelFormat.DIFFUSERS
                if copy.suffix == CONVERTED_DIFFUSERS_SUFFIX
                else ModelFormat.SAFETENSORS
            )
            log.info("model %r: using the converted copy %s", entry.id, copy)
    return load_from(entry, source, source_fmt, base_dir=base_dir)


def load_from(
    entry: ModelEntry, source: Path, fmt: ModelFormat, *, base_dir: Path
) -> StableDiffusionPipeline:
    """Load exactly `source` as `fmt` (no converted-copy lookup); see `load_pipeline`."""
    started = time.perf_counter()
    if fmt is ModelFormat.DIFFUSERS:
        _check_diffusers_folder(entry, source)
        pipe = _call_diffusers(
            entry,
            source,
            lambda: StableDiffusionPipeline.from_pretrained(
                str(source), variant=_weights_variant(source), **_common_kwargs()
            ),
        )
    else:
        config_dir = _single_file_config(entry, base_dir)
        _check_single_file(entry, source, fmt)
        pipe = _call_diffusers(
            entry,
            source,
            lambda: StableDiffusionPipeline.from_single_file(
                str(source), config=str(config_dir), **_common_kwargs()
            ),
        )
    _finish(entry, source, pipe)
    log.info("model %r: loaded %s in %.1f s", entry.id, source, time.perf_counter() - started)
    return pipe


def _common_kwargs() -> dict:
    return {
        "local_files_only": True,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
        "dtype": torch.float32,
    }


def _call_diffusers(entry: ModelEntry, source: Path, load) -> StableDiffusionPipeline:
    try:
        return load()
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"model {entry.id!r}: could not load {source}: {type(exc).__name__}: {_short(exc)}"
        ) from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if len(text) <= _MAX_CAUSE_CHARS else text[:_MAX_CAUSE_CHARS] + " [...]"


def _missing(entry: ModelEntry, path: Path, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"model {entry.id!r}: {what} {path} does not exist (relative paths in the config are "
        f"relative to the config file's folder). Fix `path` for this model or put the file there."
    )


def _check_diffusers_folder(entry: ModelEntry, folder: Path) -> None:
    if not folder.exists():
        raise _missing(entry, folder, "diffusers folder")
    if not folder.is_dir():
        raise ModelLoadError(
            f"model {entry.id!r}: {folder} is a file, but the model's format is 'diffusers' (a "
            f"folder). Single files must end in .ckpt/.pt/.pth or .safetensors, or set `format`."
        )
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"model {entry.id!r}: {folder} has no model_index.json, so it is not a diffusers "
            f"pipeline folder. Point `path` at the folder that contains model_index.json."
        )


def _weights_variant(folder: Path) -> str | None:
    """`"fp16"` for folders that only hold `*.fp16.*` weights (saved with `variant="fp16"`)."""
    unet = folder / "unet"
    if not unet.is_dir():
        return None
    names = [p.name for p in unet.iterdir() if p.suffix in (".safetensors", ".bin")]
    plain = [n for n in names if n.count(".") == 1]
    if not plain and any(".fp16." in n for n in names):
        return "fp16"
    return None


def _single_file_config(entry: ModelEntry, base_dir: Path) -> Path:
    if entry.single_file_config is None:
        config_dir = SD1_CONFIG_DIR
    else:
        config_dir = resolve_path(entry.single_file_config, base_dir)
    if not (config_dir / "model_index.json").is_file():
        raise ModelLoadError(
            f"model {entry.id!r}: single_file_config {config_dir} is not a diffusers config "
            f"folder (no model_index.json). Remove `single_file_config` to use the shipped SD 1.x "
            f"configs, or point it at a folder laid out like inference/sd1_config."
        )
    return config_dir


def _check_single_file(entry: ModelEntry, path: Path, fmt: ModelFormat) -> None:
    if not path.exists():
        raise _missing(entry, path, "checkpoint")
    if not path.is_file():
        raise ModelLoadError(
            f"model {entry.id!r}: {path} is a folder, but the model's format is {fmt.value!r} (a "
            f"single file). For a diffusers folder set `format = \"diffusers\"`."
        )
    if fmt is ModelFormat.CKPT:
        _refuse_unsafe_pickle(entry, path)
    elif fmt is ModelFormat.SAFETENSORS:
        _check_safetensors_keys(entry, path)


def _check_safetensors_keys(entry: ModelEntry, path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
    except Exception as exc:
        raise ModelLoadError(
            f"model {entry.id!r}: {path} is not a readable safetensors file (truncated or corrupt "
            f"download?): {_short(exc)}"
        ) from exc
    what = sd1_layout_problem(keys)
    if what:
        raise ModelLoadError(f"model {entry.id!r}: {path} {what}")


def _finish(entry: ModelEntry, source: Path, pipe: StableDiffusionPipeline) -> None:
    for name in _COMPONENTS:
        module = getattr(pipe, name, None)
        if module is None:
            raise ModelLoadError(f"model {entry.id!r}: {source} has no {name}.")
        empty = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if empty:
            raise ModelLoadError(
                f"model {entry.id!r}: {source} has no weights for {len(empty)} {name} tensors "
                f"(e.g. {', '.join(empty[:3])}). Is it a full SD 1.x checkpoint?"
            )
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in module.parameters()):
            module.to(device="cpu", dtype=torch.float32)  # diffusers warns even when a no-op
        module.eval()
    _ensure_seed_scheduler(entry, pipe)
    pipe.set_progress_bar_config(disable=True)


def has_seed_scheduler(scheduler: object) -> bool:
    """`scheduler` is DDIM with the pony-diffusion settings (and nothing else changed)."""
    # Exactly DDIM (a subclass may walk differently); isinstance is what a type checker reads.
    if not isinstance(scheduler, DDIMScheduler) or type(scheduler) is not DDIMScheduler:
        return False
    wanted = make_scheduler(SEED_DDIM_CONFIG, Sampler.DDIM).config
    have = scheduler.config
    return all(have.get(k) == v for k, v in wanted.items() if not k.startswith("_"))


def _ensure_seed_scheduler(entry: ModelEntry, pipe: StableDiffusionPipeline) -> None:
    if has_seed_scheduler(pipe.scheduler):
        return
    log.info(
        "model %r: replacing its %s (%s) with DDIM on the SD 1.x schedule",
        entry.id,
        type(pipe.scheduler).__name__,
        {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")},
    )
    pipe.scheduler = make_scheduler(SEED_DDIM_CONFIG, Sampler.DDIM)
