"""A server's own settings — default model, blocked tags, per-user limit — in one Redis hash.

The hash is `keys.guild(guild_id)`; its fields are the constants below, each a plain string so
an admin can read them with `HGETALL`:

    model       the model id `/pony` uses when no option or saved default picks one
    blocked     JSON list of canonical tags (`ponybot_request.tags.parse_tags` form) `/pony` refuses
    user_limit  the per-user cap on queued + running jobs (`/queue limit`)
    safety      JSON: the picture check's choice (`/safety`, bot.safety_settings)
    quality_prefix  `off`: captions without the model card's quality tags (`/settings server`)

`/pony` reads all of it in one HGETALL, pipelined with the user's and the channel's saved
defaults (`bot.saved_settings.load_layers`). A value that cannot be read (hand-edited, from an
older version) counts as unset rather than breaking `/pony` for the whole server. The hash
goes when the bot is removed from the server (`forget`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.exceptions import WatchError

from bot.errors import UserFacingError
from bot.safety_settings import SAFETY_FIELD, SafetyChoice
from bot.safety_settings import from_value as safety_from_value
from ponybot_core.config import Config, ModelEntry
from ponybot_core.keys import Keys
from ponybot_core.redis_client import as_str
from ponybot_request import tags

log = logging.getLogger(__name__)

MODEL_FIELD = "model"
BLOCKED_FIELD = "blocked"
USER_LIMIT_FIELD = "user_limit"
QUALITY_PREFIX_FIELD = "quality_prefix"
# Enough for any real block list; keeps the hash (read on every /pony) small.
MAX_BLOCKED_TAGS = 200


class SettingsUnavailable(UserFacingError):
    def __init__(self) -> None:
        super().__init__(
            "Server settings are unavailable right now (the bot cannot reach Redis). "
            "Nothing was changed; please try again in a minute."
        )


class GuildSettings(BaseModel):
    """What one server chose; the defaults are what a server that chose nothing gets."""

    model_config = ConfigDict(frozen=True)

    model: str | None = None
    blocked_tags: tuple[str, ...] = ()
    user_limit: int | None = None
    # Captions start with the model card's quality tags (V6 XL's `score_9, score_8_up, ...`);
    # a server that wants only what its users type turns them off.
    quality_prefix: bool = True
    # `/safety`: the picture check's choice (bot.safety_settings).
    safety: SafetyChoice = SafetyChoice()

    def configured_model(self, config: Config) -> str | None:
        """The server's default model if it is still in config.toml, else None."""
        return self.model if self.model in {m.id for m in config.models} else None

    def is_stale(self, config: Config) -> bool:
        """The server chose a model that config.toml no longer has."""
        return self.model is not None and self.configured_model(config) is None


def model_for(config: Config, settings: GuildSettings, requested: str | None = None) -> ModelEntry:
    """The checkpoint to use: the `model:` option, else the server's default, else the bot's.

    A server default removed from config.toml since falls back to `config.default_model`
    (`/model info` tells the server's admins)."""
    return config.model(requested or settings.configured_model(config) or config.default_model)


# --- reading ----------------------------------------------------------------------------------


async def load(redis: Redis, keys: Keys, guild_id: int | None) -> GuildSettings:
    """One HGETALL. DMs have no server settings and cost no round trip.
    Redis errors propagate: callers decide what the user is told."""
    if guild_id is None:
        return GuildSettings()
    raw = await redis.hgetall(keys.guild(guild_id))
    return from_hash(raw, guild_id)


def from_hash(raw: Mapping[bytes | str, bytes | str], guild_id: int) -> GuildSettings:
    """The hash read back (`load`, or a caller that pipelined the HGETALL)."""
    fields = {as_str(k, errors="replace"): as_str(v, errors="replace") for k, v in raw.items()}
    model = fields.get(MODEL_FIELD) or None
    blocked = _decode_blocked(fields.get(BLOCKED_FIELD), guild_id)
    user_limit = None
    if fields.get(USER_LIMIT_FIELD):
        try:
            user_limit = int(fields[USER_LIMIT_FIELD])
        except ValueError:
            log.warning(
                "guild %s: ignoring unreadable user_limit %r", guild_id, fields[USER_LIMIT_FIELD]
            )
    # Only `off` turns it off: an unreadable value keeps the card's template.
    quality_prefix = fields.get(QUALITY_PREFIX_FIELD) != "off"
    return GuildSettings(model=model, blocked_tags=blocked, user_limit=user_limit,
                         quality_prefix=quality_prefix,
                         safety=safety_from_value(fields.get(SAFETY_FIELD), guild_id))


def _decode_blocked(value: str | bytes | None, guild_id: int) -> tuple[str, ...]:
    if not value:
        return ()
    try:
        items = json.loads(value)
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        log.warning("guild %s: ignoring unreadable blocked tags %r", guild_id, value)
        return ()
    return tuple(items)


# --- writing ----------------------------------------------------------------------------------


async def forget(redis: Redis, keys: Keys, guild_id: int) -> None:
    """Delete the server's settings: the bot was removed from it. (Added back, it starts
    afresh, as a server that never chose anything.)"""
    await redis.delete(keys.guild(guild_id))


async def set_model(redis: Redis, keys: Keys, guild_id: int, model_id: str | None) -> None:
    """Make `model_id` the server's default; None goes back to the bot's default."""
    if model_id is None:
        await redis.hdel(keys.guild(guild_id), MODEL_FIELD)
    else:
        await redis.hset(keys.guild(guild_id), MODEL_FIELD, model_id)


async def set_quality_prefix(redis: Redis, keys: Keys, guild_id: int, on: bool) -> None:
    """Whether captions start with the model card's quality tags in this server; on is the
    default, so turning it on again deletes the field."""
    if on:
        await redis.hdel(keys.guild(guild_id), QUALITY_PREFIX_FIELD)
    else:
        await redis.hset(keys.guild(guild_id), QUALITY_PREFIX_FIELD, "off")


async def set_user_limit(redis: Redis, keys: Keys, guild_id: int, limit: int | None) -> None:
    """Cap each user's queued + running jobs in this server; None goes back to the bot's cap
    (`queue.user_limit`). `/queue limit` owns this setting."""
    if limit is None:
        await redis.hdel(keys.guild(guild_id), USER_LIMIT_FIELD)
    else:
        await redis.hset(keys.guild(guild_id), USER_LIMIT_FIELD, str(limit))


def canonical_tags(text: str) -> list[str]:
    """Tags as `/model block` stores them and `policy.check_caption` compares them:
    canonical form, namespaced tags as `ns:value` (`artist:x`), ratings as their name. A
    leading `-` is ignored: blocking `-gore` blocks `gore`."""
    prompt = tags.parse_tags(text)
    return list(
        dict.fromkeys(
            [
                *([prompt.rating.value] if prompt.rating else []),
                *prompt.tags,
                *(f"artist:{a}" for a in prompt.artists),
                *(f"{n}:{v}" for n, v in prompt.namespaced),
                *prompt.negatives,
            ]
        )
    )


async def block(redis: Redis, keys: Keys, guild_id: int, new: Iterable[str]) -> tuple[str, ...]:
    """Add canonical tags to the server's block list; returns the whole list.
    Raises UserFacingError when the list would grow past MAX_BLOCKED_TAGS."""
    wanted = list(new)

    def add(current: list[str]) -> list[str]:
        merged = list(dict.fromkeys([*current, *wanted]))
        if len(merged) > MAX_BLOCKED_TAGS:
            raise UserFacingError(
                f"A server can block at most {MAX_BLOCKED_TAGS} tags; this would make "
                f"{len(merged)}. Unblock some first."
            )
        return merged

    return await _update_blocked(redis, keys, guild_id, add)


async def unblock(
    redis: Redis, keys: Keys, guild_id: int, old: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Remove canonical tags from the server's block list; returns (the ones that were
    blocked and no longer are, what is still blocked)."""
    gone = set(old)
    lifted: list[str] = []

    def remove(current: list[str]) -> list[str]:
        lifted[:] = [t for t in current if t in gone]  # a WATCH retry recomputes it
        return [t for t in current if t not in gone]

    remaining = await _update_blocked(redis, keys, guild_id, remove)
    return tuple(lifted), remaining


async def _update_blocked(
    redis: Redis, keys: Keys, guild_id: int, change: Callable[[list[str]], list[str]]
) -> tuple[str, ...]:
    """Read-modify-write of the block list under WATCH, so two admins editing it at once
    both get their change (the loser of the race retries on the winner's list)."""
    key = keys.guild(guild_id)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                current = list(_decode_blocked(await pipe.hget(key, BLOCKED_FIELD), guild_id))
                updated = change(current)
                pipe.multi()
                if updated:
                    pipe.hset(key, BLOCKED_FIELD, json.dumps(updated))
                else:
                    pipe.hdel(key, BLOCKED_FIELD)
                await pipe.execute()
                return tuple(updated)
            except WatchError:
                continue
