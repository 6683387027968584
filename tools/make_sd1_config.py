"""Generate inference/sd1_config: the SD 1.x component configs (no weights) shipped in the repo.

Single-file checkpoints (`.ckpt` / `.safetensors` in the CompVis layout) carry weights only;
`StableDiffusionPipeline.from_single_file(path, config=<this folder>, local_files_only=True)`
takes the rest from here, so loading never asks the Hugging Face hub for
`stable-diffusion-v1-5/stable-diffusion-v1-5`.

How it is built:

* unet/, vae/: diffusers' own `create_unet_diffusers_config_from_ldm` /
  `create_vae_diffusers_config_from_ldm`, fed the CompVis `configs/stable-diffusion/
  v1-inference.yaml` values (copied below as a dict; nothing is downloaded).
* text_encoder/: the CLIP ViT-L/14 text tower SD 1.x conditions on.
* scheduler/: DDIM with the pony-diffusion model card's settings (`inference.drawing.schedulers`).
* tokenizer/: the real CLIP BPE, built exactly as OpenAI CLIP's `SimpleTokenizer` does from
  `bpe_simple_vocab_16e6.txt.gz`. That file ships inside the open_clip_torch wheel:

      pip download --no-deps open_clip_torch -d /tmp/oc
      cd /tmp/oc && unzip -o open_clip_torch-*.whl 'open_clip/bpe_simple_vocab_16e6.txt.gz'

Run from the repository root (offline is fine, and enforced):

    python tools/make_sd1_config.py --bpe /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz

It rewrites inference/sd1_config (or --out) and checks what it wrote. Re-running it with the
same library versions gives the same files, except `_diffusers_version` / `transformers_version`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "inference" / "sd1_config"
DEFAULT_BPE = Path("/tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz")

# CompVis stable-diffusion configs/stable-diffusion/v1-inference.yaml (the parts that shape the
# networks; training-only keys such as the LR scheduler are left out).
V1_INFERENCE = {
    "model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.0120,
            "num_timesteps_cond": 1,
            "log_every_t": 200,
            "timesteps": 1000,
            "first_stage_key": "jpg",
            "cond_stage_key": "txt",
            "image_size": 64,
            "channels": 4,
            "cond_stage_trainable": False,
            "conditioning_key": "crossattn",
            "monitor": "val/loss_simple_ema",
            "scale_factor": 0.18215,
            "use_ema": False,
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {
                    "image_size": 32,
                    "in_channels": 4,
                    "out_channels": 4,
                    "model_channels": 320,
                    "attention_resolutions": [4, 2, 1],
                    "num_res_blocks": 2,
                    "channel_mult": [1, 2, 4, 4],
                    "num_heads": 8,
                    "use_spatial_transformer": True,
                    "transformer_depth": 1,
                    "context_dim": 768,
                    "use_checkpoint": True,
                    "legacy": False,
                },
            },
            "first_stage_config": {
                "target": "ldm.models.autoencoder.AutoencoderKL",
                "params": {
                    "embed_dim": 4,
                    "monitor": "val/rec_loss",
                    "ddconfig": {
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
                    },
                    "lossconfig": {"target": "torch.nn.Identity"},
                },
            },
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
        },
    }
}

# openai/clip-vit-large-patch14, text tower (what FrozenCLIPEmbedder loads).
CLIP_L_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}

MODEL_MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# `a</w>`, `photo</w>`, `of</w>` in OpenAI's vocabulary; checked after writing.
EXPECTED_PHOTO_OF_A = (320, 1125, 539, 320)


# ---------------------------------------------------------------------------------------------
# Tokenizer: OpenAI CLIP simple_tokenizer.py, verbatim in behaviour.


def bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[tuple[str, ...]]]:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(pair) for pair in merges]
    vocab += [BOS, EOS]
    if len(vocab) != 49408 or any(len(pair) != 2 for pair in merges):
        raise SystemExit(f"{bpe_path}: not the CLIP BPE file ({len(vocab)} tokens)")
    return {token: i for i, token in enumerate(vocab)}, merges


def write_tokenizer(bpe_path: Path, out: Path) -> None:
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(bpe_path)
    with tempfile.TemporaryDirectory() as tmp:
        raw, saved = Path(tmp, "raw"), Path(tmp, "saved")
        raw.mkdir()
        (raw / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        with open(raw / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
            f.write("#version: 0.2\n")
            f.writelines(" ".join(pair) + "\n" for pair in merges)
        # transformers 5.x: CLIPTokenizer(vocab_file=, merges_file=) silently builds a 2-token
        # vocabulary; from_pretrained(folder) reads the files properly.
        tokenizer = CLIPTokenizer.from_pretrained(raw, model_max_length=MODEL_MAX_LENGTH)
        tokenizer.save_pretrained(saved)
        config = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))

        out.mkdir(parents=True)
        # transformers 5.x saves only tokenizer.json (3.6 MB, and slower to load than the BPE
        # files). Ship the BPE files, which every transformers version reads.
        shutil.copy2(raw / "vocab.json", out / "vocab.json")
        shutil.copy2(raw / "merges.txt", out / "merges.txt")
    # Drop what describes this save rather than the tokenizer (and 5.x's `backend`, the default).
    for key in ("is_local", "local_files_only", "name_or_path", "vocab_file", "merges_file",
                "backend"):
        config.pop(key, None)
    config["model_max_length"] = MODEL_MAX_LENGTH
    config["tokenizer_class"] = "CLIPTokenizer"
    _write_json(out / "tokenizer_config.json", config)
    _write_json(
        out / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS},
    )


def check_tokenizer(folder: Path) -> list[int]:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    ids = tokenizer("a photo of a pony").input_ids
    expected = [vocab[BOS], *EXPECTED_PHOTO_OF_A, vocab["pony</w>"], vocab[EOS]]
    assert ids == expected == [49406, *EXPECTED_PHOTO_OF_A, expected[5], 49407], (ids, expected)
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == MODEL_MAX_LENGTH
    assert tokenizer.pad_token == EOS
    return ids


# ---------------------------------------------------------------------------------------------
# Model configs.


def write_model_configs(out: Path) -> None:
    import torch
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    # From where each is defined: diffusers' top level shows type checkers stand-in classes.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        StableDiffusionPipeline,
    )
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from inference.drawing.schedulers import SEED_DDIM_CONFIG

    # An empty checkpoint makes diffusers infer "v1" (512 px images, 64 px latents).
    unet_config = create_unet_diffusers_config_from_ldm(V1_INFERENCE, checkpoint={})
    vae_config = create_vae_diffusers_config_from_ldm(V1_INFERENCE, checkpoint={})
    text_config = CLIPTextConfig(**CLIP_L_TEXT, architectures=["CLIPTextModel"])
    text_config.dtype = torch.float32

    # Meta-device modules: the full configs (every default spelled out) without 1 B parameters.
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler.from_config(SEED_DDIM_CONFIG)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer", local_files_only=True)
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

    save_component_configs(out, pipe, text_encoder=text_config)


def save_component_configs(out: Path, pipe: Any, **text_configs: Any) -> None:
    """A pipeline's configs without weights: model_index.json, its unet, vae and scheduler,
    and each text encoder's config under its component name (`text_encoder`, ...)."""
    pipe.save_config(out)  # model_index.json
    pipe.unet.save_config(out / "unet")
    pipe.vae.save_config(out / "vae")
    pipe.scheduler.save_config(out / "scheduler")
    for name, config in text_configs.items():
        config.save_pretrained(out / name)


def check_model_configs(folder: Path) -> None:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from transformers import CLIPTextConfig

    from inference.drawing.schedulers import SEED_DDIM_CONFIG

    unet = UNet2DConditionModel.load_config(folder / "unet")
    assert unet["cross_attention_dim"] == 768, unet
    assert unet["block_out_channels"] == [320, 640, 1280, 1280], unet
    assert unet["attention_head_dim"] == 8 and unet["sample_size"] == 64, unet
    assert unet["layers_per_block"] == 2 and unet["in_channels"] == 4, unet
    vae = AutoencoderKL.load_config(folder / "vae")
    assert vae["block_out_channels"] == [128, 256, 512, 512], vae
    assert vae["latent_channels"] == 4 and vae["scaling_factor"] == 0.18215, vae
    text = CLIPTextConfig.from_pretrained(folder / "text_encoder", local_files_only=True)
    for key, value in CLIP_L_TEXT.items():
        assert getattr(text, key) == value, (key, getattr(text, key), value)
    scheduler = DDIMScheduler.load_config(folder / "scheduler")
    assert scheduler["_class_name"] == "DDIMScheduler"
    for key, value in SEED_DDIM_CONFIG.items():
        assert scheduler[key] == value, (key, scheduler[key], value)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", type=Path, default=DEFAULT_BPE, help="the CLIP BPE .txt.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.bpe.is_file():
        print(f"{args.bpe}: not found; see this script's docstring for where it comes from")
        return 1

    sys.path.insert(0, str(REPO_ROOT))
    out: Path = args.out
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_tokenizer(args.bpe, staging / "tokenizer")
    write_model_configs(staging)
    ids = check_tokenizer(staging / "tokenizer")
    check_model_configs(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)

    total = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        size = path.stat().st_size
        total += size
        print(f"{size:>10,}  {path.relative_to(out)}")
    print(f"{total:>10,}  total in {out}")
    print(f"'a photo of a pony' -> {ids}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
