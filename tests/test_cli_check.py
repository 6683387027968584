"""`ponybot check`, the doctor: one line per thing a `/pony` needs, in order, each with what
to fix; exit code 0 only when nothing failed. Real discord.py against the fake Discord, a real
Redis, the tiny model on disk."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from ponybot_cli import doctor
from ponybot_cli.doctor import (
    Finding,
    check_data_folder,
    check_device,
    check_files,
    check_redis,
    diagnose,
)
from ponybot_cli.redis_server import RedisServer, free_port
from ponybot_core.config import LoadedConfig, Secrets, load_config
from ponybot_testkit.world import BOT_TOKEN

PLENTY_OF_RAM = 256 * 1024**3
CHECK_WITH_PLENTY_OF_RAM = (
    "import sys; import ponybot_cli.doctor as d; "
    f"d.available_ram = lambda: {PLENTY_OF_RAM}; "
    "from ponybot_cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def write_config(folder: Path, pipeline_dir: Path, fake, *, default: str = "tiny",
                 device: str = "cpu") -> Path:
    path = folder / "config.toml"
    path.write_text(f"""default_model = "{default}"

[discord]
api_base = "{fake.api_base}"
gateway_url = "{fake.gateway_url}"

[redis]
data_dir = "redis-data"

[worker]
device = "{device}"

[[models]]
id = "tiny"
name = "Tiny Pony"
path = "{pipeline_dir}"

[[models]]
id = "gone"
name = "Gone Pony"
path = "models/gone"
hub_repo = "AstraliteHeart/pony-diffusion"
""")
    return path


def settings_for(path: Path, **secrets: str) -> LoadedConfig:
    return LoadedConfig(config=load_config(path), secrets=Secrets(**secrets), path=path)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("REDIS_URL", redis_server.url)


def by_topic(findings: list[Finding]) -> dict[str, Finding]:
    return {f.topic: f for f in findings}


async def test_with_everything_in_place_every_line_passes_in_order(
        bot, fake, tiny_pipeline_dir: Path, tmp_path: Path, environment: None,
        redis_server: RedisServer) -> None:
    with pytest.MonkeyPatch.context() as patch:  # the check reads this machine's free RAM
        patch.setattr(doctor, "available_ram", lambda: PLENTY_OF_RAM)
        findings = await diagnose(write_config(tmp_path, tiny_pipeline_dir, fake))

    assert [f.topic for f in findings] == ["config", "token", "commands", "data", "redis",
                                           "model tiny", "model gone", "device"]
    assert [f.status for f in findings] == ["ok", "ok", "ok", "ok", "ok", "ok", "warn", "ok"]
    found = by_topic(findings)
    assert found["token"].detail.startswith("accepted: logged in as ")
    assert "/pony" in found["commands"].detail and "globally" in found["commands"].detail
    assert found["redis"].detail.startswith(f"{redis_server.url} Redis 6.")
    assert found["redis"].detail.endswith(", AOF on")
    assert found["model gone"].fix == (
        f"run `ponybot models pull gone` (downloads AstraliteHeart/pony-diffusion into "
        f"{tmp_path / 'models/gone'})")
    assert found["device"].detail.startswith("cpu float32: ")
    assert doctor.exit_code(findings) == 0


async def test_the_command_line_exits_zero_only_when_a_pony_would_succeed(
        bot, fake, tiny_pipeline_dir: Path, tmp_path: Path, redis_server: RedisServer) -> None:
    config = write_config(tmp_path, tiny_pipeline_dir, fake)

    async def check(**env: str) -> tuple[int, str]:
        # `ponybot check` as a process, its reading of free RAM fixed: this machine's is not
        # what the test is about.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHECK_WITH_PLENTY_OF_RAM, "check", "--config", str(config),
            env={**os.environ, "REDIS_URL": redis_server.url, **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode is not None
        return process.returncode, out.decode()

    good, refused = await asyncio.gather(check(DISCORD_TOKEN=BOT_TOKEN),
                                         check(DISCORD_TOKEN="not-the-token"))

    assert good[0] == 0, good[1]
    assert "✔ config" in good[1] and "✔ device" in good[1]
    assert refused[0] == 1
    [token] = [line for line in refused[1].splitlines() if line.startswith("✘ token ")]
    assert token.endswith("Discord refused the token (401)")
    assert "→ reset it in the developer portal" in refused[1]


async def test_a_missing_token_fails_and_the_commands_check_is_skipped(
        fake, tiny_pipeline_dir: Path, tmp_path: Path, environment: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISCORD_TOKEN")

    found = by_topic(await diagnose(write_config(tmp_path, tiny_pipeline_dir, fake)))

    assert found["token"].status == "fail" and found["token"].detail == \
        "DISCORD_TOKEN is not set"
    assert found["commands"].status == "skip"


async def test_commands_never_registered_fail_with_how_to_register_them(
        fake, tiny_pipeline_dir: Path, tmp_path: Path, environment: None) -> None:
    found = by_topic(await diagnose(write_config(tmp_path, tiny_pipeline_dir, fake)))

    assert found["commands"].status == "fail"
    assert found["commands"].detail == "/pony is not registered (global)"
    assert found["commands"].fix is not None and "`ponybot up`" in found["commands"].fix


async def test_an_invalid_config_is_the_only_line(fake, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('default_model = "nope"\n[[models]]\nid = "tiny"\nname = "T"\npath = "x"\n')

    [finding] = await diagnose(path)

    assert finding.status == "fail" and finding.topic == "config"
    assert "default_model: 'nope' is not one of the models (tiny)" in finding.detail


async def test_an_unreachable_redis_fails_with_the_password_masked(
        fake, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    settings = settings_for(write_config(tmp_path, tiny_pipeline_dir, fake), REDIS_URL=url)

    finding = await check_redis(settings)

    assert finding.status == "fail"
    assert finding.detail.startswith(f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1][:-2]}")
    assert "hunter2" not in finding.detail + (finding.fix or "")


async def test_redis_without_aof_is_a_warning(fake, redis, redis_server: RedisServer,
                                             tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(write_config(tmp_path, tiny_pipeline_dir, fake),
                            REDIS_URL=redis_server.url)
    await redis.config_set("appendonly", "no")
    try:
        finding = await check_redis(settings)
    finally:
        await redis.config_set("appendonly", "yes")

    assert finding.status == "warn"
    assert "AOF is off: a restart loses the queued jobs" in finding.detail
    assert finding.fix is not None and "appendonly yes" in finding.fix


async def test_without_redis_configured_the_embedded_one_is_checked(
        fake, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(write_config(tmp_path, tiny_pipeline_dir, fake))

    finding = await check_redis(settings)

    assert finding.status == "ok"
    assert finding.detail.startswith("ponybot up is not running: it starts the embedded Redis 6.")
    assert finding.detail.endswith(f"with AOF in {tmp_path / 'redis-data'}")


async def test_a_url_file_no_ponybot_up_holds_is_stale_not_an_unreachable_redis(
        fake, tiny_pipeline_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    settings = settings_for(write_config(tmp_path, tiny_pipeline_dir, fake))
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    # What a `ponybot up` killed with -9 leaves: its url file, not its lock.
    (data_dir / "url").write_text(f"redis://127.0.0.1:{free_port()}/0\n")

    finding = await check_redis(settings)

    assert finding.status == "ok"
    assert finding.detail.startswith("ponybot up is not running: it starts the embedded Redis")


def test_a_data_folder_that_cannot_be_made_fails_with_what_to_do(
        fake, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    config = write_config(tmp_path, tiny_pipeline_dir, fake)
    config.write_text(config.read_text().replace('data_dir = "redis-data"',
                                                 'data_dir = "blocker/redis-data"'))

    finding = check_data_folder(settings_for(config))

    assert finding.status == "fail"
    assert finding.detail == (f"{tmp_path / 'blocker/redis-data'} cannot be made: "
                              f"{tmp_path / 'blocker'} is not a writable folder")
    assert finding.fix is not None and "set redis.data_dir in the config" in finding.fix


def test_check_looks_at_the_data_folder_without_making_it(
        fake, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(write_config(tmp_path, tiny_pipeline_dir, fake))

    finding = check_data_folder(settings)

    assert finding.status == "ok"
    assert finding.detail == f"{tmp_path / 'redis-data'} (made by `ponybot up`)"
    assert not (tmp_path / "redis-data").exists()


def test_redis_older_than_6_2_is_refused() -> None:
    assert doctor.version_at_least("6.2.14", (6, 2)) and doctor.version_at_least("7.0.0", (6, 2))
    assert not doctor.version_at_least("6.0.16", (6, 2))
    assert not doctor.version_at_least("5.0.7", (6, 2))


async def test_a_missing_default_model_fails_and_another_missing_one_warns(
        fake, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(write_config(tmp_path, tiny_pipeline_dir, fake, default="gone"))

    found = by_topic(check_files(settings))

    assert found["model tiny"].status == "ok"
    assert found["model gone"].status == "fail"
    assert found["model gone"].detail.endswith("(the default model: /pony uses it)")


async def test_a_gpu_asked_for_but_absent_fails_with_what_to_do(
        fake, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    settings = settings_for(write_config(tmp_path, tiny_pipeline_dir, fake, device="cuda"))

    finding = check_device(settings)

    assert finding.status == "fail" and "sees no CUDA GPU" in finding.detail
    assert finding.fix is not None and 'worker.device = "auto"' in finding.fix


def test_v6_xl_and_v5_shaped_single_files_pass_and_a_declared_base_they_contradict_is_named(
        tmp_path: Path) -> None:
    from ponybot_testkit.tiny_models import build_tiny_pony_models

    made = build_tiny_pony_models(tmp_path, ids=("v5", "v6-xl"))
    (v5, v5_config), (xl, xl_config) = made["v5"], made["v6-xl"]
    path = tmp_path / "config.toml"
    path.write_text(f"""default_model = "v6-xl"

[worker]
device = "cpu"

[[models]]
id = "v6-xl"
name = "Pony Diffusion V6 XL"
path = "models/{xl.name}"
base = "sdxl"
clip_skip = 2
single_file_config = "{xl_config}"

[[models]]
id = "v5"
name = "Pony Diffusion V5"
path = "models/{v5.name}"
upcast_attention = true
single_file_config = "{v5_config}"

[[models]]
id = "wrong"
name = "Declared SD 1.x"
path = "models/{xl.name}"
base = "sd1"
""")
    settings = settings_for(path)

    found = by_topic(check_files(settings))
    device = check_device(settings)

    assert found["model v6-xl"].status == "ok"
    assert found["model v6-xl"].detail.startswith("SDXL safetensors ")
    assert found["model v5"].status == "ok"
    assert found["model v5"].detail.startswith("SD 2.x safetensors ")
    assert found["model v5"].fix is not None and "declare base = \"sd2\"" in found["model v5"].fix
    assert found["model wrong"].status == "warn"
    assert found["model wrong"].detail == (
        f"{xl} is an SDXL checkpoint, but its config entry declares base = \"sd1\"; set "
        f"base = \"sdxl\" (or \"auto\") (/pony refuses it)")
    assert found["model wrong"].fix == "set base = \"sdxl\" for this model"
    assert "the largest configured model (SDXL) needs about" in device.detail
