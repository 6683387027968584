"""The model inventory: what a worker, `ponybot up`, `ponybot models` and `ponybot check` say
about each configured file, found without loading any weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from inference.models.files import converted_safetensors_path
from inference.models.inventory import check_all, check_model, check_upscaler
from ponybot_core.config import Config, ModelEntry, UpscalerEntry
from ponybot_testkit.tiny_models import build_tiny_single_file


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_single_file(tiny_pipeline_dir,
                                  tmp_path_factory.mktemp("ckpt") / "pony.ckpt")


def entry(path: Path | str, **fields: object) -> ModelEntry:
    return ModelEntry(id="pony", name="Pony", path=Path(path), **fields)  # type: ignore[arg-type]


def test_a_diffusers_folder_is_usable_with_its_format_and_size(tiny_pipeline_dir: Path) -> None:
    check = check_model(entry(tiny_pipeline_dir), tiny_pipeline_dir.parent)

    assert check.usable and check.problem is None
    assert check.format == "diffusers"
    assert check.size_bytes == sum(p.stat().st_size for p in tiny_pipeline_dir.rglob("*")
                                   if p.is_file())


def test_a_missing_hub_model_says_to_pull_it(tmp_path: Path) -> None:
    check = check_model(entry("models/pony", hub_repo="AstraliteHeart/pony-diffusion"), tmp_path)

    assert not check.usable
    assert check.problem == f"not found: {tmp_path / 'models/pony'}"
    assert check.fix is not None and "`ponybot models pull pony`" in check.fix
    assert "AstraliteHeart/pony-diffusion" in check.fix


def test_a_missing_single_file_says_what_to_download_from_where(tmp_path: Path) -> None:
    name = "sd1.4 finetuned v2 derpibooru e=0000 gs=026400.ckpt"
    check = check_model(entry(f"models/{name}", download_url="https://mega.nz/file/x#y"),
                        tmp_path)

    assert not check.usable and check.format == "ckpt"
    assert check.fix == (f"download `{name}` from https://mega.nz/file/x#y into "
                         f"{tmp_path / 'models'}/ (`ponybot models pull pony` says how)")


def test_relative_paths_start_at_the_config_folder_and_tilde_is_home(
        tiny_pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tiny_pipeline_dir.parent))

    assert check_model(entry(tiny_pipeline_dir.name), tiny_pipeline_dir.parent).usable
    assert check_model(entry(f"~/{tiny_pipeline_dir.name}"), Path("/nowhere")).usable


def test_a_diffusers_folder_missing_a_component_is_an_incomplete_download(
        tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_pipeline_dir, tmp_path / "pony")
    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()

    check = check_model(entry(copy), tmp_path)

    assert not check.usable
    assert check.problem == f"{copy / 'unet'} has no weights (.safetensors or .bin; an " \
                            "incomplete download?)"


def test_a_truncated_safetensors_download_is_caught_from_its_header(
        tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    weights = tiny_pipeline_dir / "vae" / "diffusion_pytorch_model.safetensors"
    cut = tmp_path / "pony.safetensors"
    cut.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    check = check_model(entry(cut), tmp_path)

    assert not check.usable and check.problem is not None
    assert "is truncated" in check.problem and "interrupted download" in check.problem
    assert check.fix is not None and check.fix.startswith("replace it: download")


def test_a_single_file_no_architecture_can_draw_with_is_named_for_what_it_is(
        tmp_path: Path) -> None:
    import torch

    refiner = tmp_path / "refiner.safetensors"
    save_file({"conditioner.embedders.0.model.text_projection": torch.zeros(1),
               "model.diffusion_model.y": torch.zeros(1)}, refiner)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.alpha": torch.zeros(1)}, lora)
    unet_only = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.y": torch.zeros(1)}, unet_only)
    inpainting = tmp_path / "inpainting.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 9, 3, 3),
               "cond_stage_model.transformer.text_model.x": torch.zeros(1)}, inpainting)

    assert check_model(entry(refiner), tmp_path).problem == (
        f"{refiner} is an SDXL refiner (one OpenCLIP text tower): it only refines another "
        f"model's pictures and cannot draw from a prompt; use an SDXL base model (Pony Diffusion "
        f"V6 XL is one).")
    assert check_model(entry(lora), tmp_path).problem == (
        f"{lora} is a LoRA, not a full model; it cannot be loaded as a model.")
    assert "no text encoder" in (check_model(entry(unet_only), tmp_path).problem or "")
    assert check_model(entry(inpainting), tmp_path).problem == (
        f"{inpainting} is an inpainting or image-conditioned model (9 UNet input channels, not "
        f"4): it cannot draw from a prompt alone.")


def test_a_ckpt_is_usable_and_converting_it_is_suggested(tiny_ckpt: Path) -> None:
    check = check_model(entry(tiny_ckpt), tiny_ckpt.parent)

    assert check.usable and check.format == "ckpt" and check.converted is None
    assert check.tip is not None and "`python -m inference convert pony`" in check.tip


def test_a_truncated_ckpt_is_caught_without_unpickling(tiny_ckpt: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(tiny_ckpt.read_bytes()[:100_000])

    check = check_model(entry(cut), tmp_path)

    assert not check.usable and check.problem is not None
    assert check.problem.startswith(f"{cut} is truncated or corrupt")


def test_the_converted_copy_is_what_gets_checked_even_with_the_ckpt_gone(
        tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "pony.ckpt"
    build_tiny_single_file(tiny_pipeline_dir, converted_safetensors_path(ckpt))

    check = check_model(entry(ckpt), tmp_path)

    assert check.usable
    assert check.converted == converted_safetensors_path(ckpt) and check.path == ckpt


def test_upscalers_are_checked_too(tmp_path: Path) -> None:
    from ponybot_testkit.tiny_esrgan import realesrgan_state_dict, save_pth

    present = save_pth(realesrgan_state_dict(), tmp_path / "x4.pth")
    ok = check_upscaler(UpscalerEntry(id="x4", name="x4", path=present), tmp_path)
    gone = check_upscaler(UpscalerEntry(id="faces", name="Faces", path=Path("faces.pth")),
                          tmp_path)

    assert ok.usable and ok.format == "pth"
    assert gone.problem == f"not found: {tmp_path / 'faces.pth'}"


def test_the_table_lists_every_file_and_then_what_to_do(tiny_pipeline_dir: Path,
                                                        tmp_path: Path) -> None:
    config = Config.model_validate({"default_model": "tiny", "models": [
        {"id": "tiny", "name": "Tiny", "path": str(tiny_pipeline_dir)},
        {"id": "gone", "name": "Gone", "path": "models/gone", "hub_repo": "a/b"},
    ]})
    inventory = check_all(config, tmp_path)

    lines = inventory.table().splitlines()

    assert inventory.usable_models() == ["tiny"]
    assert inventory.heartbeat_fields() == {
        "serves": ["tiny"], "upscalers": [],
        "unavailable": {"gone": f"not found: {tmp_path / 'models/gone'}"}}
    assert lines[0].split() == ["id", "format", "architecture", "size", "converted", "copy", "path"]
    assert lines[1].startswith("✔") and " tiny " in lines[1]
    assert lines[2].startswith("✘") and " gone " in lines[2]
    assert lines[3] == f"✘ gone: not found: {tmp_path / 'models/gone'}"
    assert lines[4].startswith("  → run `ponybot models pull gone`")


def test_the_inventory_imports_no_torch() -> None:
    # `ponybot up`, `ponybot models` and the bot's side use it: they must not pay for torch.
    code = ("import sys, inference.models.inventory, ponybot_cli.main; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
