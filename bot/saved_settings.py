"""The settings a user saves with `/settings` (and an admin for a channel), kept in Redis.
(The config's `[defaults]` table is another thing: what applies when nothing is saved.)

A saved setting is a `/pony` option given ahead of time, so it is checked by the same code as
the option (`PonyOptions.parse`, whose range check is `out_of_limits`) when it is saved and
again every time it is read: config.toml can change under a stored value (a model removed, a
limit lowered), and such a value is then ignored with a note instead of breaking `/pony`.

Each set of saved settings is one hash (`keys.user_settings`, `keys.channel_settings`) whose
fields are the option names, plain strings an admin can read with HGETALL:

    model     a model id from config.toml        size      square | portrait | landscape
    steps     an integer                          cfg       a number
    count     an integer                          upscale   true | false
    negative  tags as typed; written in each model's caption language at /pony time

`load_layers` reads the user's, the channel's and the server's hashes in one round trip;
`/pony` queues the same reads (`ask_layers`) in the pipeline that also reads the live workers
(`bot.submit.Submitter.read`), which is all it reads before it answers.

Saved settings live as long as their place: each server keeps an index of the keys saved in
it (`keys.saved_settings_index`, a set), so the bot's removal from a server deletes them all
(`forget_server`) without a SCAN of the keyspace, and a deleted channel's or thread's go with
it (`forget_channel`). Keys saved before the index existed are added to it once
(`index_saved`); their layout never changed, so they were read all along.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from bot import guild_settings
from bot.errors import UserFacingError
from bot.guild_settings import GuildSettings
from ponybot_core.config import Config
from ponybot_core.keys import Keys
from ponybot_core.redis_client import as_str
from ponybot_request import tags
from ponybot_request.options import PonyOptions
from ponybot_request.resolution import SETTINGS, Setting

log = logging.getLogger(__name__)

# The settings PonyOptions checks itself; `negative` and `upscale` are checked below the way
# /pony checks them (the tag limits, an upscaler configured).
_AS_OPTIONS = ("model", "size", "steps", "cfg", "count")


class SavedSettings(BaseModel):
    """One user's or one channel's saved settings; None is "not set here"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None
    size: str | None = None
    steps: int | None = None
    cfg: float | None = None
    count: int | None = None
    negative: str | None = None
    upscale: bool | None = None

    def given(self) -> dict[Setting, str | int | float | bool]:
        """The settings that are set, in SETTINGS order."""
        return {name: value for name in SETTINGS if (value := getattr(self, name)) is not None}

    def to_hash(self) -> dict[str, str]:
        return {name: _encode(value) for name, value in self.given().items()}


class Layers(BaseModel):
    """Everything saved that can apply to one `/pony`, read in one round trip."""

    model_config = ConfigDict(frozen=True)

    user: SavedSettings = SavedSettings()
    channel: SavedSettings = SavedSettings()
    server: GuildSettings = GuildSettings()
    # Saved values that no longer pass today's checks, said for the user.
    notes: tuple[str, ...] = ()


NO_LAYERS = Layers()


def check(config: Config, values: Mapping[str, object]) -> SavedSettings:
    """`values` (None = not given) checked as `/pony` checks its options; raises
    UserFacingError naming the first bad option."""
    given = {name: value for name, value in values.items() if value is not None}
    options = PonyOptions.parse(config, tags="", **{n: given.get(n) for n in _AS_OPTIONS})
    negative = given.get("negative")
    upscale = given.get("upscale")
    return SavedSettings(
        model=options.model, size=options.size, steps=options.steps, cfg=options.cfg,
        count=options.count,
        negative=None if negative is None else _check_negative(config, str(negative)),
        upscale=None if upscale is None else _check_upscale(config, upscale),
    )  # fmt: skip


def _check_negative(config: Config, text: str) -> str:
    text = text.strip()
    if len(text) > tags.MAX_INPUT_CHARS:  # /pony would read only the start of it
        raise UserFacingError(f"`negative` is {len(text)} characters long; at most "
                              f"{tags.MAX_INPUT_CHARS} are read.")
    prompt = tags.parse_tags("", text)
    if not prompt.negatives:
        raise UserFacingError("`negative` has no tags in it; give derpibooru tags, e.g. "
                              "`grimdark, blood`.")
    try:  # `validate` checks a whole prompt: one wanted tag leaves only the negatives' checks
        tags.validate(prompt.model_copy(update={"items": ("pony",)}), config.limits)
    except tags.TagError as exc:
        raise UserFacingError(f"`negative`: {exc}") from exc
    return text


def _check_upscale(config: Config, value: object) -> bool:
    if isinstance(value, str):  # as stored
        if value not in ("true", "false"):
            raise UserFacingError(f"`upscale` must be true or false (you gave {value!r}).")
        value = value == "true"
    if value and not config.upscalers:
        raise UserFacingError("`upscale` is not available: no upscaler is configured on this "
                              "bot.")
    return bool(value)


def _encode(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def from_hash(config: Config, raw: Mapping[bytes | str, bytes | str], *, whose: str) -> tuple[
        SavedSettings, tuple[str, ...]]:
    """A stored hash read back, each field checked on its own against today's config: what no
    longer passes is left out, with a note starting with `whose` ("Your", "This channel's")."""
    kept: dict[Setting, object] = {}
    notes: list[str] = []
    for field, value in raw.items():
        name, text = as_str(field, errors="replace"), as_str(value, errors="replace")
        if name not in SETTINGS:
            log.warning("ignoring unknown default %r=%r (%s)", name, text, whose)
            continue
        try:
            kept.update(check(config, {name: text}).given())
        except UserFacingError as exc:
            notes.append(f"{whose} saved `{name}` is ignored: {exc}")
    return SavedSettings.model_validate(kept), tuple(notes)


# --- Redis ------------------------------------------------------------------------------------


async def load_layers(redis: Redis, keys: Keys, config: Config, *, guild_id: int | None,
                      channel_id: int | None, user_id: int) -> Layers:
    """The user's, the channel's and the server's saved settings in one pipelined round trip
    (a DM has no channel or server layer). Redis errors propagate: callers say what failed."""
    async with redis.pipeline(transaction=False) as pipe:
        start = ask_layers(pipe, keys, guild_id=guild_id, channel_id=channel_id,
                           user_id=user_id)
        replies = await pipe.execute()
    return layers_from(config, replies, start, guild_id=guild_id)


def ask_layers(pipe: Pipeline, keys: Keys, *, guild_id: int | None, channel_id: int | None,
               user_id: int) -> int:
    """Queue `load_layers`' reads on `pipe`, for a caller that reads more in the same round
    trip (`bot.submit.Submitter.read`); returns where their replies start."""
    start = len(pipe)
    pipe.hgetall(keys.user_settings(guild_id, user_id))
    if guild_id is not None:
        pipe.hgetall(keys.channel_settings(guild_id, channel_id or 0))
        pipe.hgetall(keys.guild(guild_id))
    return start


def layers_from(config: Config, replies: Sequence[Any], start: int, *,
                guild_id: int | None) -> Layers:
    """The layers from the replies of a pipeline `ask_layers` queued on at `start`."""
    user, user_notes = from_hash(config, replies[start], whose="Your")
    if guild_id is None:
        return Layers(user=user, notes=user_notes)
    channel, channel_notes = from_hash(config, replies[start + 1], whose="This channel's")
    return Layers(user=user, channel=channel, notes=(*user_notes, *channel_notes),
                  server=guild_settings.from_hash(replies[start + 2], guild_id))


async def save(redis: Redis, key: str, settings: SavedSettings, *,
               index: str | None = None) -> None:
    """Store the settings that are given (one HSET); the others keep their saved values.
    `index` is the server's `keys.saved_settings_index` (None in DMs, which no one leaves): the key
    joins it in the same transaction, so no saved key is ever missing from it."""
    if fields := settings.to_hash():
        async with redis.pipeline(transaction=True) as pipe:
            # redis-py types HSET's mapping with invariant keys, which no dict[str, str] is.
            pipe.hset(key, mapping=cast("dict[FieldT, EncodableT]", fields))
            if index is not None:
                pipe.sadd(index, key)
            await pipe.execute()


async def clear(redis: Redis, key: str, setting: Setting | None = None, *,
                index: str | None = None) -> None:
    """Forget one saved setting, or all of them (and the key's place in `index`). A hash that
    one HDEL emptied stays in the index: a name of nothing costs a few bytes, and goes with
    its server."""
    if setting is None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if index is not None:
                pipe.srem(index, key)
            await pipe.execute()
    else:
        await redis.hdel(key, setting)


# Keys deleted per transaction when a server goes: a huge server never blocks Redis long.
FORGET_BATCH = 500


async def forget_server(redis: Redis, keys: Keys, guild_id: int) -> int:
    """Delete every user's and channel's saved settings in a server the bot was removed from
    (what its index names, batch by batch, each batch and its index entries in one
    transaction); returns how many hashes there were."""
    index = keys.saved_settings_index(guild_id)
    deleted = 0
    while members := await redis.srandmember(index, FORGET_BATCH):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(*members)
            pipe.srem(index, *members)
            gone, _ = await pipe.execute()
        deleted += int(gone)
    return deleted


async def forget_channel(redis: Redis, keys: Keys, guild_id: int, channel_id: int) -> bool:
    """Delete a deleted channel's (or thread's) saved settings; True when it had some."""
    key = keys.channel_settings(guild_id, channel_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.srem(keys.saved_settings_index(guild_id), key)
        gone, _ = await pipe.execute()
    return bool(gone)


async def index_saved(redis: Redis, keys: Keys) -> int:
    """Add the settings saved before servers had an index to their server's, once per
    deployment (one SCAN; `keys.saved_settings_indexed` marks it done); returns how many keys were
    added, 0 when it was done before. Several bots starting at once do the same harmless
    work twice."""
    if await redis.exists(keys.saved_settings_indexed):
        return 0
    added = 0
    batch: list[tuple[int, bytes]] = []

    async def flush() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for guild_id, key in batch:
                pipe.sadd(keys.saved_settings_index(guild_id), key)
            await pipe.execute()
        batch.clear()

    async for key in redis.scan_iter(match=f"{keys.prefix}:defaults:*", count=1000):
        guild_id = keys.saved_settings_guild(key)
        if guild_id is None:
            continue
        batch.append((guild_id, key))
        added += 1
        if len(batch) >= FORGET_BATCH:
            await flush()
    if batch:
        await flush()
    await redis.set(keys.saved_settings_indexed, "1")
    return added
