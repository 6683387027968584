"""Model loading, conversion and samplers, on tiny SD 1.x models built offline (tiny_models)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTokenizer

from inference.drawing.schedulers import SEED_DDIM_CONFIG, make_scheduler, set_scheduler
from inference.models import convert as convert_cli
from inference.models.convert import convert
from inference.models.loading import (
    SD1_CONFIG_DIR,
    ModelLoadError,
    has_seed_scheduler,
    load_pipeline,
)
from ponybot_core.config import Config, ModelEntry, Sampler
from ponybot_testkit.tiny_models import (
    build_tiny_ckpt_with_unsafe_pickle,
    build_tiny_pipeline,
    build_tiny_single_file,
    ldm_state_dict,
    tiny_single_file_config,
)

COMPONENTS = ("unet", "vae", "text_encoder")

# diffusers' Euler a builds its sigmas with np.array(tensor), which numpy 2 nags about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def entry(path: Path | str, *, id: str = "tiny", config: Path | None = None, **kw) -> ModelEntry:
    return ModelEntry(id=id, name="Tiny Pony", path=Path(path), single_file_config=config, **kw)


def assert_same_weights(a, b) -> None:
    for name in COMPONENTS:
        sd_a, sd_b = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sd_a.keys() == sd_b.keys(), name
        different = [k for k in sd_a if not torch.equal(sd_a[k], sd_b[k])]
        assert not different, f"{name}: {different[:5]}"


def assert_cpu_float32(pipe) -> None:
    for name in COMPONENTS:
        for tensor in getattr(pipe, name).parameters():
            assert tensor.device.type == "cpu" and tensor.dtype == torch.float32, name


@pytest.fixture(scope="module")
def tiny(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The session's tiny diffusers pipeline, its config folder and its single-file forms.
    Read-only: tests that write next to a model copy it first (`own`)."""
    root = tmp_path_factory.mktemp("loading")
    return SimpleNamespace(
        pipeline=tiny_pipeline_dir,
        config=tiny_single_file_config(root / "tiny-config"),
        ckpt=build_tiny_single_file(tiny_pipeline_dir, root / "ckpt" / "pony.ckpt"),
        safetensors=build_tiny_single_file(tiny_pipeline_dir, root / "st" / "pony.safetensors"),
        unsafe=build_tiny_ckpt_with_unsafe_pickle(tiny_pipeline_dir, root / "unsafe" / "pony.ckpt"),
    )


@pytest.fixture(scope="module")
def reference(tiny: SimpleNamespace):
    return load_pipeline(entry(tiny.pipeline), base_dir=Path("/"))


def own(source: Path, folder: Path) -> Path:
    """A fresh copy of `source` (new mtime) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, folder / source.name))


# --- the shipped SD 1.x config folder ---------------------------------------------------------


def test_sd1_config_tokenizer_is_real_clip() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(SD1_CONFIG_DIR / "tokenizer", local_files_only=True)
    vocab = json.loads((SD1_CONFIG_DIR / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    ids = tokenizer("a photo of a pony").input_ids
    assert ids == [49406, 320, 1125, 539, 320, vocab["pony</w>"], 49407]
    assert (vocab["a</w>"], vocab["photo</w>"], vocab["of</w>"]) == (320, 1125, 539)
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    # Lower-cased, punctuation split, unknown-free: booru tags come through intact.
    tags = tokenizer("Twilight Sparkle, unicorn, by=artist").input_ids
    assert tags[1:3] == tokenizer("twilight sparkle").input_ids[1:3]
    assert tokenizer.unk_token_id not in tokenizer("🦄 pony").input_ids[1:-1]


def test_sd1_config_components_are_sd1() -> None:
    unet = UNet2DConditionModel.load_config(SD1_CONFIG_DIR / "unet")
    assert unet["cross_attention_dim"] == 768
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["attention_head_dim"] == 8 and unet["sample_size"] == 64
    assert unet["layers_per_block"] == 2 and unet["in_channels"] == unet["out_channels"] == 4
    vae = AutoencoderKL.load_config(SD1_CONFIG_DIR / "vae")
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["latent_channels"] == 4
    assert vae["scaling_factor"] == 0.18215
    text = CLIPTextConfig.from_pretrained(SD1_CONFIG_DIR / "text_encoder", local_files_only=True)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (768, 12, 12)
    assert (text.intermediate_size, text.max_position_embeddings) == (3072, 77)
    assert (text.vocab_size, text.hidden_act, text.projection_dim) == (49408, "quick_gelu", 768)
    scheduler = DDIMScheduler.from_pretrained(SD1_CONFIG_DIR / "scheduler")
    assert has_seed_scheduler(scheduler)
    index = json.loads((SD1_CONFIG_DIR / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    weights = [p for p in SD1_CONFIG_DIR.rglob("*") if p.suffix in (".safetensors", ".ckpt")]
    assert weights == []


# --- loading ----------------------------------------------------------------------------------


def test_diffusers_folder_loads_on_cpu_in_float32_relative_to_the_config(tiny) -> None:
    pipe = load_pipeline(entry(tiny.pipeline.name), base_dir=tiny.pipeline.parent)
    assert_cpu_float32(pipe)
    assert pipe.safety_checker is None and pipe.config.requires_safety_checker is False
    assert has_seed_scheduler(pipe.scheduler)
    assert pipe._progress_bar_config == {"disable": True}
    assert pipe.tokenizer.model_max_length == 77


def test_ckpt_and_safetensors_load_bit_identical_weights(tiny, reference) -> None:
    for single_file in (tiny.ckpt, tiny.safetensors):
        pipe = load_pipeline(entry(single_file, config=tiny.config), base_dir=Path("/"))
        assert_same_weights(pipe, reference)
        assert_cpu_float32(pipe)
        assert has_seed_scheduler(pipe.scheduler)
        assert pipe.safety_checker is None
        assert pipe._progress_bar_config == {"disable": True}


def test_a_half_precision_file_loads_as_float32(tiny, reference, tmp_path) -> None:
    half = build_tiny_single_file(tiny.pipeline, tmp_path / "half.safetensors", dtype=torch.float16)
    pipe = load_pipeline(entry(half, config=tiny.config), base_dir=tmp_path)
    assert_cpu_float32(pipe)
    expected = reference.unet.state_dict()
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, expected[key].half().float()), key


def test_ckpt_with_pickled_objects_is_refused_with_a_clear_message(tiny, monkeypatch) -> None:
    def no_unpickling(*args, **kwargs):
        raise AssertionError("the checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ModelLoadError) as error:
        load_pipeline(entry(tiny.unsafe, id="pony-v1", config=tiny.config), base_dir=Path("/"))
    message = str(error.value)
    assert "argparse.Namespace" in message
    assert str(tiny.unsafe) in message
    assert "python -m inference convert pony-v1 --trust-pickle" in message


def test_missing_files_are_named_with_their_path(tiny, tmp_path) -> None:
    for missing in ("gone.ckpt", "gone.safetensors", "gone-folder"):
        with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path / missing))):
            load_pipeline(entry(missing, config=tiny.config), base_dir=tmp_path)
    with pytest.raises(ModelLoadError, match=r"single_file_config .*nowhere"):
        load_pipeline(entry(tiny.ckpt, config=Path("nowhere")), base_dir=tmp_path)


def test_files_that_are_not_full_checkpoints_get_a_clear_message(tiny, tmp_path) -> None:
    garbage = tmp_path / "page.ckpt"
    garbage.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ModelLoadError, match="not a PyTorch checkpoint"):
        load_pipeline(entry(garbage), base_dir=tmp_path)

    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(tiny.safetensors.read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_pipeline(entry(truncated), base_dir=tmp_path)

    text_only = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.0.transformer.x": torch.zeros(1)}, text_only)
    with pytest.raises(ModelLoadError, match=r"has no UNet weights"):
        load_pipeline(entry(text_only), base_dir=tmp_path)

    vae_only = tmp_path / "vae.safetensors"
    save_file({"first_stage_model.decoder.conv_in.weight": torch.zeros(1)}, vae_only)
    with pytest.raises(ModelLoadError, match=r"not a full Stable Diffusion checkpoint"):
        load_pipeline(entry(vae_only), base_dir=tmp_path)


def test_the_shipped_config_is_used_for_single_files(tiny) -> None:
    # A tiny checkpoint against the real SD 1.x configs: diffusers builds the real-size UNet
    # from inference/sd1_config (offline) and then the shapes cannot match.
    with pytest.raises(ModelLoadError, match="could not load") as error:
        load_pipeline(entry(tiny.safetensors), base_dir=Path("/"))
    assert "768" in str(error.value) or "320" in str(error.value) or "size" in str(error.value)


def test_a_folder_with_another_scheduler_gets_the_seed_ddim(tiny, tmp_path) -> None:
    folder = tmp_path / "pndm-pony"
    shutil.copytree(tiny.pipeline, folder, copy_function=os.link)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    PNDMScheduler.from_config(SEED_DDIM_CONFIG).save_config(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]
    (folder / "model_index.json").unlink()  # a hard link to the shared pipeline's file
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = load_pipeline(entry(folder), base_dir=tmp_path)
    assert type(pipe.scheduler) is DDIMScheduler and has_seed_scheduler(pipe.scheduler)


def test_loading_never_touches_the_hub(tiny, monkeypatch) -> None:
    import importlib

    import huggingface_hub.constants

    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # how the tests (and the worker) run
    # ...but the loader must not depend on it: look online to the libraries, with no network.
    for name in ("huggingface_hub.constants", "diffusers.utils.hub_utils",
                 "diffusers.loaders.lora_base", "diffusers.models.attention_dispatch"):
        module = importlib.import_module(name)
        if hasattr(module, "HF_HUB_OFFLINE"):
            monkeypatch.setattr(module, "HF_HUB_OFFLINE", False)

    for path, config in ((tiny.pipeline, None), (tiny.ckpt, tiny.config),
                         (tiny.safetensors, tiny.config)):
        load_pipeline(entry(path, config=config), base_dir=Path("/"))
    with pytest.raises(ModelLoadError):  # the shipped configs, read locally
        load_pipeline(entry(tiny.safetensors), base_dir=Path("/"))
    assert attempts == []


def test_same_seed_same_pixels(reference) -> None:
    def draw(seed: int) -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(seed)
        return reference(
            "twilight sparkle, unicorn, solo",
            num_inference_steps=2,
            height=64,
            width=64,
            generator=generator,
            output_type="np",
        ).images

    first, second = draw(7), draw(7)
    assert first.shape == (1, 64, 64, 3)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, draw(8))


def test_tiny_pipeline_is_deterministic(tiny, tmp_path) -> None:
    again = build_tiny_pipeline(tmp_path / "again", seed=0)
    for weights in ("unet/diffusion_pytorch_model.safetensors",
                    "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (again / weights).read_bytes() == (tiny.pipeline / weights).read_bytes(), weights
    other = load_file(build_tiny_pipeline(tmp_path / "other", seed=1) / "unet" /
                      "diffusion_pytorch_model.safetensors")
    same = load_file(again / "unet" / "diffusion_pytorch_model.safetensors")
    assert not torch.equal(other["conv_in.weight"], same["conv_in.weight"])


# --- conversion -------------------------------------------------------------------------------


def test_convert_refuses_pickled_objects_without_trust_pickle(tiny, tmp_path) -> None:
    ckpt = own(tiny.unsafe, tmp_path)
    with pytest.raises(ModelLoadError, match="--trust-pickle") as error:
        convert(entry(ckpt, config=tiny.config), base_dir=tmp_path, report=None)
    assert "argparse.Namespace" in str(error.value)
    assert not ckpt.with_suffix(".safetensors").exists()


def test_convert_with_trust_pickle_writes_the_weights_only(tiny, tmp_path) -> None:
    ckpt = own(tiny.unsafe, tmp_path)
    lines: list[str] = []
    target = convert(entry(ckpt, config=tiny.config), base_dir=tmp_path, trust_pickle=True,
                     report=lines.append)
    assert target == tmp_path / "pony.safetensors"
    expected = ldm_state_dict(tiny.pipeline)
    written = load_file(target)
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    with safe_open(str(target), framework="pt") as f:
        assert f.metadata()["converted_from"] == "pony.ckpt"
    assert any(line.startswith(f"wrote {target} (") and "MiB" in line for line in lines)

    mtime = target.stat().st_mtime_ns
    assert convert(entry(ckpt), base_dir=tmp_path, report=lines.append) == target  # idempotent
    assert target.stat().st_mtime_ns == mtime and "up to date" in lines[-1]


def test_converted_copy_is_preferred_over_the_ckpt(tiny, reference, tmp_path) -> None:
    ckpt = own(tiny.unsafe, tmp_path)
    model = entry(ckpt, id="pony-v1", config=tiny.config)
    with pytest.raises(ModelLoadError, match="convert pony-v1"):
        load_pipeline(model, base_dir=tmp_path)
    convert(model, base_dir=tmp_path, trust_pickle=True, report=None)
    pipe = load_pipeline(model, base_dir=tmp_path)  # the ckpt itself is still refused
    assert_same_weights(pipe, reference)


def test_a_converted_copy_older_than_its_ckpt_is_not_used(tiny, tmp_path) -> None:
    ckpt = own(tiny.unsafe, tmp_path)
    model = entry(ckpt, config=tiny.config)
    target = convert(model, base_dir=tmp_path, trust_pickle=True, report=None)
    earlier = ckpt.stat().st_mtime - 60
    os.utime(target, (earlier, earlier))  # then a new version of the ckpt was copied in
    with pytest.raises(ModelLoadError, match="pickled Python objects"):
        load_pipeline(model, base_dir=tmp_path)
    assert convert(model, base_dir=tmp_path, trust_pickle=True, report=None) == target
    assert target.stat().st_mtime >= ckpt.stat().st_mtime
    load_pipeline(model, base_dir=tmp_path)


def test_convert_to_diffusers_writes_a_folder_the_loader_prefers(tiny, reference, tmp_path) -> None:
    single = own(tiny.safetensors, tmp_path)
    model = entry(single, config=tiny.config)
    folder = convert(model, base_dir=tmp_path, to="diffusers", report=None)
    assert folder == tmp_path / "pony.diffusers" and (folder / "model_index.json").is_file()
    single.unlink()  # only the converted folder is left to load
    pipe = load_pipeline(model, base_dir=tmp_path)
    assert_same_weights(pipe, reference)
    assert has_seed_scheduler(pipe.scheduler)


def test_convert_reads_checkpoints_whose_pickled_classes_are_not_installed(tmp_path) -> None:
    module = tmp_path / "ponytrainer_gone.py"
    module.write_text("class Callback:\n    def __init__(self):\n        self.best = 0.5\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import ponytrainer_gone

        weights = {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4)}
        torch.save({"state_dict": weights, "callbacks": [ponytrainer_gone.Callback()]},
                   tmp_path / "old.ckpt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ponytrainer_gone", None)
        module.unlink()
    target = convert(entry(tmp_path / "old.ckpt"), base_dir=tmp_path, trust_pickle=True,
                     report=None)
    assert torch.equal(load_file(target)["model.diffusion_model.input_blocks.0.0.weight"],
                       weights["model.diffusion_model.input_blocks.0.0.weight"])


def test_convert_command_line(tiny, tmp_path, capsys) -> None:
    ckpt = own(tiny.unsafe, tmp_path)
    config = Config(default_model="pony-v1",
                    models=[entry(ckpt.name, id="pony-v1", config=tiny.config)])
    assert convert_cli.main(["pony-v1"], config, tmp_path) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert convert_cli.main(["pony-v1", "--trust-pickle"], config, tmp_path) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "pony.safetensors") in out and "MiB" in out
    assert convert_cli.main(["no-such-model"], config, tmp_path) == 2
    assert "pony-v1" in capsys.readouterr().err


# --- samplers ---------------------------------------------------------------------------------


def test_sampler_swap_keeps_the_betas() -> None:
    ddim = make_scheduler(SEED_DDIM_CONFIG, Sampler.DDIM)
    expected = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    assert torch.allclose(ddim.betas, expected)
    kinds = {
        Sampler.DDIM: DDIMScheduler,
        Sampler.EULER_A: EulerAncestralDiscreteScheduler,
        Sampler.DPMPP_2M_KARRAS: DPMSolverMultistepScheduler,
    }
    for sampler, kind in kinds.items():
        scheduler = make_scheduler(ddim.config, sampler)
        assert type(scheduler) is kind
        assert torch.equal(scheduler.betas, ddim.betas)
        assert scheduler.config.prediction_type == "epsilon"
        assert scheduler.config.steps_offset == 1
    dpm = make_scheduler(ddim.config, Sampler.DPMPP_2M_KARRAS)
    assert dpm.config.use_karras_sigmas is True
    assert (dpm.config.algorithm_type, dpm.config.solver_order) == ("dpmsolver++", 2)
    assert has_seed_scheduler(make_scheduler(dpm.config, Sampler.DDIM))


def test_a_sampler_does_not_depend_on_the_one_before(reference) -> None:
    base = reference.scheduler.config
    for first in Sampler:
        for second in Sampler:
            chained = make_scheduler(make_scheduler(base, first).config, second)
            direct = make_scheduler(base, second)
            assert dict(chained.config) == dict(direct.config), (first, second)


def test_apply_sampler_gives_the_pipeline_a_fresh_scheduler(tiny) -> None:
    pipe = load_pipeline(entry(tiny.pipeline), base_dir=Path("/"))
    before = pipe.scheduler
    scheduler = set_scheduler(pipe, Sampler.EULER_A)
    assert pipe.scheduler is scheduler and scheduler is not before
    assert type(scheduler) is EulerAncestralDiscreteScheduler
    set_scheduler(pipe, "ddim")  # the job's value may be the plain string
    assert has_seed_scheduler(pipe.scheduler)
