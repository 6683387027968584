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


# --- hostile files: one bad file is that model's problem, never the listing's --------------------


def _safetensors_with_header(path: Path, header: bytes, *, length: int | None = None) -> Path:
    import struct

    declared = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", declared) + header + b"\0" * 64)
    return path


def _header(**tensors: object) -> bytes:
    import json

    return json.dumps(tensors).encode()


_CROSS_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_X = "model.diffusion_model.x"
_LONG = "model.diffusion_model." + "x" * 1_000_000
# What a hostile header is -> (the header, what the model's problem says about it).
HOSTILE_HEADERS: dict[str, tuple[bytes, str]] = {
    "a JSON list": (b"[]", "the header is an array, not a JSON object"),
    "a JSON string": (b'"model.diffusion_model.x"', "the header is a string, not a JSON object"),
    "null": (b"null", "the header is null, not a JSON object"),
    "an entry that is not an object": (
        _header(**{_X: 1}), f"{_X}: Input should be a valid dictionary)"),
    "an entry without data_offsets": (
        _header(**{_X: {"dtype": "F16", "shape": [1]}}), f"{_X}.data_offsets: Field required"),
    "a shape that is a number": (
        _header(**{_X: {"dtype": "F16", "shape": 5, "data_offsets": [0, 2]}}),
        f"{_X}.shape: Input should be a valid list"),
    "a shape with text in it": (
        _header(**{_X: {"dtype": "F16", "shape": ["1"], "data_offsets": [0, 2]}}),
        f"{_X}.shape.0: Input should be a valid integer"),
    "offsets that are not a pair": (
        _header(**{_X: {"dtype": "F16", "shape": [1], "data_offsets": [0]}}),
        f"{_X}.data_offsets.1: Field required"),
    "offsets that end before they start": (
        _header(**{_X: {"dtype": "F16", "shape": [1], "data_offsets": [2, 0]}}),
        f"{_X}: data_offsets end before they start"),
    "negative offsets": (
        _header(**{_X: {"dtype": "F16", "shape": [1], "data_offsets": [-4, -2]}}),
        f"{_X}.data_offsets.0: Input should be greater than or equal to 0"),
    "metadata that is not an object": (
        _header(__metadata__=[1, 2]), "__metadata__: Input should be a valid dictionary"),
    "nesting 100000 deep": (
        b"[" * 100_000 + b"]" * 100_000, "the header is not JSON (recursion limit exceeded"),
    "an object nested 100000 deep": (
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "the header is not JSON (recursion limit exceeded"),
    "bytes that are not UTF-8": (b"\xff\xfe{}", "the header is not JSON"),
    "a megabyte-long tensor name": (
        _header(**{_LONG: {"dtype": "F16", "shape": 1, "data_offsets": [0, 2]}}),
        f"{_LONG[:80]}….shape: Input should be a valid list"),
}


@pytest.mark.parametrize("what", HOSTILE_HEADERS)
def test_a_hostile_safetensors_header_is_that_models_problem_and_the_others_stay_usable(
        tiny_pipeline_dir: Path, tmp_path: Path, what: str) -> None:
    header, reason = HOSTILE_HEADERS[what]
    hostile = _safetensors_with_header(tmp_path / "merge.safetensors", header)
    config = Config.model_validate({"default_model": "tiny", "models": [
        {"id": "tiny", "name": "Tiny", "path": str(tiny_pipeline_dir)},
        {"id": "merge", "name": "Merge", "path": str(hostile)},
    ]})

    inventory = check_all(config, tmp_path)  # a worker does this at start and on each beat

    merge = inventory.model("merge")
    assert merge.problem is not None
    assert merge.problem.startswith(
        f"{hostile} is truncated or corrupt (unreadable safetensors header: ")
    assert reason in merge.problem and len(merge.problem) < 500
    assert merge.fix is not None and merge.fix.startswith("replace it: ")
    assert inventory.usable_models() == ["tiny"]
    assert inventory.heartbeat_fields()["serves"] == ["tiny"]


def test_a_cross_attention_weight_with_no_dimensions_is_not_a_model_rather_than_a_crash(
        tmp_path: Path) -> None:
    # The layout reader asks a cross-attention key for its last dimension: a scalar has none.
    hostile = _safetensors_with_header(tmp_path / "merge.safetensors", _header(**{
        _CROSS_K: {"dtype": "F16", "shape": [], "data_offsets": [0, 2]}}))

    check = check_model(entry(hostile), tmp_path)

    assert check.problem == (f"{hostile} has UNet weights but no text encoder "
                             f"(cond_stage_model.* / conditioner.*): not a full checkpoint.")


def test_a_safetensors_header_over_the_size_limit_is_refused_before_it_is_read(
        tmp_path: Path) -> None:
    # Claims a 1 TiB header: refused from the 8-byte length alone, whatever follows.
    hostile = _safetensors_with_header(tmp_path / "merge.safetensors", b"{}", length=2**40)

    check = check_model(entry(hostile), tmp_path)

    assert check.problem == (f"{hostile} is truncated or corrupt (unreadable safetensors header: "
                             f"a header of {2**40} bytes, over the limit of 100000000)")


def test_a_file_shorter_than_its_header_length_is_truncated(tmp_path: Path) -> None:
    hostile = tmp_path / "merge.safetensors"
    hostile.write_bytes(b"\x05\x00")

    check = check_model(entry(hostile), tmp_path)

    assert check.problem is not None
    assert check.problem.startswith(f"{hostile} is truncated or corrupt")


@pytest.mark.parametrize("what", ["a safetensors weight", "model_index.json",
                                  "the text encoder's config.json"])
def test_a_hostile_file_inside_a_diffusers_folder_is_that_models_problem(
        tiny_pipeline_dir: Path, tmp_path: Path, what: str) -> None:
    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "pony")
    if what == "a safetensors weight":
        _safetensors_with_header(folder / "unet" / "diffusion_pytorch_model.safetensors", b"[]")
    elif what == "model_index.json":
        (folder / "model_index.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    else:
        (folder / "text_encoder" / "config.json").write_text("[1, 2]")

    check = check_model(entry(folder), tmp_path)

    assert check.problem is not None and str(folder) in check.problem


def _zip_checkpoint(path: Path, *, patch: int, value: bytes) -> Path:
    """A zip holding data.pkl, with `value` written `patch` bytes into its central directory."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02") + patch
    data[at:at + len(value)] = value
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("what", "patch", "value"), [
    ("a zip version from the future", 6, b"\xe3\x00"),  # NotImplementedError in zipfile
    ("a name flagged UTF-8 that is not", 8, b"\x00\x08"),  # with the name below
])  # fmt: skip
def test_a_hostile_zip_checkpoint_is_that_models_problem(tmp_path: Path, what: str, patch: int,
                                                         value: bytes) -> None:
    hostile = _zip_checkpoint(tmp_path / "merge.ckpt", patch=patch, value=value)
    if what.startswith("a name"):
        data = bytearray(hostile.read_bytes())
        name = data.index(b"archive/data.pkl", data.index(b"PK\x01\x02"))
        data[name:name + 2] = b"\xff\xfe"
        hostile.write_bytes(bytes(data))

    check = check_model(entry(hostile), tmp_path)

    assert check.problem is not None
    assert check.problem.startswith(f"{hostile} is truncated or corrupt (not a readable PyTorch "
                                    f"checkpoint: ")
    assert check.fix is not None and check.fix.startswith("replace it: ")


def test_a_failure_no_reader_foresaw_is_still_only_that_models_problem(
        tiny_pipeline_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inference.models import inventory

    merge = _safetensors_with_header(tmp_path / "merge.safetensors", b"{}")
    real = inventory.read_safetensors_header

    def surprising(path: Path) -> object:
        if path == merge:
            raise RecursionError("a failure no reader foresaw")
        return real(path)

    monkeypatch.setattr(inventory, "read_safetensors_header", surprising)
    config = Config.model_validate({"default_model": "tiny", "models": [
        {"id": "merge", "name": "Merge", "path": str(merge)},
        {"id": "tiny", "name": "Tiny", "path": str(tiny_pipeline_dir)},
    ]})

    found = check_all(config, tmp_path)

    assert found.model("merge").problem == (
        f"{merge} is unreadable: RecursionError: a failure no reader foresaw")
    assert found.usable_models() == ["tiny"]


def test_ponybot_models_lists_every_model_when_one_file_has_a_hostile_header(
        tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ponybot_cli.main import main

    monkeypatch.delenv("REDIS_URL", raising=False)
    (tmp_path / "models").mkdir()
    hostile = _safetensors_with_header(tmp_path / "models" / "merge.safetensors",
                                       b"[" * 100_000 + b"]" * 100_000)
    config = tmp_path / "config.toml"
    config.write_text(f"""default_model = "tiny"

[[models]]
id = "tiny"
name = "Tiny Pony"
path = "{tiny_pipeline_dir}"

[[models]]
id = "merge"
name = "A V6 XL merge from the internet"
path = "models/merge.safetensors"
""")

    code = main(["models", "--config", str(config)])

    out = capsys.readouterr().out
    assert code == 0
    assert f"✘ merge: {hostile} is truncated or corrupt" in out
    assert any(line.startswith("✔") and " tiny " in line for line in out.splitlines())
