"""SD 2.x and SDXL checkpoints load offline, as single files in their real key layouts and as
diffusers folders, with their architecture read from the file; a declared `base` the file
contradicts is refused by name; the model cache weighs each architecture by all its weights."""

from __future__ import annotations

import functools
import json
import os
import pickle
import zipfile
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from accelerate import init_empty_weights
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from inference.models.cache import ModelCache, pipeline_bytes
from inference.models.convert import convert
from inference.models.device import (
    Placement,
    choose_placement,
    needs_upcast_attention,
    prepare,
)
from inference.models.files import ckpt_shapes, single_file_layout
from inference.models.inventory import check_model
from inference.models.loading import (
    SD2_CONFIG_DIR,
    SDXL_CONFIG_DIR,
    SHIPPED_CONFIG_DIRS,
    ModelLoadError,
    load_pipeline,
)
from ponybot_cli.doctor import ARCHITECTURE_PARAMETERS
from ponybot_core.config import Architecture, ModelEntry, ModelFormat, WorkerConfig
from ponybot_testkit.tiny_models import (
    build_tiny_architecture_pipeline,
    build_tiny_architecture_single_file,
    tiny_architecture_config,
    tiny_pipeline_for,
    vae_to_ldm,
)
from ponybot_testkit.world import tiny_config

ARCHITECTURES = ("sd2", "sdxl")
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimpleNamespace]:
    """Per architecture: its tiny folder, config folder, and single files (read-only)."""
    root = tmp_path_factory.mktemp("architectures")
    found = {}
    for arch in ARCHITECTURES:
        folder = build_tiny_architecture_pipeline(arch, root / arch / "pipeline")
        found[arch] = SimpleNamespace(
            folder=folder,
            config=tiny_architecture_config(arch, root / arch / "config"),
            safetensors=build_tiny_architecture_single_file(
                arch, folder, root / arch / "st" / "pony.safetensors"),
            ckpt=build_tiny_architecture_single_file(
                arch, folder, root / arch / "ck" / "pony.ckpt"),
        )
    return found


@functools.cache
def expected(arch: str):
    """The in-memory tiny pipeline every form of `arch` must load to (built once)."""
    return tiny_pipeline_for(arch)


def entry(path: Path, *, config: Path | None = None, **kw) -> ModelEntry:
    return ModelEntry(id="pony", name="Pony", path=path, single_file_config=config, **kw)


def assert_same_weights(expected, pipe) -> None:
    for name in COMPONENTS:
        a, b = getattr(expected, name, None), getattr(pipe, name, None)
        if a is None:
            assert b is None, name
            continue
        sd_a, sd_b = a.state_dict(), b.state_dict()
        assert sd_a.keys() == sd_b.keys(), name
        assert not [k for k in sd_a if not torch.equal(sd_a[k], sd_b[k])], name


# --- the real key layouts ----------------------------------------------------------------------


def keys_of(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def test_the_tiny_sd2_file_has_sd21s_layout_with_the_openclip_tower_and_its_unused_last_layer(
        tiny) -> None:
    keys = keys_of(tiny["sd2"].safetensors)
    tower = "cond_stage_model.model."
    assert f"{tower}transformer.resblocks.0.attn.in_proj_weight" in keys
    # 24 blocks in the file, like SD 2.1's; diffusers drops the 24th by name.
    assert f"{tower}transformer.resblocks.23.mlp.c_proj.weight" in keys
    assert f"{tower}transformer.resblocks.24.mlp.c_proj.weight" not in keys
    assert {f"{tower}text_projection", f"{tower}positional_embedding",
            f"{tower}ln_final.weight"} <= set(keys)
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in keys


def test_the_tiny_sdxl_file_has_sdxl_bases_layout_with_both_towers_and_label_emb(tiny) -> None:
    keys = set(keys_of(tiny["sdxl"].safetensors))
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert any(k.startswith("first_stage_model.decoder.") for k in keys)


# --- loading, bit for bit ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("form", ["safetensors", "ckpt", "folder"])
def test_a_tiny_checkpoint_loads_bit_identically_with_its_architecture_read_from_the_file(
        tiny, arch: str, form: str) -> None:
    made = tiny[arch]
    path = getattr(made, form)
    pipe = load_pipeline(entry(path, config=None if form == "folder" else made.config),
                         base_dir=Path("/"))

    assert_same_weights(expected(arch), pipe)
    if arch == "sdxl":
        assert isinstance(pipe, StableDiffusionXLPipeline)
        assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
        assert pipe.scheduler.config.timestep_spacing == "leading"
        assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
        # OpenCLIP pads with id 0 but reads a typed `!` as text, as open_clip's tokenizer did.
        assert pipe.tokenizer_2("wow!!!").input_ids == pipe.tokenizer("wow!!!").input_ids
        assert pipe.tokenizer_2("pony", padding="max_length").input_ids[3:] == [0] * 74
    else:
        assert type(pipe) is StableDiffusionPipeline
        # SD 2.1 768 (Pony Diffusion V5's base) predicts v.
        assert pipe.scheduler.config.prediction_type == "v_prediction"
        assert pipe.unet.config.upcast_attention is True
        assert pipe.tokenizer.pad_token == "!"
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is not None:
            assert all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.parametrize("arch", ["sdxl"])
def test_half_precision_files_load_to_the_same_weights_in_float32(tiny, arch, tmp_path) -> None:
    half = build_tiny_architecture_single_file(
        arch, tiny[arch].folder, tmp_path / "half.safetensors", dtype=torch.float16)
    pipe = load_pipeline(entry(half, config=tiny[arch].config), base_dir=Path("/"))
    weights = pipe.unet.state_dict()
    for key, tensor in expected(arch).unet.state_dict().items():
        assert torch.equal(weights[key], tensor.half().float()), key


# --- detection and declared families ----------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_architecture_is_read_from_headers_and_pickles_without_loading_weights(tiny, arch):
    made = tiny[arch]
    expected = Architecture(arch)
    st = single_file_layout(made.safetensors, ModelFormat.SAFETENSORS)
    ck = single_file_layout(made.ckpt, ModelFormat.CKPT)
    assert st is not None and ck is not None
    assert (st.architecture, st.problem) == (ck.architecture, ck.problem) == (expected, None)
    for path in (made.safetensors, made.ckpt, made.folder):
        check = check_model(entry(path), path.parent)
        assert check.usable and check.architecture == arch and not check.declared


def test_reading_a_ckpts_keys_never_runs_what_it_pickles(tmp_path: Path) -> None:
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "hook": Payload()},
               path)
    assert zipfile.is_zipfile(path)

    shapes = ckpt_shapes(path)

    assert not ran.exists()
    assert shapes == {"model.diffusion_model.x": [1]}


def test_reading_a_ckpts_keys_copies_no_list_a_hostile_pickle_hands_it_again_and_again(
        tmp_path: Path) -> None:
    # One memoised list of 100,000 items handed to torch.Size 1,000 times would be 100 M copies
    # from a pickle of a few kilobytes; shapes longer than a tensor's are refused instead.
    big = list(range(100_000))

    class Size:
        def __reduce__(self):
            return (torch.Size, (big,))

    path = tmp_path / "amplifier.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)},
                "sizes": [Size() for _ in range(1000)]}, path)

    assert ckpt_shapes(path) is None


def test_a_declared_base_the_file_contradicts_is_refused_naming_both(tiny) -> None:
    path = tiny["sdxl"].safetensors
    wrong = entry(path, config=tiny["sdxl"].config, base=Architecture.SD2)

    with pytest.raises(ModelLoadError) as failed:
        load_pipeline(wrong, base_dir=Path("/"))
    check = check_model(wrong, path.parent)

    message = ("is an SDXL checkpoint, but its config entry declares base = \"sd2\"; set "
               "base = \"sdxl\" (or \"auto\")")
    assert message in str(failed.value)
    assert not check.usable and check.problem == f"{path} {message}"
    assert check.fix == "set base = \"sdxl\" for this model"


def test_a_declared_base_that_agrees_is_shown_as_read_from_the_file(tiny) -> None:
    path = tiny["sd2"].safetensors
    check = check_model(entry(path, base=Architecture.SD2), path.parent)
    missing = check_model(entry(path.parent / "gone.safetensors", base=Architecture.SDXL),
                          path.parent)

    assert check.usable and check.architecture_label() == "SD 2.x"
    assert missing.architecture_label() == "SDXL (declared)"


# --- the config entry's overrides --------------------------------------------------------------


def test_prediction_and_upcast_attention_from_the_entry_win(tiny) -> None:
    made = tiny["sd2"]
    pipe = load_pipeline(entry(made.safetensors, config=made.config, upcast_attention=False,
                               prediction="epsilon"), base_dir=Path("/"))

    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.unet.config.upcast_attention is False
    attention = [m for m in pipe.unet.modules() if isinstance(m, Attention)]
    assert attention and not any(m.upcast_attention for m in attention)


def test_a_vae_override_replaces_the_checkpoints_and_keeps_its_own_upcast_setting(
        tiny, tmp_path: Path) -> None:
    # SDXL's fp16-fix VAE is a diffusers folder whose config says force_upcast = false.
    other = tiny_pipeline_for("sdxl", seed=5).vae
    other.register_to_config(force_upcast=False)
    other.save_pretrained(tmp_path / "sdxl-vae-fp16-fix")
    made = tiny["sdxl"]

    pipe = load_pipeline(entry(made.safetensors, config=made.config,
                               vae=tmp_path / "sdxl-vae-fp16-fix"), base_dir=Path("/"))
    stock = load_pipeline(entry(made.safetensors, config=made.config), base_dir=Path("/"))

    assert all(torch.equal(a, b) for a, b in zip(pipe.vae.state_dict().values(),
                                                 other.state_dict().values(), strict=True))
    assert pipe.vae.config.force_upcast is False
    # The checkpoint's own SDXL VAE overflows in fp16: the pipeline decodes it in float32.
    assert stock.vae.config.force_upcast is True


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_a_single_file_vae_override_loads_in_either_layout(tiny, tmp_path, layout) -> None:
    # stabilityai's sdxl_vae.safetensors holds LDM names without a prefix; the fp16-fix
    # repository's single file holds diffusers names.
    other = tiny_pipeline_for("sdxl", seed=7).vae
    weights = other.state_dict()
    if layout == "ldm":
        weights = vae_to_ldm(weights, dict(other.config))
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / "sdxl_vae.safetensors")
    made = tiny["sdxl"]

    pipe = load_pipeline(entry(made.safetensors, config=made.config,
                               vae=tmp_path / "sdxl_vae.safetensors"), base_dir=Path("/"))

    loaded = pipe.vae.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in other.state_dict().items())


def test_a_missing_vae_override_is_named(tiny, tmp_path: Path) -> None:
    made = tiny["sdxl"]
    with pytest.raises(ModelLoadError, match=r"its vae .*nowhere.* does not exist"):
        load_pipeline(entry(made.safetensors, config=made.config, vae=tmp_path / "nowhere"),
                      base_dir=Path("/"))
    check = check_model(entry(made.safetensors, vae=Path("nowhere")), tmp_path)
    assert check.problem == f"its vae {tmp_path / 'nowhere'} is not there"


def test_an_undeclared_sdxl_model_is_told_to_declare_its_base_for_its_sizes(tiny) -> None:
    path = tiny["sdxl"].safetensors
    auto = check_model(entry(path), path.parent)
    declared = check_model(entry(path, base=Architecture.SDXL), path.parent)

    assert auto.usable and auto.tip is not None
    assert auto.tip.startswith("declare base = \"sdxl\" for this model")
    assert declared.tip is None


# --- the shipped full-size configs --------------------------------------------------------------


def count_parameters(folder: Path) -> int:
    with init_empty_weights():
        unet_config = UNet2DConditionModel.load_config(folder / "unet")
        modules = [UNet2DConditionModel.from_config(unet_config),
                   AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                   CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
        if (folder / "text_encoder_2").is_dir():
            modules.append(CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2")))
    return sum(p.numel() for m in modules for p in m.parameters())


def test_the_shipped_configs_are_sd21_768_v_and_sdxl_base_and_the_doctor_knows_their_sizes():
    unet = UNet2DConditionModel.load_config(SD2_CONFIG_DIR / "unet")
    assert unet["upcast_attention"] is True and unet["use_linear_projection"] is True
    assert unet["attention_head_dim"] == [5, 10, 20, 20] and unet["cross_attention_dim"] == 1024
    assert unet["sample_size"] * 8 == 768
    text = CLIPTextConfig.from_pretrained(SD2_CONFIG_DIR / "text_encoder")
    assert (text.hidden_size, text.num_hidden_layers, text.hidden_act) == (1024, 23, "gelu")
    scheduler = json.loads((SD2_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert scheduler["prediction_type"] == "v_prediction"

    xl = UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet")
    assert xl["cross_attention_dim"] == 2048 and xl["projection_class_embeddings_input_dim"] == 2816
    vae = AutoencoderKL.load_config(SDXL_CONFIG_DIR / "vae")
    assert vae["scaling_factor"] == 0.13025 and vae["force_upcast"] is True
    pad = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer_2", local_files_only=True)
    assert pad.pad_token == "!" and pad("pony").input_ids[-1] == 49407

    counts = {arch.value: count_parameters(folder) for arch, folder in SHIPPED_CONFIG_DIRS.items()}
    assert counts["sd2"] == ARCHITECTURE_PARAMETERS["sd2"]
    assert counts["sdxl"] == ARCHITECTURE_PARAMETERS["sdxl"]
    assert abs(counts["sd1"] - ARCHITECTURE_PARAMETERS["sd1"]) < 10_000
    assert 3 < counts["sdxl"] / counts["sd1"] < 3.5


# --- conversion and the cache ------------------------------------------------------------------


def test_an_sdxl_single_file_converts_to_a_folder_that_loads_the_same(tiny, tmp_path) -> None:
    made = tiny["sdxl"]
    source = tmp_path / "v6.safetensors"
    source.write_bytes(made.safetensors.read_bytes())
    model = entry(source, config=made.config)

    target = convert(model, base_dir=Path("/"), to="diffusers", report=None)
    pipe = load_pipeline(model, base_dir=Path("/"))  # now from the converted folder

    assert target == tmp_path / "v6.diffusers" and (target / "text_encoder_2").is_dir()
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert_same_weights(expected("sdxl"), pipe)
    # Its tokenizers read prompts as the single file's did (a typed `!` is text).
    assert pipe.tokenizer_2("wow!!!").input_ids == pipe.tokenizer("wow!!!").input_ids


async def test_the_cache_weighs_every_tower_and_evicts_across_architectures(tiny, tiny_pipeline_dir
                                                                           ) -> None:
    sdxl = load_pipeline(entry(tiny["sdxl"].folder), base_dir=Path("/"))
    sd1 = load_pipeline(entry(tiny_pipeline_dir), base_dir=Path("/"))
    towers = sum(p.numel() * 4 for n in COMPONENTS for p in getattr(sdxl, n).parameters())
    assert pipeline_bytes(sdxl, torch.float32) >= towers
    assert pipeline_bytes(sdxl, torch.float16) < pipeline_bytes(sdxl, torch.float32)
    # A budget that holds the SDXL model or the SD 1.x one, not both.
    budget = max(pipeline_bytes(sdxl, torch.float32), pipeline_bytes(sd1, torch.float32)) * 1.2
    config = tiny_config(tiny_pipeline_dir, default_model="sd1", worker={
        "device": "cpu", "ram_cache_models": 1, "memory_budget_gb": budget / 1024**3},
        models=[{"id": "sd1", "name": "SD1", "path": str(tiny_pipeline_dir)},
                {"id": "xl", "name": "XL", "path": str(tiny["sdxl"].folder)},
                {"id": "v5", "name": "V5", "path": str(tiny["sd2"].folder)}])
    cache = ModelCache(config, base_dir=Path("/"), placement=choose_placement("cpu"))

    assert isinstance(await cache.get("xl"), StableDiffusionXLPipeline)
    await cache.get("sd1")
    assert cache.loaded == ["sd1"] and cache.in_ram == ["xl"]
    await cache.get("v5")
    assert cache.loaded == ["v5"] and cache.in_ram == ["sd1"]
    assert cache.used_bytes <= cache.budget_bytes


def test_pickle_module_is_the_stdlib_one() -> None:
    # ckpt_shapes's safety rests on pickle.Unpickler.find_class being the only import path.
    assert pickle.Unpickler.__module__ == "_pickle"


def test_upcast_attention_is_honoured_in_half_precision_where_sdpa_may_not_accumulate_in_fp32():
    worker = WorkerConfig()
    sd2, sd1 = tiny_pipeline_for("sd2"), tiny_pipeline_for("sd1")
    mps_half = Placement(torch.device("mps"), torch.float16)

    prepare(sd2, mps_half, worker)
    prepare(sd1, mps_half, worker)

    assert {type(p) for p in sd2.unet.attn_processors.values()} == {AttnProcessor}
    assert {type(p) for p in sd1.unet.attn_processors.values()} == {AttnProcessor2_0}
    for fused in (Placement(torch.device("cuda"), torch.float16),
                  Placement(torch.device("mps"), torch.bfloat16),
                  Placement(torch.device("cpu"), torch.float32)):
        assert not needs_upcast_attention(sd2, fused)
