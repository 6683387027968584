"""`ponybot models`: every configured model as found on disk, with the last load time and load
failure the running workers report in Redis."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ponybot_cli.main import main
from ponybot_cli.redis_server import RedisServer
from ponybot_core.heartbeat import WorkerHeartbeat, publish_heartbeat
from ponybot_core.keys import Keys


def write_config(folder: Path, pipeline_dir: Path) -> Path:
    path = folder / "config.toml"
    path.write_text(f"""default_model = "tiny"

[[models]]
id = "tiny"
name = "Tiny Pony"
path = "{pipeline_dir}"

[[models]]
id = "v2"
name = "Lun's V2"
path = "models/sd1.4 finetuned v2 derpibooru e=0000 gs=026400.ckpt"
download_url = "https://mega.nz/file/example#key"
""")
    return path


def rows(out: str) -> dict[str, list[str]]:
    """Table rows by model id (the columns are separated by two or more spaces)."""
    table = {}
    for line in out.splitlines()[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 2 and cells[0] in ("✔", "✘"):
            table[cells[1]] = cells
    return table


def test_models_lists_each_model_with_what_to_do_about_missing_ones(
        tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)

    code = main(["models", "--config", str(write_config(tmp_path, tiny_pipeline_dir))])

    out = capsys.readouterr().out
    assert code == 0
    table = rows(out)
    assert table["tiny"][:4] == ["✔", "tiny", "diffusers", "SD 1.x"]
    assert table["tiny"][4].endswith("MiB")
    assert table["v2"][:5] == ["✘", "v2", "ckpt", "-", "-"]
    assert "→ download `sd1.4 finetuned v2 derpibooru e=0000 gs=026400.ckpt` from " \
           "https://mega.nz/file/example#key" in out
    assert "(no Redis configured and no `ponybot up` running: no worker reports to show)" in out


async def test_models_shows_the_load_time_and_failure_workers_report(
        tiny_pipeline_dir: Path, tmp_path: Path, redis: Redis, redis_server: RedisServer,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    beat = WorkerHeartbeat(name="gpu-a", host="box", device="cuda", at=time.time(),
                           load_s={"tiny": 4.25}, failed={"v2": "out of memory"})
    await publish_heartbeat(redis, Keys(), beat, ttl_s=30)
    config = write_config(tmp_path, tiny_pipeline_dir)

    # The command runs its own event loop, as from a shell.
    code = await asyncio.to_thread(main, ["models", "--config", str(config)])

    out = capsys.readouterr().out
    assert code == 0
    table = rows(out)
    assert "4.2 s (gpu-a)" in table["tiny"]
    assert "gpu-a: out of memory" in table["v2"]


def test_models_names_each_files_architecture_read_from_it_or_declared(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ponybot_testkit.tiny_models import build_tiny_pony_models

    monkeypatch.delenv("REDIS_URL", raising=False)
    (xl, xl_config), (v5, _) = (build_tiny_pony_models(tmp_path, ids=("v6-xl", "v5"))[i]
                                for i in ("v6-xl", "v5"))
    path = tmp_path / "config.toml"
    path.write_text(f"""default_model = "v6-xl"

[[models]]
id = "v6-xl"
name = "Pony Diffusion V6 XL"
path = "models/{xl.name}"
single_file_config = "{xl_config}"

[[models]]
id = "v5"
name = "Pony Diffusion V5"
path = "models/{v5.name}"

[[models]]
id = "later"
name = "Not downloaded yet"
path = "models/later.safetensors"
base = "sdxl"
""")

    assert main(["models", "--config", str(path)]) == 0

    table = rows(capsys.readouterr().out)
    assert table["v6-xl"][:4] == ["✔", "v6-xl", "safetensors", "SDXL"]
    assert table["v5"][:4] == ["✔", "v5", "safetensors", "SD 2.x"]
    assert table["later"][:4] == ["✘", "later", "safetensors", "SDXL (declared)"]
