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


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The tiny pipeline in memory (float32, CPU). Same seed -> bit-identical weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET)
        vae = AutoencoderKL(**TINY_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    generator = torch.Generator().manual_seed(seed)
    for module in (unet, vae, text_encoder):
        _perturb(module, generator)
        module.eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(SD1_TOKENIZER, local_files_only=True),
        unet=unet,
        scheduler=DDIMScheduler.from_config(SEED_DDIM_CONFIG),
        # diffusers' documented way to go without them; its annotations leave None out.
        safety_checker=None,  # type: ignore[arg-type]  # None: no safety checker
        feature_extractor=None,  # type: ignore[arg-type]  # None: nothing for it to feed
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
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
    layers = cast("dict[str, dict[str, str]]", DIFFUSERS_TO_LDM_MAPPING["unet"])["layers"]
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
# OpenCLIP ViT-H as transformers writes it: gelu, no quick_gelu, pads with `!` (id 0).
TINY_SD2_TEXT: dict[str, Any] = {**TINY_TEXT, "hidden_act": "gelu", "pad_token_id": 0,
                                 "num_hidden_layers": 3}
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
    "cross_attention_dim": 64,  # text_encoder's 32 + text_encoder_2's 32, concatenated
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,  # pooled text + six size numbers
    "norm_num_groups": 32,
}
TINY_SDXL_VAE: dict[str, Any] = {**TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True}
TINY_SDXL_TEXT: dict[str, Any] = {**TINY_TEXT, "num_hidden_layers": 3}
TINY_SDXL_TEXT_2: dict[str, Any] = {**TINY_SD2_TEXT}
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
    # OpenCLIP's tokenizer is CLIP's BPE that pads with `!` instead of `<|endoftext|>`.
    return CLIPTokenizer.from_pretrained(SD1_TOKENIZER, local_files_only=True, pad_token="!")


def tiny_sd2_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny SD 2.x v-prediction pipeline (float32, CPU). Same seed -> same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_SD2_UNET)
        vae = AutoencoderKL(**TINY_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_SD2_TEXT))
    generator = torch.Generator().manual_seed(seed)
    for module in (unet, vae, text_encoder):
        _perturb(module, generator)
        module.eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_open_clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler.from_config(SD2_V_SCHEDULER),
        safety_checker=None,  # type: ignore[arg-type]  # as in tiny_pipeline
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL pipeline (float32, CPU). Same seed -> same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_SDXL_UNET)
        vae = AutoencoderKL(**TINY_SDXL_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_SDXL_TEXT))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_SDXL_TEXT_2))
    generator = torch.Generator().manual_seed(seed)
    for module in (unet, vae, text_encoder, text_encoder_2):
        _perturb(module, generator)
        module.eval()
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
