"""Tiny, randomly initialised, deterministic SD 1.x models, built offline for tests.

The tiny pipeline has the real SD 1.x *shape* (a 4-block UNet with cross-attention in the
first three down blocks, an 8x VAE with 4 latent channels and scaling factor 0.18215, a CLIP
text encoder with the real 49408-token vocabulary and 77 positions, the DDIM seed scheduler,
the real CLIP tokenizer) at a size that samples a 64x64 image in a fraction of a second on a
CPU. It can be written as a diffusers folder or, like the checkpoints people share, as a single
`.ckpt` / `.safetensors` in the CompVis/LDM key layout.

Every parameter is perturbed with seeded noise after the default init, so no two norms share
weights: a loader that swapped two tensors would be caught by a bit-identical comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

# From where each is defined: diffusers' top level shows type checkers stand-in classes.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from inference.drawing.schedulers import SEED_DDIM_CONFIG

SD1_CONFIG = Path(__file__).resolve().parent.parent / "inference" / "sd1_config"
SD1_TOKENIZER = SD1_CONFIG / "tokenizer"

TINY_UNET: dict[str, Any] = {
    "sample_size": 8,  # 64 px images / 8
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64, 128, 128),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
TINY_VAE: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    # diffusers' AutoencoderKL downsamples in every block but the last: 4 blocks = 8x, like SD.
    "block_out_channels": (32, 32, 64, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
TINY_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_CLIP_PREFIX = "cond_stage_model.transformer.text_model."


# ---------------------------------------------------------------------------------------------
# Diffusers folder.


def _perturb(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for _, param in sorted(module.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.add_(noise * 0.02)


def _random_modules(seed: int, *makers: Callable[[], Any]) -> list[Any]:
    """The modules `makers` build, in order, from `seed`'s default init, then perturbed in the
    same order: same seed -> bit-identical weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = [make() for make in makers]
    generator = torch.Generator().manual_seed(seed)
    for module in modules:
        _perturb(module, generator)
        module.eval()
    return modules


def _sd_pipeline(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                 tokenizer: CLIPTokenizer, scheduler: Any) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        # diffusers' documented way to go without them; its annotations leave None out.
        safety_checker=None,  # type: ignore[arg-type]  # None: no safety checker
        feature_extractor=None,  # type: ignore[arg-type]  # None: nothing for it to feed
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The tiny pipeline in memory (float32, CPU). Same seed -> bit-identical weights."""
    unet, vae, text_encoder = _random_modules(
        seed,
        lambda: UNet2DConditionModel(**TINY_UNET),
        lambda: AutoencoderKL(**TINY_VAE),
        lambda: CLIPTextModel(CLIPTextConfig(**TINY_TEXT)),
    )
    pipe = _sd_pipeline(unet, vae, text_encoder,
                        CLIPTokenizer.from_pretrained(SD1_TOKENIZER, local_files_only=True),
                        DDIMScheduler.from_config(SEED_DDIM_CONFIG))
    return pipe


def _copy_tokenizer(out_dir: Path) -> None:
    # transformers 5.x would save a 3.6 MB tokenizer.json; ship the same BPE files as sd1_config.
    shutil.rmtree(out_dir / "tokenizer", ignore_errors=True)
    shutil.copytree(SD1_TOKENIZER, out_dir / "tokenizer")


def build_tiny_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny pipeline as a diffusers folder (safetensors weights); returns `out_dir`."""
    out_dir = Path(out_dir)
    pipe = tiny_pipeline(seed)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizer(out_dir)
    return out_dir


def tiny_single_file_config(out_dir: Path) -> Path:
    """The tiny pipeline's configs without weights: `config=` for tiny single files."""
    out_dir = Path(out_dir)
    pipe = tiny_pipeline(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_config(out_dir)
    pipe.unet.save_config(out_dir / "unet")
    pipe.vae.save_config(out_dir / "vae")
    pipe.scheduler.save_config(out_dir / "scheduler")
    pipe.text_encoder.config.save_pretrained(out_dir / "text_encoder")
    _copy_tokenizer(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# CompVis/LDM single file: the inverse of diffusers' single-file converters.

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _rename_first(rest: str, names: dict[str, str]) -> str:
    for new, old in names.items():
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def _unet_prefixes(config: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is a resnet) for every block of an SD-layout UNet."""
    per = config["layers_per_block"]
    blocks = len(config["block_out_channels"])
    prefixes = []
    for i in range(blocks):
        for j in range(per):
            ldm = f"input_blocks.{(per + 1) * i + j + 1}"
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"{ldm}.0.", True))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"{ldm}.1.", False))
        prefixes.append(
            (
                f"down_blocks.{i}.downsamplers.0.conv.",
                f"input_blocks.{(per + 1) * (i + 1)}.0.op.",
                False,
            )
        )
        for j in range(per + 1):
            ldm = f"output_blocks.{(per + 1) * i + j}"
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"{ldm}.0.", True))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"{ldm}.1.", False))
        upsampler_slot = 2 if config["up_block_types"][i].startswith("CrossAttn") else 1
        prefixes.append(
            (
                f"up_blocks.{i}.upsamplers.0.",
                f"output_blocks.{(per + 1) * i + per}.{upsampler_slot}.",
                False,
            )
        )
    prefixes += [
        ("mid_block.resnets.0.", "middle_block.0.", True),
        ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    return prefixes


def unet_to_ldm(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    # diffusers leaves its table unannotated (dicts of mixed dicts); these entries are names.
    unet_names = cast("dict[str, dict[str, str]]", DIFFUSERS_TO_LDM_MAPPING["unet"])
    layers = dict(unet_names["layers"])
    if config.get("addition_embed_type") == "text_time":  # SDXL's `label_emb`
        layers.update(unet_names["addition_embed_type"])
    prefixes = _unet_prefixes(config)
    out = {}
    for key, value in state_dict.items():
        if key in layers:
            out[layers[key]] = value
            continue
        for hf, ldm, is_resnet in prefixes:
            if key.startswith(hf):
                rest = key[len(hf) :]
                out[ldm + (_rename_first(rest, _UNET_RESNET) if is_resnet else rest)] = value
                break
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
    return out


def vae_to_ldm(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    layers = cast("dict[str, str]", DIFFUSERS_TO_LDM_MAPPING["vae"])  # as in unet_to_ldm
    blocks = len(config["block_out_channels"])
    per = config["layers_per_block"]
    prefixes: list[tuple[str, str]] = []
    for i in range(blocks):
        for j in range(per):
            prefixes.append(
                (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")
            )
        prefixes.append(
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
        )
        # The decoder's up blocks are numbered in reverse in LDM.
        for j in range(per + 1):
            prefixes.append(
                (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{blocks - 1 - i}.block.{j}.")
            )
        prefixes.append(
            (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample.")
        )
    for part in ("encoder", "decoder"):
        for k in range(2):
            prefixes.append((f"{part}.mid_block.resnets.{k}.", f"{part}.mid.block_{k + 1}."))
    out = {}
    for key, value in state_dict.items():
        if key in layers:
            out[layers[key]] = value
            continue
        attention = next(
            (p for p in ("encoder", "decoder") if key.startswith(f"{p}.mid_block.attentions.0.")),
            None,
        )
        if attention:
            rest = _rename_first(key[len(f"{attention}.mid_block.attentions.0.") :], _VAE_ATTENTION)
            if rest.endswith(".weight") and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # LDM: 1x1 convolutions
            out[f"{attention}.mid.attn_1.{rest}"] = value
            continue
        for hf, ldm in prefixes:
            if key.startswith(hf):
                rest = key[len(hf) :]
                out[ldm + rest.replace("conv_shortcut.", "nin_shortcut.")] = value
                break
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
    return out


def _clip_key(key: str) -> str:
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); older ones have it.
    return LDM_CLIP_PREFIX + key.removeprefix("text_model.")


def ldm_state_dict(
    pipeline_dir: Path, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The pipeline folder's weights under CompVis/LDM names, checked against diffusers' own
    LDM -> diffusers converters (the production loader's path) before being returned."""
    pipeline_dir = Path(pipeline_dir)
    unet_sd = load_file(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")
    vae_sd = load_file(pipeline_dir / "vae" / "diffusion_pytorch_model.safetensors")
    text_sd = load_file(pipeline_dir / "text_encoder" / "model.safetensors")
    unet_config = dict(UNet2DConditionModel.load_config(pipeline_dir / "unet"))
    vae_config = dict(AutoencoderKL.load_config(pipeline_dir / "vae"))

    ldm: dict[str, torch.Tensor] = {}
    ldm.update({LDM_UNET_PREFIX + k: v for k, v in unet_to_ldm(unet_sd, unet_config).items()})
    ldm.update({LDM_VAE_PREFIX + k: v for k, v in vae_to_ldm(vae_sd, vae_config).items()})
    ldm.update({_clip_key(k): v for k, v in text_sd.items()})

    # What real SD 1.x checkpoints also carry: the DDPM buffers and CLIP's position ids.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ldm["betas"] = betas.float()
    ldm["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    ldm[LDM_CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(77).unsqueeze(0)

    _check_round_trip(ldm, unet_sd, unet_config, vae_sd, vae_config)
    return {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone()
        for k, v in ldm.items()
    }


def _check_round_trip(ldm, unet_sd, unet_config, vae_sd, vae_config) -> None:
    for name, original, converted in (
        ("unet", unet_sd, convert_ldm_unet_checkpoint(ldm, unet_config)),
        ("vae", vae_sd, convert_ldm_vae_checkpoint(ldm, vae_config)),
    ):
        if set(original) != set(converted):
            raise AssertionError(
                f"{name}: LDM layout does not round-trip through diffusers: "
                f"missing {sorted(set(original) - set(converted))[:5]}, "
                f"extra {sorted(set(converted) - set(original))[:5]}"
            )
        bad = [k for k in original if not torch.equal(original[k], converted[k])]
        if bad:
            raise AssertionError(f"{name}: tensors differ after the round trip: {bad[:5]}")


def build_tiny_single_file(
    pipeline_dir: Path,
    out_path: Path,
    *,
    dtype: torch.dtype = torch.float32,
    global_step: int | None = 470000,
) -> Path:
    """Write the pipeline's weights as one CompVis-layout file: `.safetensors` or `.ckpt`
    (`torch.save({"state_dict": ..., "global_step": ...})`), chosen by `out_path`'s suffix."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = ldm_state_dict(pipeline_dir, dtype)
    if out_path.suffix == ".safetensors":
        save_file(state_dict, out_path, metadata={"format": "pt"})
    else:
        payload: dict[str, Any] = {"state_dict": state_dict}
        if global_step is not None:
            payload["global_step"] = global_step
        torch.save(payload, out_path)
    return out_path


def build_tiny_ckpt_with_unsafe_pickle(pipeline_dir: Path, out_path: Path) -> Path:
    """Like a real training checkpoint: the weights plus pickled Python objects (an
    `argparse.Namespace` of hyper-parameters), which `weights_only` loading refuses."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": ldm_state_dict(pipeline_dir),
        "global_step": 470000,
        "epoch": 3,
        "hyper_parameters": argparse.Namespace(base_learning_rate=1e-4, batch_size=4),
    }
    torch.save(payload, out_path)
    return out_path


# ---------------------------------------------------------------------------------------------
# SD 2.x (v-prediction, OpenCLIP text tower) and SDXL (two text towers, pooled embeddings,
# size/crop micro-conditioning), tiny and random like the SD 1.x one above. Shapes follow the
# real configs (stabilityai/stable-diffusion-2-1 and stable-diffusion-xl-base-1.0): linear
# transformer projections, per-block head counts, SD 2.1's upcast attention, SDXL's
# `text_time` added embedding fed by text_encoder_2's projection and six size numbers.

TINY_SD2_UNET: dict[str, Any] = {
    **TINY_UNET,
    "attention_head_dim": (2, 4, 8, 8),
    "use_linear_projection": True,
    "upcast_attention": True,
}
# OpenCLIP ViT-H as transformers writes it: gelu, no quick_gelu, pads with `!` (id 0). 23
# layers, as diffusers converts SD 2.x: the file's 24th (the penultimate-layer conditioning drops
# it) is skipped by name (`SD_2_TEXT_ENCODER_KEYS_TO_IGNORE` names `resblocks.23`), so a tiny
# tower must have the real depth for its single file to load the real way.
TINY_SD2_TEXT: dict[str, Any] = {**TINY_TEXT, "hidden_act": "gelu", "pad_token_id": 0,
                                 "num_hidden_layers": 23}
TINY_SDXL_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (2, 4, 4),
    "use_linear_projection": True,
    "cross_attention_dim": 32 + 48,  # text_encoder's 32 + text_encoder_2's 48, concatenated
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 48 + 6 * 8,  # pooled text + six size numbers
    "norm_num_groups": 32,
}
TINY_SDXL_VAE: dict[str, Any] = {**TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True}
TINY_SDXL_TEXT: dict[str, Any] = {**TINY_TEXT, "num_hidden_layers": 3}
# OpenCLIP bigG is wider than CLIP-L (1280 vs 768), and diffusers tells the two towers of an
# SDXL file apart by that width (`create_diffusers_clip_model_from_ldm`): equal tiny widths would
# load CLIP-L's weights into text_encoder_2.
TINY_SDXL_TEXT_2: dict[str, Any] = {**TINY_SD2_TEXT, "hidden_size": 48, "intermediate_size": 96,
                                    "projection_dim": 48, "num_hidden_layers": 3}
# The schedulers their hub repositories ship: SD 2.1 (768, v) DDIM with v-prediction; SDXL
# base Euler discrete, `leading` spacing. Both on the SD 1.x training schedule.
SD2_V_SCHEDULER: dict[str, Any] = {**SEED_DDIM_CONFIG, "prediction_type": "v_prediction"}
SDXL_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def _open_clip_tokenizer() -> CLIPTokenizer:
    # OpenCLIP's tokenizer is CLIP's BPE that pads with `!` instead of `<|endoftext|>` (and reads
    # a typed `!` as text): the shipped SD 2.x one (tools/make_model_configs.py).
    return CLIPTokenizer.from_pretrained(SD1_CONFIG.parent / "sd2_config" / "tokenizer",
                                         local_files_only=True)


def tiny_sd2_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny SD 2.x v-prediction pipeline (float32, CPU). Same seed -> same weights."""
    unet, vae, text_encoder = _random_modules(
        seed,
        lambda: UNet2DConditionModel(**TINY_SD2_UNET),
        lambda: AutoencoderKL(**TINY_VAE),
        lambda: CLIPTextModel(CLIPTextConfig(**TINY_SD2_TEXT)),
    )
    return _sd_pipeline(unet, vae, text_encoder, _open_clip_tokenizer(),
                        DDIMScheduler.from_config(SD2_V_SCHEDULER))


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL pipeline (float32, CPU). Same seed -> same weights."""
    unet, vae, text_encoder, text_encoder_2 = _random_modules(
        seed,
        lambda: UNet2DConditionModel(**TINY_SDXL_UNET),
        lambda: AutoencoderKL(**TINY_SDXL_VAE),
        lambda: CLIPTextModel(CLIPTextConfig(**TINY_SDXL_TEXT)),
        lambda: CLIPTextModelWithProjection(CLIPTextConfig(**TINY_SDXL_TEXT_2)),
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(SD1_TOKENIZER, local_files_only=True),
        tokenizer_2=_open_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# SD 2.x and SDXL on disk: diffusers folders, and single files in the layouts real checkpoints
# have (SD 2.1's LDM layout with OpenCLIP under `cond_stage_model.model.*`; SDXL's sgm layout with
# CLIP-L under `conditioner.embedders.0.transformer.*` and OpenCLIP bigG under
# `conditioner.embedders.1.model.*`). Each writer checks itself against diffusers' own
# LDM -> diffusers converters (what `from_single_file` runs) before returning.

SD2_CONFIG = SD1_CONFIG.parent / "sd2_config"
SDXL_CONFIG = SD1_CONFIG.parent / "sdxl_config"
LDM_OPEN_CLIP_SD2_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
# OpenCLIP's learned temperature, ln(1/0.07) at init (open_clip CLIP.logit_scale): unused by
# generation, present in real files.
_LOGIT_SCALE = 2.6592600345611572
TINY_ARCHITECTURES = ("sd1", "sd2", "sdxl")


def tiny_pipeline_for(architecture: str, seed: int = 0):
    """The tiny in-memory pipeline of `architecture` (sd1 | sd2 | sdxl)."""
    builders = {"sd1": tiny_pipeline, "sd2": tiny_sd2_pipeline, "sdxl": tiny_sdxl_pipeline}
    return builders[architecture](seed)


def _copy_tokenizers(architecture: str, out_dir: Path) -> None:
    # The shipped folders' BPE files (the tiny towers use the real vocabulary).
    source = {"sd1": SD1_CONFIG, "sd2": SD2_CONFIG, "sdxl": SDXL_CONFIG}[architecture]
    for name in ("tokenizer", "tokenizer_2"):
        if (source / name).is_dir():
            shutil.rmtree(out_dir / name, ignore_errors=True)
            shutil.copytree(source / name, out_dir / name)


def build_tiny_architecture_pipeline(architecture: str, out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny `architecture` pipeline as a diffusers folder; returns `out_dir`."""
    out_dir = Path(out_dir)
    tiny_pipeline_for(architecture, seed).save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizers(architecture, out_dir)
    return out_dir


def build_tiny_sd2_pipeline(out_dir: Path, seed: int = 0) -> Path:
    return build_tiny_architecture_pipeline("sd2", out_dir, seed)


def build_tiny_sdxl_pipeline(out_dir: Path, seed: int = 0) -> Path:
    return build_tiny_architecture_pipeline("sdxl", out_dir, seed)


def tiny_architecture_config(architecture: str, out_dir: Path) -> Path:
    """The tiny `architecture` pipeline's configs without weights: `single_file_config` for its
    tiny single files (the shipped folders describe the full-size networks)."""
    out_dir = Path(out_dir)
    pipe = tiny_pipeline_for(architecture, 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_config(out_dir)
    pipe.unet.save_config(out_dir / "unet")
    pipe.vae.save_config(out_dir / "vae")
    pipe.scheduler.save_config(out_dir / "scheduler")
    pipe.text_encoder.config.save_pretrained(out_dir / "text_encoder")
    if getattr(pipe, "text_encoder_2", None) is not None:
        pipe.text_encoder_2.config.save_pretrained(out_dir / "text_encoder_2")
    _copy_tokenizers(architecture, out_dir)
    return out_dir


def _flat(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 dropped CLIPTextModel's `text_model.` level (not ...WithProjection's).
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


_OPEN_CLIP_LAYER = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text tower's weights in OpenCLIP's layout (`transformer.resblocks.N`
    with one combined `in_proj` for q, k, v; `text_projection` as `x @ P`), under `prefix`: the
    inverse of diffusers' `convert_open_clip_checkpoint`."""
    flat = _flat(state_dict)
    out: dict[str, torch.Tensor] = {
        prefix + "token_embedding.weight": flat["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": flat["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": flat["final_layer_norm.weight"],
        prefix + "ln_final.bias": flat["final_layer_norm.bias"],
    }
    if "text_projection.weight" in flat:
        out[prefix + "text_projection"] = flat["text_projection.weight"].T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in flat if k.startswith("encoder.layers.")})
    for i in layers:
        hf, ldm = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{ldm}attn.in_proj_{kind}"] = torch.cat(
                [flat[f"{hf}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            for new, old in _OPEN_CLIP_LAYER.items():
                out[f"{ldm}{old}{kind}"] = flat[f"{hf}{new}{kind}"]
    return out


def _extra_open_clip_block(prefix: str, index: int, width: int,
                           generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random OpenCLIP resblock: SD 2.x files carry a 24th layer the model never runs."""
    shapes = {
        "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
        "ln_1.weight": (width,), "ln_1.bias": (width,), "ln_2.weight": (width,),
        "ln_2.bias": (width,), "mlp.c_fc.weight": (4 * width, width),
        "mlp.c_fc.bias": (4 * width,), "mlp.c_proj.weight": (width, 4 * width),
        "mlp.c_proj.bias": (width,),
    }  # fmt: skip
    return {f"{prefix}transformer.resblocks.{index}.{name}":
            torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}


def _ldm_schedule_buffers() -> dict[str, torch.Tensor]:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}


def _unet_vae_ldm(pipe) -> dict[str, torch.Tensor]:
    unet_config = dict(pipe.unet.config)
    vae_config = dict(pipe.vae.config)
    ldm = {LDM_UNET_PREFIX + k: v for k, v in
           unet_to_ldm(pipe.unet.state_dict(), unet_config).items()}
    ldm.update({LDM_VAE_PREFIX + k: v for k, v in
                vae_to_ldm(pipe.vae.state_dict(), vae_config).items()})
    _check_round_trip(ldm, pipe.unet.state_dict(), unet_config, pipe.vae.state_dict(),
                      vae_config)
    return ldm


def _check_text_round_trip(name: str, original: dict[str, torch.Tensor],
                           converted: dict[str, torch.Tensor]) -> None:
    original, converted = _flat(original), _flat(converted)
    converted.pop("embeddings.position_ids", None)
    original.pop("embeddings.position_ids", None)
    if set(original) != set(converted):
        raise AssertionError(
            f"{name}: layout does not round-trip through diffusers: missing "
            f"{sorted(set(original) - set(converted))[:5]}, extra "
            f"{sorted(set(converted) - set(original))[:5]}"
        )
    bad = [k for k in original if not torch.equal(original[k], converted[k])]
    if bad:
        raise AssertionError(f"{name}: tensors differ after the round trip: {bad[:5]}")


def sd2_ldm_state_dict(pipe: StableDiffusionPipeline, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny SD 2.x pipeline's weights as SD 2.1's own files hold them."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    text = pipe.text_encoder
    ldm = _unet_vae_ldm(pipe)
    ldm.update(open_clip_to_ldm(text.state_dict(), LDM_OPEN_CLIP_SD2_PREFIX))
    width = text.config.hidden_size
    generator = torch.Generator().manual_seed(seed + 23)
    ldm.update(_extra_open_clip_block(LDM_OPEN_CLIP_SD2_PREFIX, text.config.num_hidden_layers,
                                      width, generator))
    ldm[LDM_OPEN_CLIP_SD2_PREFIX + "text_projection"] = (
        torch.randn((width, width), generator=generator) * 0.02)
    ldm[LDM_OPEN_CLIP_SD2_PREFIX + "logit_scale"] = torch.tensor(_LOGIT_SCALE)
    ldm.update(_ldm_schedule_buffers())
    _check_text_round_trip(
        "text_encoder", text.state_dict(),
        convert_open_clip_checkpoint(text, ldm, prefix=LDM_OPEN_CLIP_SD2_PREFIX))
    return ldm


def sdxl_ldm_state_dict(pipe: StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    """A tiny SDXL pipeline's weights as sd_xl_base_1.0.safetensors (and Pony V6 XL) hold them."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )

    ldm = _unet_vae_ldm(pipe)
    clip_l = _flat(pipe.text_encoder.state_dict())
    ldm.update({SDXL_CLIP_L_PREFIX + k: v for k, v in clip_l.items()})
    ldm[SDXL_CLIP_L_PREFIX + "embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    ldm.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict(), SDXL_OPEN_CLIP_PREFIX))
    ldm[SDXL_OPEN_CLIP_PREFIX + "logit_scale"] = torch.tensor(_LOGIT_SCALE)
    _check_text_round_trip("text_encoder", pipe.text_encoder.state_dict(),
                           convert_ldm_clip_checkpoint(ldm))
    _check_text_round_trip(
        "text_encoder_2", pipe.text_encoder_2.state_dict(),
        convert_open_clip_checkpoint(pipe.text_encoder_2, ldm, prefix=SDXL_OPEN_CLIP_PREFIX))
    return ldm


def _load_tiny_folder(architecture: str, pipeline_dir: Path):
    cls = StableDiffusionXLPipeline if architecture == "sdxl" else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"local_files_only": True}
    if architecture != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return cls.from_pretrained(pipeline_dir, **kwargs)


def build_tiny_architecture_single_file(
    architecture: str, pipeline_dir: Path, out_path: Path, *, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a tiny pipeline folder (`build_tiny_architecture_pipeline`) as the one file real
    checkpoints of `architecture` are shared as: `.safetensors`, or a `.ckpt` holding
    `{"state_dict": ...}`, chosen by `out_path`'s suffix."""
    if architecture == "sd1":
        return build_tiny_single_file(pipeline_dir, out_path, dtype=dtype)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pipe = _load_tiny_folder(architecture, Path(pipeline_dir))
    state_dict = (sdxl_ldm_state_dict(pipe) if architecture == "sdxl"
                  else sd2_ldm_state_dict(pipe))
    state_dict = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone()
                  for k, v in state_dict.items()}
    if out_path.suffix == ".safetensors":
        save_file(state_dict, out_path, metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state_dict}, out_path)
    return out_path


def build_tiny_sd2_single_file(pipeline_dir: Path, out_path: Path, **kw: Any) -> Path:
    return build_tiny_architecture_single_file("sd2", pipeline_dir, out_path, **kw)


def build_tiny_sdxl_single_file(pipeline_dir: Path, out_path: Path, **kw: Any) -> Path:
    return build_tiny_architecture_single_file("sdxl", pipeline_dir, out_path, **kw)


# ---------------------------------------------------------------------------------------------
# The three pony models config.toml ships entries for, tiny and in their real shapes, under the
# file names those entries expect in models/.

# config.toml id -> (architecture, file name under models/).
PONY_MODEL_FILES: dict[str, tuple[str, str]] = {
    "v4": ("sd1", "pony-diffusion-v4.safetensors"),
    "v5": ("sd2", "ponyDiffusionV5_v55.safetensors"),
    "v6-xl": ("sdxl", "ponyDiffusionV6XL_v6StartWithThisOne.safetensors"),
}


def build_tiny_pony_models(root: Path, ids: tuple[str, ...] = tuple(PONY_MODEL_FILES)
                           ) -> dict[str, tuple[Path, Path]]:
    """Write `root/models/<file>` for each id (a tiny single file shaped like the real one) and
    the tiny config folder it loads with; returns id -> (file, single_file_config)."""
    root = Path(root)
    made: dict[str, tuple[Path, Path]] = {}
    for model_id in ids:
        architecture, name = PONY_MODEL_FILES[model_id]
        folder = build_tiny_architecture_pipeline(architecture, root / "tiny" / architecture)
        config_dir = root / "tiny" / f"{architecture}-config"
        config = (tiny_single_file_config(config_dir) if architecture == "sd1"
                  else tiny_architecture_config(architecture, config_dir))
        path = build_tiny_architecture_single_file(architecture, folder, root / "models" / name)
        made[model_id] = (path, config)
    return made
