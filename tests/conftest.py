"""Real parts for every test: a redis-server, a fake Discord that real discord.py talks to,
and tiny randomly initialised diffusers pipelines built offline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hypothesis
import pytest
from PIL import Image
from redis.asyncio import Redis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every process the tests start serves /metrics on a free port: fixed ones would collide.
os.environ.setdefault("PONYBOT_METRICS_PORT", "0")

from ponybot_cli.redis_server import RedisServer
from ponybot_core.config import LoadedConfig, ModelEntry, Secrets
from ponybot_core.keys import Keys
from ponybot_core.queue import Consumer, JobStatus, Producer, QueueReads
from ponybot_core.redis_client import worker_redis
from ponybot_testkit.fake_discord import FakeDiscord, FakeInteraction, FakeMessage
from ponybot_testkit.world import (
    BOT_TOKEN,
    CHANNEL_ID,
    OWNER_ID,
    USER_ID,
    fake_world,
    running_bot,
    tiny_config,
)

if TYPE_CHECKING:
    from inference.worker import Worker

# --- Redis -------------------------------------------------------------------------------------

# Every property test explores the same examples on every run: a CI run passes or fails by the
# code, never by the draw. (Exploring further is a separate, deliberate run:
# `pytest --hypothesis-seed=N` or `--hypothesis-profile=explore`.)
hypothesis.settings.register_profile("deterministic", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", derandomize=False, database=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    # Restart-surviving tests restart the server: a client that reconnects, as workers have.
    client = worker_redis(redis_server.url, block_s=0)
    await client.flushall()
    yield client
    await client.aclose()


# --- Models ------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny nets are all overhead: one thread is as fast, and immune to the 10x slowdowns
    of OpenMP threads fighting other processes for a small machine's two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_pipeline_dir: Path) -> object:
    """The tiny pipeline loaded through the production loader, shared by sampling tests."""
    from inference.models.loading import load_pipeline

    return load_pipeline(ModelEntry(id="tiny", name="Tiny Pony", path=tiny_pipeline_dir),
                         base_dir=tiny_pipeline_dir.parent)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ponybot_testkit.tiny_models import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "tiny-pony")


@pytest.fixture
def settings(tmp_path: Path, tiny_pipeline_dir: Path, fake: FakeDiscord,
             redis_server: RedisServer) -> LoadedConfig:
    return LoadedConfig(
        config=tiny_config(tiny_pipeline_dir, fake),
        secrets=Secrets(DISCORD_TOKEN=BOT_TOKEN, REDIS_URL=redis_server.url),
        path=tmp_path / "config.toml",
    )


# --- Discord -----------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = fake_world()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def bot(settings: LoadedConfig, fake: FakeDiscord, redis: Redis) -> AsyncIterator[object]:
    async with running_bot(settings, fake) as running:
        yield running




# --- What users do and see ----------------------------------------------------------------------


async def pony(fake: FakeDiscord, **options: object) -> FakeInteraction:
    """`/pony` by the test user in the test channel, answered (tags default to a plain pony)."""
    options.setdefault("tags", "twilight sparkle, unicorn, solo")
    itx = await fake.invoke("pony", options, channel_id=CHANNEL_ID, user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def result(fake: FakeDiscord, itx: FakeInteraction, *, within_s: float = 60) -> FakeMessage:
    """The interaction's message once the worker has edited the picture into it."""
    await fake.wait_for(lambda: itx.original.attachments and itx.original.embeds,
                        timeout=within_s)
    return itx.original


def job_id_of(message: FakeMessage) -> str:
    """The job id in a result's embed footer."""
    return str(message.embeds[0]["footer"]["text"]).removeprefix("job ")


def embed_fields(message: FakeMessage) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0]["fields"]}



def results_shown(fake: FakeDiscord, job_id: str) -> int:
    """How many messages show job `job_id`'s result, in any channel: the queued message once
    it carries the images (editing it again with the same result shows nothing new), plus
    every channel post with them."""
    return sum(1 for message in fake.messages.values()
               if not message.deleted and any(a.filename.startswith(f"pony_{job_id}_")
                                              for a in message.attachments))


def queued_job_id(itx: object) -> str:
    """The job id a queued message's Cancel button carries (`pony:cancel:<job>`)."""
    original = itx.original  # type: ignore[attr-defined]
    [custom_id] = [c["custom_id"] for row in original.components for c in row["components"]
                   if c["custom_id"].startswith("pony:cancel:")]
    return str(custom_id).rsplit(":", 1)[-1]


async def until_finished(redis: Redis, job_ids: list[str], *,
                         within_s: float = 90) -> list[JobStatus]:
    """Wait until every job is recorded as finished (posted, cancelled or dead) and nothing is
    left pending; their statuses."""
    reads = QueueReads(redis, Keys())
    deadline = time.monotonic() + within_s
    while True:
        states = await reads.states(job_ids)
        now = [s.status if s else None for s in states.values()]
        if all(s is not None and s.finished for s in states.values()) \
                and await redis.xlen(Keys().stream) == 0:
            return now  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"not finished within {within_s} s: {now}")
        await asyncio.sleep(0.05)


# --- Worker ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_cache(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    """One loaded tiny model for the whole session: loading is not what these tests test."""
    from inference.models.cache import ModelCache
    from inference.models.device import choose_placement

    return ModelCache(tiny_config(tiny_pipeline_dir), base_dir=tiny_pipeline_dir.parent,
                      placement=choose_placement("cpu"))


WorkerStarter = Callable[..., Awaitable["RunningWorker"]]


@dataclass
class RunningWorker:
    """An in-process worker; `crash()` stops it dead mid-job, as a killed process would
    (nothing released, nothing acked: its jobs wait for their lease to run out)."""

    worker: Worker
    task: asyncio.Task[None]

    def crash(self) -> None:
        self.task.cancel()


@pytest.fixture
async def start_worker(settings: LoadedConfig, model_cache: object,
                       redis: Redis) -> AsyncIterator[WorkerStarter]:
    """Starts in-process workers on demand; all are stopped after the test."""
    from inference.worker import Worker, logged_in_client

    running: list[tuple[RunningWorker, object, Redis]] = []

    async def start(name: str = "test-worker", settings_: LoadedConfig | None = None, *,
                    models: object = None) -> RunningWorker:
        """`models`: a model cache of the worker's own (the session's shared one by default,
        whose loaded models are whatever earlier tests left)."""
        use_settings = settings_ or settings
        assert use_settings.redis_url
        client = await logged_in_client(BOT_TOKEN)
        # The production client: timeouts, health checks, reconnects after a restart.
        client_redis = worker_redis(use_settings.redis_url,
                                    block_s=use_settings.config.worker.block_ms / 1000)
        worker = Worker(use_settings, client_redis, client, name=name,
                        models=models or model_cache)  # type: ignore[arg-type]
        handle = RunningWorker(worker, asyncio.create_task(worker.run()))
        running.append((handle, client, client_redis))
        return handle

    yield start
    for handle, client, client_redis in running:
        handle.worker.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(handle.task, 10)
        await client.close()  # type: ignore[attr-defined]
        await client_redis.aclose()


# --- Worker processes --------------------------------------------------------------------------


def write_config_toml(path: Path, pipeline_dir: Path, fake: FakeDiscord, *,
                      max_attempts: int = 3, lease_s: float = 2.0, steps: int = 2) -> Path:
    """The tiny test config as a file, for workers run as real processes."""
    path.write_text(f"""
default_model = "tiny"

[discord]
api_base = "{fake.api_base}"
gateway_url = "{fake.gateway_url}"
owners = [{OWNER_ID}]

[defaults]
steps = {steps}

[queue]
max_attempts = {max_attempts}
lease_s = {lease_s}
user_limit = 100

[sizes]
square = {{ width = 64, height = 64 }}
portrait = {{ width = 64, height = 96 }}
landscape = {{ width = 96, height = 64 }}

[worker]
device = "cpu"
preload = ["tiny"]
block_ms = 200
progress = false

[[models]]
id = "tiny"
name = "Tiny Pony"
path = "{pipeline_dir}"

[models.caption]
score_tag = "scr100"
""")
    return path


def spawn_worker(config_path: Path, redis_url: str, name: str, *,
                 faults: str = "") -> subprocess.Popen[bytes]:
    """`python -m inference` as a real process; `faults` is its PONYBOT_FAULTS
    (inference/loop/faults.py)."""
    env = dict(os.environ, DISCORD_TOKEN=BOT_TOKEN, REDIS_URL=redis_url,
               PONYBOT_WORKER_NAME=name, HF_HUB_OFFLINE="1", PONYBOT_LOG_LEVEL="WARNING",
               OMP_NUM_THREADS="1", PONYBOT_FAULTS=faults)
    return subprocess.Popen([sys.executable, "-m", "inference", "--config", str(config_path)],
                            env=env, stdin=subprocess.DEVNULL)


# --- The queue ---------------------------------------------------------------------------------


@dataclass
class QueueParts:
    """The queue's three sides over one Redis, the way the bot and the workers hold them."""

    redis: Redis
    keys: Keys
    producer: Producer
    reads: QueueReads

    def consumer(self, name: str = "w", *, lease_s: float = 60.0) -> Consumer:
        return Consumer(self.redis, self.keys, name, lease_s=lease_s, result_ttl_s=600)

    async def unfinished(self) -> int:
        """Jobs queued (in any server, paused or not) or running."""
        snap = await self.reads.snapshot(all_guilds=True)
        return len(snap.queued) + len(snap.running)


@pytest.fixture
def queue(redis: Redis) -> QueueParts:
    keys = Keys("test")
    return QueueParts(redis, keys, Producer(redis, keys, result_ttl_s=600),
                      QueueReads(redis, keys))


# --- Pictures ----------------------------------------------------------------------------------


@pytest.fixture
def bytes_to_pillows_exif_reader(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every EXIF block handed to Pillow's EXIF (TIFF) reader while the test runs:
    `getexif`, `exif_transpose` and JPEG's dpi all go through `Exif.load`."""
    handed: list[int] = []
    real_load = Image.Exif.load

    def spy_load(self: Image.Exif, data: bytes) -> None:
        handed.append(len(data))
        return real_load(self, data)

    monkeypatch.setattr(Image.Exif, "load", spy_load)
    return handed
