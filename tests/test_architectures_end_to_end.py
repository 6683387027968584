"""Pony Diffusion V6 XL, V5 and V4 dropped into models/ with config.toml's own entries for them
draw through `/pony` end to end, and every result button works on them: real discord.py against
the fake Discord, real Redis, tiny random checkpoints in each one's real single-file layout
(SDXL, SD 2.1 768 v-prediction, SD 1.5) under the file names config.toml expects.

What the entries get besides config.toml's lines: the tiny checkpoints' component configs
(`single_file_config`; the shipped full-size ones describe 2.6 B-parameter UNets), tiny sizes and
3 steps, so that a CPU draws each picture in a moment."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ponybot_core.config import Config, LoadedConfig, Secrets, UpscalerEntry
from ponybot_core.custom_ids import Action, custom_id
from ponybot_core.image_parameters import read_parameters
from ponybot_testkit.tiny_models import PONY_MODEL_FILES, build_tiny_pony_models
from ponybot_testkit.world import BOT_TOKEN, CHANNEL_ID, GUILD_ID, USER_ID, tiny_config

CONFIG_TOML = Path(__file__).resolve().parent.parent / "config.toml"
TINY_SIZES = {"square": {"width": 64, "height": 64}, "portrait": {"width": 64, "height": 96},
              "landscape": {"width": 96, "height": 64}}
# What a channel that is not age-restricted asks each model for, in the words it was trained
# with (config.toml's `rating_tags`, from each card: [V6] rating_safe, [V5] score_safe, [V4] safe).
SAFE_WORD = {"v6-xl": "rating_safe", "v5": "score_safe", "v4": "safe"}
# The cards' quality templates ([V6], [V5]); V4's card has none.
TEMPLATE = {
    "v6-xl": "score_9, score_8_up, score_7_up, score_6_up, score_5_up, score_4_up, ",
    "v5": "score_9, ",
    "v4": "",
}
ROOT_NAME = "pony-root"

# diffusers' Euler a builds its sigmas with np.array(tensor), which numpy 2 nags about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server's folder: models/ holds the three tiny checkpoints under their real names."""
    folder = tmp_path_factory.mktemp(ROOT_NAME)
    build_tiny_pony_models(folder)
    return folder


@pytest.fixture(scope="module")
def entries(root: Path) -> list[dict]:
    """config.toml's v4, v5 and v6-xl entries, as shipped, plus the tiny parts (see above)."""
    shipped = {m["id"]: m for m in tomllib.loads(CONFIG_TOML.read_text("utf-8"))["models"]}
    found = []
    for model_id, (architecture, name) in PONY_MODEL_FILES.items():
        entry = dict(shipped[model_id])
        assert entry["path"] == f"models/{name}", "config.toml names another file"
        entry.update(single_file_config=str(root / "tiny" / f"{architecture}-config"),
                     sizes=TINY_SIZES, hires_max_side=128, steps=3)
        found.append(entry)
    return found


@pytest.fixture(scope="module")
def tiny_upscaler(tmp_path_factory: pytest.TempPathFactory) -> UpscalerEntry:
    from ponybot_testkit.tiny_esrgan import realesrgan_state_dict, save_pth

    path = save_pth(realesrgan_state_dict(), tmp_path_factory.mktemp("esrgan") / "tiny-x4.pth")
    return UpscalerEntry(id="tiny-esrgan", name="Tiny ESRGAN", path=path)


def pony_config(tiny_pipeline_dir: Path, entries: list[dict], upscaler: UpscalerEntry,
                fake=None) -> Config:
    config = tiny_config(tiny_pipeline_dir, fake, default_model="v6-xl", models=entries)
    return Config.model_validate({**config.model_dump(), "upscalers": [upscaler.model_dump()],
                                  "default_upscaler": upscaler.id})


@pytest.fixture
def settings(root: Path, tiny_pipeline_dir: Path, entries: list[dict], fake, redis_server,
             tiny_upscaler: UpscalerEntry) -> LoadedConfig:
    # Relative paths (`models/...`, as config.toml has them) start at the config file's folder.
    return LoadedConfig(config=pony_config(tiny_pipeline_dir, entries, tiny_upscaler, fake),
                        secrets=Secrets(DISCORD_TOKEN=BOT_TOKEN, REDIS_URL=redis_server.url),
                        path=root / "config.toml")


@pytest.fixture(scope="module")
def model_cache(root: Path, tiny_pipeline_dir: Path, entries: list[dict],
                tiny_upscaler: UpscalerEntry) -> object:
    """The worker's cache, loading each model from models/ the production way, once."""
    from inference.models.cache import ModelCache
    from inference.models.device import choose_placement

    return ModelCache(pony_config(tiny_pipeline_dir, entries, tiny_upscaler), base_dir=root,
                      placement=choose_placement("cpu"))


# --- helpers -------------------------------------------------------------------------------------


async def pony(fake, **options):
    options.setdefault("tags", "twilight sparkle, unicorn, solo")
    itx = await fake.invoke("pony", options, guild_id=GUILD_ID, channel_id=CHANNEL_ID,
                            user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


async def result(fake, itx):
    await fake.wait_for(lambda: itx.original.attachments and itx.original.embeds, timeout=60)
    return itx.original


def prompt_shown(content: str) -> str:
    """The prompt in an answer: the code block under "Prompt the model will see:"."""
    after = content.split("Prompt the model will see:", 1)[1]
    return after.split("```")[1].strip()


def job_id_of(message) -> str:
    return str(message.embeds[0]["footer"]["text"]).removeprefix("job ")


def fields(message) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0]["fields"]}


def image(attachment) -> Image.Image:
    return Image.open(io.BytesIO(attachment.data))


def pixels(attachment) -> np.ndarray:
    return np.asarray(image(attachment).convert("RGB")).astype(int)


async def click(fake, message, action: Action, index: int | None = None):
    itx = await fake.click(message.id, custom_id(action, job_id_of(message), index),
                           user_id=USER_ID)
    await itx.wait_response(timeout=5)
    return itx


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", ["v6-xl", "v5", "v4"])
async def test_pony_draws_with_each_model_in_its_own_words_and_every_button_works(
        fake, bot, start_worker, settings, model_id: str) -> None:
    await start_worker()
    name = settings.config.model(model_id).name

    asked = await pony(fake, model=model_id, seed=11)

    # The answer shows the caption: the card's template, the tags, the model's safe rating.
    content = asked.original.content
    assert not asked.ephemeral and name in content
    prompt = prompt_shown(content)
    assert prompt.startswith(TEMPLATE[model_id])
    assert SAFE_WORD[model_id] in prompt.split(", ")
    assert "twilight sparkle, unicorn, solo" in prompt
    first = await result(fake, asked)
    assert image(first.attachments[0]).size == (64, 64)
    assert fields(first)["Model"] == name
    assert SAFE_WORD[model_id] in fields(first)["Prompt"]
    parameters = read_parameters(first.attachments[0].data) or ""
    # [V6] "load this model with clip skip 2": A1111 writes it into the picture's parameters.
    assert ("Clip skip: 2" in parameters) == (model_id == "v6-xl")

    rerolled = await result(fake, await click(fake, first, Action.REROLL))
    assert fields(rerolled)["Prompt"] == fields(first)["Prompt"]
    assert not np.array_equal(pixels(rerolled.attachments[0]), pixels(first.attachments[0]))

    varied = await result(fake, await click(fake, first, Action.VARY, 0))
    assert image(varied.attachments[0]).size == (64, 64)
    assert not np.array_equal(pixels(varied.attachments[0]), pixels(first.attachments[0]))

    upscaled = await result(fake, await click(fake, first, Action.UPSCALE, 0))
    assert image(upscaled.attachments[0]).size == (256, 256)

    hires = await result(fake, await click(fake, first, Action.HIRES))
    assert image(hires.attachments[0]).size == (128, 128)  # 2x, this model's hires_max_side
    assert fields(hires)["Model"] == name
