"""`ponybot models pull`: the real huggingface_hub client, run as the CLI, against a hub the
tests own on loopback (ponybot_testkit/fake_hub.py). Nothing is downloaded from outside."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ponybot_core.config import ModelEntry
from ponybot_testkit.fake_hub import FakeHub

REPO = "AstraliteHeart/pony-diffusion"
# What StableDiffusionPipeline loads from the tiny pipeline's folder, safetensors chosen.
PIPELINE_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
}  # fmt: skip


@dataclass
class Pulled:
    code: int
    out: str
    err: str


@pytest.fixture
async def hub(tiny_pipeline_dir: Path) -> AsyncIterator[FakeHub]:
    """The tiny pipeline published like AstraliteHeart's repository: next to the files the
    pipeline loads, a safety checker, the same weights again as .bin and fp16, a model card and
    a full checkpoint, none of which a pull should fetch."""
    hub = FakeHub()
    files = FakeHub.folder_files(tiny_pipeline_dir)
    unet = files["unet/diffusion_pytorch_model.safetensors"]
    files.update({
        "unet/diffusion_pytorch_model.bin": unet,
        "vae/diffusion_pytorch_model.fp16.safetensors": files[
            "vae/diffusion_pytorch_model.safetensors"],
        "safety_checker/config.json": b"{}",
        "safety_checker/pytorch_model.bin": b"\0" * 4096,
        "feature_extractor/preprocessor_config.json": b"{}",
        "README.md": b"# pony-diffusion\n",
        ".gitattributes": b"*.bin filter=lfs\n",
        "pony-diffusion.ckpt": b"\0" * 4096,
    })  # fmt: skip
    hub.add_repo(REPO, files)
    await hub.start()
    yield hub
    await hub.close()


def write_config(folder: Path, **model: object) -> Path:
    fields = {"id": "pony", "name": "Pony", "path": "models/pony", "hub_repo": REPO, **model}
    lines = [f"{k} = {_toml(v)}" for k, v in fields.items()]
    path = folder / "config.toml"
    path.write_text('default_model = "pony"\n\n[[models]]\n' + "\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


async def pull(config: Path, hub: FakeHub, model_id: str = "pony") -> Pulled:
    """`ponybot models pull` as a user runs it, pointed at the fake hub."""
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
               HF_HOME=str(config.parent / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ponybot_cli", "models", "pull", model_id, "--config", str(config),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Pulled(process.returncode, out.decode(), err.decode())


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and ".cache" not in p.parts}


async def test_pull_fetches_only_what_the_pipeline_loads_into_the_configured_path(
        hub: FakeHub, tmp_path: Path, tiny_pipeline_dir: Path) -> None:
    config = write_config(tmp_path)

    pulled = await pull(config, hub)

    assert pulled.code == 0, pulled.err
    target = tmp_path / "models" / "pony"
    assert files_under(target) == PIPELINE_FILES
    assert sorted(hub.downloads()) == sorted(PIPELINE_FILES)
    for name in PIPELINE_FILES:
        assert (target / name).read_bytes() == (tiny_pipeline_dir / name).read_bytes(), name
    assert f"✔ pony: {target}" in pulled.out
    assert "100%" in pulled.err  # huggingface_hub's progress bars

    # ...and what was fetched is enough for the production loader.
    from inference.models.loading import load_pipeline

    pipe = load_pipeline(ModelEntry(id="pony", name="Pony", path=target), base_dir=tmp_path)
    assert pipe.unet is not None and pipe.text_encoder is not None


async def test_a_dropped_connection_resumes_where_it_stopped(
        hub: FakeHub, tmp_path: Path, tiny_pipeline_dir: Path) -> None:
    weights = "unet/diffusion_pytorch_model.safetensors"  # 34 MB
    # huggingface_hub writes in 10 MiB chunks: past the first one, something is kept.
    hub.drop_after(weights, 15_000_000)

    pulled = await pull(write_config(tmp_path), hub)

    assert pulled.code == 0, pulled.err
    fetches = [r for r in hub.requests if r.method == "GET" and r.path.endswith(weights)]
    assert len(fetches) == 2 and fetches[0].range is None
    assert fetches[1].range is not None
    resumed_at = int(fetches[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 15_000_000
    assert (tmp_path / "models/pony" / weights).read_bytes() == \
        (tiny_pipeline_dir / weights).read_bytes()


async def test_pulling_again_downloads_nothing_already_there(hub: FakeHub,
                                                             tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert (await pull(config, hub)).code == 0
    hub.requests.clear()

    again = await pull(config, hub)

    assert again.code == 0, again.err
    assert hub.downloads() == []


async def test_an_unknown_repository_is_named_and_nothing_is_written(hub: FakeHub,
                                                                      tmp_path: Path) -> None:
    pulled = await pull(write_config(tmp_path, hub_repo="nobody/no-such-pony"), hub)

    assert pulled.code == 1
    assert "nobody/no-such-pony" in pulled.err and "Repository Not Found" in pulled.err
    assert not (tmp_path / "models" / "pony").exists()


async def test_a_model_not_on_the_hub_gets_its_file_name_link_and_place_printed(
        hub: FakeHub, tmp_path: Path) -> None:
    name = "sd1.4 finetuned v2 derpibooru e=0000 gs=026400.ckpt"
    config = write_config(tmp_path, hub_repo="", path=f"models/{name}",
                          download_url="https://mega.nz/file/example#key")
    config.write_text(config.read_text().replace('hub_repo = ""\n', ""))

    pulled = await pull(config, hub)

    assert pulled.code == 1
    assert f"file:   {name}" in pulled.out
    assert "link:   https://mega.nz/file/example#key" in pulled.out
    assert f"put at: {tmp_path / 'models' / name}" in pulled.out
    assert hub.requests == []
