"""Model loading: a `ModelEntry` from config.toml -> a diffusers pipeline on the CPU:
`StableDiffusionPipeline` for SD 1.x and SD 2.x, `StableDiffusionXLPipeline` for SDXL.

The architecture is the entry's `base`, or (`base = "auto"`) what the file says: a single file's
tensor names (`inference.models.files.checkpoint_layout`), a folder's model_index.json. A
declared `base` that the file contradicts is refused with a message naming both.

Three on-disk formats (`ModelEntry.resolved_format()`):

* a diffusers folder (`model_index.json` + component subfolders);
* a single `.safetensors` file in the CompVis/LDM key layout, as models are usually shared;
* a single `.ckpt` (`.pt`, `.pth`): a `torch.save` pickle. It is only ever read with
  `weights_only=True`. Training checkpoints often pickle Python objects besides the weights
  (hyper-parameter namespaces, Lightning callbacks); those are refused with a message that says
  to convert the file once (`python -m inference convert <id> --trust-pickle`).

Single files are assembled with the component configs shipped for their family
(`inference/sd1_config`, `sd2_config`, `sdxl_config`; built by tools/make_sd1_config.py and
tools/make_model_configs.py) or the entry's `single_file_config`, so nothing is fetched from the
Hugging Face hub: every call passes `local_files_only=True` and local paths only. The entry's
`vae` (a diffusers folder or a single file) replaces the checkpoint's VAE, `prediction` the
family's prediction type, `upcast_attention` the UNet's setting.

A converted copy beside a single file is preferred when it is at least as new as the file:
`<stem>.diffusers/` (fastest to load), then, for a `.ckpt`, `<stem>.safetensors`. A copy older
than its source is ignored (and said so in the log): it was made from a previous version.

The pipeline comes back on the CPU in float32 with the progress bar off and its family's
scheduler: SD 1.x DDIM with the pony-diffusion settings; SD 2.x DDIM with v-prediction (the 768 px
SD 2.1 model's, unless `prediction` says otherwise); SDXL Euler discrete, `leading` spacing, as
diffusers ships SDXL base. Moving it to the GPU / half precision is the caller's job.
"""

from __future__ import annotations

import logging
import pickle
import re
import time
from pathlib import Path

import torch

# From where each is defined: diffusers' top level shows type checkers stand-in classes.
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from inference.drawing.schedulers import SEED_DDIM_CONFIG, make_scheduler
from inference.models.files import (
    CONVERTED_DIFFUSERS_SUFFIX,
    architecture_name,
    checkpoint_layout,
    converted_copy,
    converted_safetensors_path,
    declared_mismatch,
    folder_architecture,
    is_zip_checkpoint,
    single_file_layout,
)
from ponybot_core.config import (
    Architecture,
    ModelEntry,
    ModelFormat,
    PredictionType,
    Sampler,
    resolve_path,
)

log = logging.getLogger(__name__)

# inference/sd1_config etc. (package data of `inference`, not of this sub-package).
SD1_CONFIG_DIR = Path(__file__).resolve().parent.parent / "sd1_config"
SD2_CONFIG_DIR = Path(__file__).resolve().parent.parent / "sd2_config"
SDXL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "sdxl_config"
SHIPPED_CONFIG_DIRS = {
    Architecture.SD1: SD1_CONFIG_DIR,
    Architecture.SD2: SD2_CONFIG_DIR,
    Architecture.SDXL: SDXL_CONFIG_DIR,
}
# What loading returns; `isinstance(pipe, StableDiffusionXLPipeline)` tells the families apart.
Pipeline = StableDiffusionPipeline | StableDiffusionXLPipeline
# Components with weights, per pipeline (SDXL adds the second text tower).
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
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


def load_pipeline(entry: ModelEntry, *, base_dir: Path) -> Pipeline:
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


def load_from(entry: ModelEntry, source: Path, fmt: ModelFormat, *, base_dir: Path) -> Pipeline:
    """Load exactly `source` as `fmt` (no converted-copy lookup); see `load_pipeline`."""
    started = time.perf_counter()
    if fmt is ModelFormat.DIFFUSERS:
        _check_diffusers_folder(entry, source)
        architecture = _resolve(entry, source, folder_architecture(source))
        cls = _pipeline_class(architecture)
        vae = _override_vae(entry, architecture, base_dir)
        pipe = _call_diffusers(
            entry,
            source,
            lambda: cls.from_pretrained(
                str(source), variant=_weights_variant(source),
                **_common_kwargs(architecture, vae)
            ),
        )
    else:
        _check_single_file(entry, source, fmt)
        layout = single_file_layout(source, fmt)
        architecture = _resolve(entry, source, layout.architecture if layout else None)
        if layout is not None and not layout.has_vae and entry.vae is None:
            raise ModelLoadError(
                f"model {entry.id!r}: {source} has no VAE weights (first_stage_model.*); set "
                f"`vae` for this model to a VAE file or folder ({_VAE_HINT[architecture]})."
            )
        config_dir = single_file_config_dir(entry, base_dir, architecture)
        cls = _pipeline_class(architecture)
        vae = _override_vae(entry, architecture, base_dir)
        pipe = _call_diffusers(
            entry,
            source,
            lambda: cls.from_single_file(
                str(source), config=str(config_dir), **_common_kwargs(architecture, vae)
            ),
        )
    _finish(entry, source, pipe, architecture)
    log.info("model %r: loaded %s (%s) in %.1f s", entry.id, source,
             architecture_name(architecture), time.perf_counter() - started)
    return pipe


_VAE_HINT = {
    Architecture.SD1: "the SD 1.x VAE, e.g. vae-ft-mse-840000-ema-pruned.safetensors",
    Architecture.SD2: "the SD 1.x/2.x VAE, e.g. vae-ft-mse-840000-ema-pruned.safetensors",
    Architecture.SDXL: "SDXL's VAE; madebyollin/sdxl-vae-fp16-fix also decodes in half precision",
}


def _resolve(entry: ModelEntry, source: Path, detected: Architecture | None) -> Architecture:
    mismatch = declared_mismatch(entry.base, detected)
    if mismatch:
        raise ModelLoadError(f"model {entry.id!r}: {source} {mismatch}.")
    if entry.base is not Architecture.AUTO:
        return entry.base
    return detected or Architecture.SD1


def _pipeline_class(architecture: Architecture) -> type[Pipeline]:
    if architecture is Architecture.SDXL:
        return StableDiffusionXLPipeline
    return StableDiffusionPipeline


def _common_kwargs(architecture: Architecture, vae: AutoencoderKL | None) -> dict:
    kwargs: dict = {"local_files_only": True, "dtype": torch.float32}
    if architecture is Architecture.SDXL:
        # No invisible watermark: its package is optional, and it alters every picture.
        kwargs["add_watermarker"] = False
    else:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if vae is not None:
        kwargs["vae"] = vae
    return kwargs


def _override_vae(entry: ModelEntry, architecture: Architecture,
                  base_dir: Path) -> AutoencoderKL | None:
    """The entry's `vae`: a diffusers VAE folder (config.json + weights, or a pipeline folder's
    vae/), or a single file in the LDM layout, configured like its family's VAE."""
    if entry.vae is None:
        return None
    path = resolve_path(entry.vae, base_dir)
    if not path.exists():
        raise ModelLoadError(
            f"model {entry.id!r}: its vae {path} does not exist (relative paths are relative to "
            f"the config file's folder). Put the VAE there or remove `vae`."
        )
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"model {entry.id!r}: its vae {path} is a folder without config.json: not a "
                f"diffusers VAE folder."
            )
        load = lambda: AutoencoderKL.from_pretrained(  # noqa: E731
            str(folder), local_files_only=True, torch_dtype=torch.float32)
    else:
        # Configured like the checkpoint's own VAE (the family's, or the entry's configs).
        config_dir = single_file_config_dir(entry, base_dir, architecture)
        load = lambda: AutoencoderKL.from_single_file(  # noqa: E731
            str(path), config=str(config_dir), subfolder="vae", local_files_only=True,
            torch_dtype=torch.float32)
    vae = _call_diffusers(entry, path, load)
    if not isinstance(vae, AutoencoderKL):
        raise ModelLoadError(f"model {entry.id!r}: its vae {path} is not an AutoencoderKL.")
    return vae


def _call_diffusers(entry: ModelEntry, source: Path, load):
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


def single_file_config_dir(entry: ModelEntry, base_dir: Path, architecture: Architecture) -> Path:
    """The component configs and tokenizers a single file of `architecture` is assembled with:
    the entry's `single_file_config`, else the folder shipped for the family."""
    if entry.single_file_config is None:
        config_dir = SHIPPED_CONFIG_DIRS[architecture]
    else:
        config_dir = resolve_path(entry.single_file_config, base_dir)
    if not (config_dir / "model_index.json").is_file():
        raise ModelLoadError(
            f"model {entry.id!r}: single_file_config {config_dir} is not a diffusers config "
            f"folder (no model_index.json). Remove `single_file_config` to use the shipped "
            f"{architecture_name(architecture)} configs, or point it at a folder laid out like "
            f"{SHIPPED_CONFIG_DIRS[architecture].relative_to(SD1_CONFIG_DIR.parent.parent)}."
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
    what = checkpoint_layout(keys).problem
    if what:
        raise ModelLoadError(f"model {entry.id!r}: {path} {what}")


def _finish(entry: ModelEntry, source: Path, pipe: Pipeline, architecture: Architecture) -> None:
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is None:
            if name == "text_encoder_2" and architecture is not Architecture.SDXL:
                continue
            raise ModelLoadError(f"model {entry.id!r}: {source} has no {name}.")
        empty = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if empty:
            raise ModelLoadError(
                f"model {entry.id!r}: {source} has no weights for {len(empty)} {name} tensors "
                f"(e.g. {', '.join(empty[:3])}). Is it a full "
                f"{architecture_name(architecture)} checkpoint?"
            )
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in module.parameters()):
            module.to(device="cpu", dtype=torch.float32)  # diffusers warns even when a no-op
        module.eval()
    if entry.upcast_attention is not None:
        _set_upcast_attention(pipe, entry.upcast_attention)
    if architecture is Architecture.SD1:
        _ensure_seed_scheduler(entry, pipe)
    if entry.prediction is not None:
        _set_prediction(entry, pipe, entry.prediction)
    pipe.set_progress_bar_config(disable=True)


def _set_upcast_attention(pipe: Pipeline, upcast: bool) -> None:
    """The entry's `upcast_attention` over the config's: diffusers' Attention reads the flag
    on each call (its classic processors compute the scores in float32 when set; SDPA's fused
    kernels accumulate in float32 anyway, as xformers does, which is what the V5 card's
    "--xformers or --no-half" asks for)."""
    for module in pipe.unet.modules():
        if isinstance(module, Attention):
            module.upcast_attention = upcast
    pipe.unet.register_to_config(upcast_attention=upcast)


def _set_prediction(entry: ModelEntry, pipe: Pipeline, prediction: PredictionType) -> None:
    if pipe.scheduler.config.get("prediction_type") == prediction.value:
        return
    log.info("model %r: prediction type %s (from its config entry)", entry.id, prediction.value)
    pipe.scheduler = type(pipe.scheduler).from_config(
        pipe.scheduler.config, prediction_type=prediction.value)


def has_seed_scheduler(scheduler: object) -> bool:
    """`scheduler` is DDIM with the pony-diffusion settings (and nothing else changed)."""
    # Exactly DDIM (a subclass may walk differently); isinstance is what a type checker reads.
    if not isinstance(scheduler, DDIMScheduler) or type(scheduler) is not DDIMScheduler:
        return False
    wanted = make_scheduler(SEED_DDIM_CONFIG, Sampler.DDIM).config
    have = scheduler.config
    return all(have.get(k) == v for k, v in wanted.items() if not k.startswith("_"))


def _ensure_seed_scheduler(entry: ModelEntry, pipe: Pipeline) -> None:
    if has_seed_scheduler(pipe.scheduler):
        return
    log.info(
        "model %r: replacing its %s (%s) with DDIM on the SD 1.x schedule",
        entry.id,
        type(pipe.scheduler).__name__,
        {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")},
    )
    pipe.scheduler = make_scheduler(SEED_DDIM_CONFIG, Sampler.DDIM)
