"""Generate inference/sd2_config and inference/sdxl_config: the SD 2.x and SDXL component configs
and tokenizers (no weights) shipped in the repo, as tools/make_sd1_config.py does for SD 1.x.

Single-file checkpoints carry weights only; `from_single_file(path, config=<folder>,
local_files_only=True)` takes the rest from these folders, so loading Pony Diffusion V5 (an SD 2.1
768 fine-tune) or V6 XL (an SDXL fine-tune) never asks the hub for `stabilityai/...`.

How each part is built (nothing is downloaded at run time; the values are copied below):

* unet/, vae/: diffusers' own `create_unet_diffusers_config_from_ldm` /
  `create_vae_diffusers_config_from_ldm`, fed the original yaml values:
  SD 2.x from Stability-AI/stablediffusion `configs/stable-diffusion/v2-inference-v.yaml` (768 px,
  `parameterization: "v"`, `num_head_channels: 64`, `use_linear_in_transformer`, `context_dim:
  1024`, `FrozenOpenCLIPEmbedder` with `layer: "penultimate"`); SDXL from Stability-AI/
  generative-models `configs/inference/sd_xl_base.yaml` (`adm_in_channels: 2816`,
  `transformer_depth: [1, 2, 10]`, `context_dim: 2048`, `scale_factor: 0.13025`).
  SD 2.x's UNet gets `upcast_attention = True`: diffusers' scripts/
  convert_original_stable_diffusion_to_diffusers.py documents `--upcast_attention` as
  "necessary when running stable diffusion 2.1", and Pony Diffusion V5's page asks for xformers
  or `--no-half` for the same fp16 attention overflow.
* text encoders: CLIP ViT-L/14 (SD 1.x's, SDXL's first) as in make_sd1_config; OpenCLIP ViT-H-14
  (SD 2.x) and ViT-bigG-14 (SDXL's second) from open_clip's `model_configs/ViT-H-14.json` /
  `ViT-bigG-14.json` `text_cfg` (width, heads, layers; GELU, LayerNorm eps 1e-5, MLP ratio 4).
  SD 2.x's tower has 23 layers, not ViT-H's 24: SD 2.x conditions on the penultimate layer
  (`layer: "penultimate"` above; ldm's FrozenOpenCLIPEmbedder runs `resblocks[:-1]`, then
  `ln_final`), and diffusers' converter drops the file's `resblocks.23` by name
  (`SD_2_TEXT_ENCODER_KEYS_TO_IGNORE` in diffusers/loaders/single_file_utils.py), so a 23-layer
  CLIPTextModel whose last hidden state goes through `final_layer_norm` is exactly that.
  SDXL's bigG keeps all 32 (the pipeline picks `hidden_states[-2]` itself) and its projection.
* tokenizers: the CLIP BPE (make_sd1_config's builder). OpenCLIP pads with id 0 (`!`) where
  OpenAI CLIP pads with `<|endoftext|>` (open_clip/tokenizer.py `tokenize`: a zero tensor filled
  with the tokens), so SD 2.x's tokenizer and SDXL's tokenizer_2 use `pad_token = "!"`.
* schedulers: SD 2.x: DDIM with v-prediction on the SD training schedule (v2-inference-v.yaml:
  `parameterization: "v"`, linear_start 0.00085, linear_end 0.012, 1000 steps); SDXL: Euler
  discrete with `leading` spacing, as diffusers ships it for stable-diffusion-xl-base-1.0.
* SDXL's VAE keeps AutoencoderKL's `force_upcast = True`: SDXL's VAE overflows in fp16, and the
  SDXL pipelines decode in float32 when it is set (see inference/models/device.py).

The CLIP BPE file ships in the open_clip_torch wheel (see tools/make_sd1_config.py):

    pip download --no-deps open_clip_torch -d /tmp/oc
    cd /tmp/oc && unzip -o open_clip_torch-*.whl 'open_clip/bpe_simple_vocab_16e6.txt.gz'
    python tools/make_model_configs.py --bpe /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz

It rewrites both folders and checks what it wrote (the full-size pipelines are instantiated on the
meta device from the written folders, so mismatched widths fail here, not at a user's first load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tools"))

from make_sd1_config import (  # noqa: E402  (needs the path above)
    CLIP_L_TEXT,
    DEFAULT_BPE,
    check_tokenizer,
    save_component_configs,
    write_tokenizer,
)

SD2_OUT = REPO_ROOT / "inference" / "sd2_config"
SDXL_OUT = REPO_ROOT / "inference" / "sdxl_config"

_VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}

# Stability-AI/stablediffusion configs/stable-diffusion/v2-inference-v.yaml (network shapes).
V2_INFERENCE_V: dict[str, Any] = {
    "model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "parameterization": "v",
            "linear_start": 0.00085,
            "linear_end": 0.0120,
            "timesteps": 1000,
            "image_size": 64,
            "channels": 4,
            "conditioning_key": "crossattn",
            "scale_factor": 0.18215,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "use_fp16": True,
                    "image_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_head_channels": 64,
                    "use_spatial_transformer": True,
                    "use_linear_in_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 1024,
                    "legacy": False,
                },
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.AutoencoderKL",
                "params": {"embed_dim": 4, "ddconfig": _VAE_DDCONFIG},
            },
            "cond_stage_config": {
                "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                "params": {"freeze": True, "layer": "penultimate"},
            },
        },
    }
}

# Stability-AI/generative-models configs/inference/sd_xl_base.yaml (network shapes).
SD_XL_BASE: dict[str, Any] = {
    "model": {
        "target": "sgm.models.diffusion.DiffusionEngine",
        "params": {
            "scale_factor": 0.13025,
            "disable_first_stage_autocast": True,
            "network_config": {
                "target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "adm_in_channels": 2816,
                    "num_classes": "sequential",
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4],
                    "num_head_channels": 64,
                    "use_linear_in_transformer": True,
                    "transformer_depth": [1, 2, 10],
                    "context_dim": 2048,
                },
            },
            "first_stage_config": {
                "target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper",
                "params": {"embed_dim": 4, "ddconfig": _VAE_DDCONFIG},
            },
        },
    }
}


def _open_clip_text(width: int, heads: int, layers: int, embed_dim: int) -> dict[str, Any]:
    """An OpenCLIP text tower (open_clip model_configs `text_cfg`) as a CLIPTextConfig."""
    return {
        "vocab_size": 49408,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "projection_dim": embed_dim,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "pad_token_id": 0,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }


# ViT-H-14: text width 1024, 16 heads, 24 layers, embed_dim 1024; SD 2.x uses 23 (see above).
OPEN_CLIP_H_TEXT = _open_clip_text(1024, 16, 23, 1024)
# ViT-bigG-14: text width 1280, 20 heads, 32 layers, embed_dim 1280.
OPEN_CLIP_BIGG_TEXT = _open_clip_text(1280, 20, 32, 1280)

SD2_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
}
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


def write_open_clip_tokenizer(bpe: Path, out: Path) -> None:
    """The CLIP BPE with OpenCLIP's padding (`!`, id 0), and `!` typed in a prompt read as text.

    Declaring `!` the pad token makes transformers match it as a special token in the text
    (`wow!!!` -> three `!` tokens), which open_clip never did: its SimpleTokenizer BPE-encodes
    every piece but its own `<start_of_text>` / `<end_of_text>` (open_clip/tokenizer.py), so
    `!!!` is one token there, as with CLIP-L. `split_special_tokens` makes transformers
    BPE-encode the text the same way while still padding with id 0."""
    write_tokenizer(bpe, out)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = out / name
        data = json.loads(path.read_text(encoding="utf-8"))
        data["pad_token"] = "!"
        if name == "tokenizer_config.json":
            data["split_special_tokens"] = True
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _text_config(values: dict[str, Any], architecture: str):
    import torch
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(**values, architectures=[architecture])
    config.dtype = torch.float32
    return config


def write_sd2(out: Path, bpe: Path) -> None:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        StableDiffusionPipeline,
    )
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    write_open_clip_tokenizer(bpe, out / "tokenizer")
    unet_config = create_unet_diffusers_config_from_ldm(
        V2_INFERENCE_V, checkpoint={}, image_size=768, upcast_attention=True
    )
    vae_config = create_vae_diffusers_config_from_ldm(V2_INFERENCE_V, checkpoint={},
                                                      image_size=768)
    text_config = _text_config(OPEN_CLIP_H_TEXT, "CLIPTextModel")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler.from_config(SD2_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(out / "tokenizer", local_files_only=True),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,  # type: ignore[arg-type]  # diffusers' documented "none"
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
    save_component_configs(out, pipe, text_encoder=text_config)


def write_sdxl(out: Path, bpe: Path) -> None:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
        StableDiffusionXLPipeline,
    )
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    write_tokenizer(bpe, out / "tokenizer")
    write_open_clip_tokenizer(bpe, out / "tokenizer_2")
    unet_config = create_unet_diffusers_config_from_ldm(SD_XL_BASE, checkpoint={},
                                                        image_size=1024)
    vae_config = create_vae_diffusers_config_from_ldm(SD_XL_BASE, checkpoint={}, image_size=1024)
    text_config = _text_config(CLIP_L_TEXT, "CLIPTextModel")
    text_config_2 = _text_config(OPEN_CLIP_BIGG_TEXT, "CLIPTextModelWithProjection")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config, force_upcast=True)
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config_2)
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(out / "tokenizer", local_files_only=True),
        tokenizer_2=CLIPTokenizer.from_pretrained(out / "tokenizer_2", local_files_only=True),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    save_component_configs(out, pipe, text_encoder=text_config, text_encoder_2=text_config_2)


def check_sd2(folder: Path) -> None:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTokenizer

    unet = UNet2DConditionModel.load_config(folder / "unet")
    assert unet["cross_attention_dim"] == 1024 and unet["upcast_attention"] is True, unet
    assert unet["attention_head_dim"] == [5, 10, 20, 20], unet
    assert unet["use_linear_projection"] is True and unet["sample_size"] == 96, unet
    vae = AutoencoderKL.load_config(folder / "vae")
    assert vae["scaling_factor"] == 0.18215 and vae["sample_size"] == 768, vae
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction", scheduler
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    assert tokenizer.pad_token == "!" and tokenizer.pad_token_id == 0
    check_tokenizer_ids(folder / "tokenizer")
    _instantiate(folder, "StableDiffusionPipeline")


def check_sdxl(folder: Path) -> None:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTokenizer

    unet = UNet2DConditionModel.load_config(folder / "unet")
    assert unet["cross_attention_dim"] == 2048, unet
    assert unet["projection_class_embeddings_input_dim"] == 2816, unet
    assert unet["addition_embed_type"] == "text_time" and unet["sample_size"] == 128, unet
    assert unet["transformer_layers_per_block"] == [1, 2, 10], unet
    vae = AutoencoderKL.load_config(folder / "vae")
    assert vae["scaling_factor"] == 0.13025 and vae["force_upcast"] is True, vae
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "EulerDiscreteScheduler", scheduler
    assert scheduler["timestep_spacing"] == "leading", scheduler
    check_tokenizer(folder / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
    assert tokenizer_2.pad_token == "!" and tokenizer_2.pad_token_id == 0
    check_tokenizer_ids(folder / "tokenizer_2")
    _instantiate(folder, "StableDiffusionXLPipeline")


def check_tokenizer_ids(folder: Path) -> None:
    """The OpenCLIP tokenizer reads text as CLIP-L's does (`!!!` is one token, 995) and pads
    with 0."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    plain = CLIPTokenizer.from_pretrained(folder, local_files_only=True, pad_token="<|endoftext|>")
    for text in ("a photo of a pony", "wow!!! a pony!"):
        assert tokenizer(text).input_ids == plain(text).input_ids, text
    assert tokenizer("wow!!!").input_ids == [49406, 2781, 995, 49407]
    padded = tokenizer("pony", padding="max_length", max_length=77).input_ids
    assert padded[3:] == [0] * 74, padded


def _instantiate(folder: Path, class_name: str) -> None:
    """Every component of the pipeline built from `folder` on the meta device, then a shape walk:
    the UNet's cross-attention width is the text towers' widths, and so on."""
    from accelerate import init_empty_weights
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == class_name, index
    unet_config = UNet2DConditionModel.load_config(folder / "unet")
    with init_empty_weights():
        UNet2DConditionModel.from_config(unet_config)
    widths = [CLIPTextConfig.from_pretrained(folder / name, local_files_only=True).hidden_size
              for name in ("text_encoder", "text_encoder_2") if (folder / name).is_dir()]
    assert sum(widths) == unet_config["cross_attention_dim"], (widths, unet_config)
    if len(widths) == 2:
        projection = CLIPTextConfig.from_pretrained(folder / "text_encoder_2",
                                                    local_files_only=True).projection_dim
        extra = 6 * unet_config["addition_time_embed_dim"]
        assert projection + extra == unet_config["projection_class_embeddings_input_dim"]


def _write(out: Path, writer, checker, bpe: Path) -> None:
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    writer(staging, bpe)
    checker(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    total = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        size = path.stat().st_size
        total += size
        print(f"{size:>10,}  {path.relative_to(out)}")
    print(f"{total:>10,}  total in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bpe", type=Path, default=DEFAULT_BPE, help="the CLIP BPE .txt.gz")
    parser.add_argument("--sd2-out", type=Path, default=SD2_OUT)
    parser.add_argument("--sdxl-out", type=Path, default=SDXL_OUT)
    args = parser.parse_args(argv)
    if not args.bpe.is_file():
        print(f"{args.bpe}: not found; see this script's docstring for where it comes from")
        return 1
    _write(args.sd2_out, write_sd2, check_sd2, args.bpe)
    _write(args.sdxl_out, write_sdxl, check_sdxl, args.bpe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
