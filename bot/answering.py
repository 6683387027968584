"""One way to answer a failed command or click: the user is told privately what went wrong, and
the log keeps the why. discord.py sends app-command errors to `tree.on_error`, but only logs the
errors of `DynamicItem` callbacks, so both go through `answer_errors`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import discord
from discord import app_commands
from redis import exceptions as redis_errors

from bot import metrics
from bot.errors import QueueUnavailable, UserFacingError

log = logging.getLogger(__name__)

OUR_FAULT = "Something went wrong on our side; nothing was queued. Please try again."

# The Redis errors that mean the queue cannot be reached or written right now: down, restarting
# or loading (ConnectionError and its kinds), too slow, failing over to a replica, full. Not
# every RedisError (Redis refusing a command of ours is a bug, OUR_FAULT), and not every
# OSError: Pillow's "image file is truncated" is one, and so is a full disk.
REDIS_OUTAGES: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError,
    redis_errors.TryAgainError, redis_errors.ClusterDownError, redis_errors.OutOfMemoryError)


def what_to_say(interaction: discord.Interaction, error: BaseException) -> str:
    """The sentence for the user; logs what they are not told."""
    what = interaction.command.qualified_name if interaction.command else \
        dict(interaction.data or {}).get("custom_id")
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    metrics.refused(interaction, error,
                    unavailable=isinstance(error, (*REDIS_OUTAGES, QueueUnavailable)))
    if isinstance(error, (*REDIS_OUTAGES, QueueUnavailable)):
        log.warning("%s refused, queue unavailable: %r", what, error.__cause__ or error)
        return str(QueueUnavailable())
    if isinstance(error, UserFacingError):
        return str(error)
    if isinstance(error, app_commands.CheckFailure):
        return str(error) or "You are not allowed to use this command here."
    log.error("%s failed", what, exc_info=error)
    return OUR_FAULT


async def send_ephemeral(interaction: discord.Interaction, message: str) -> None:
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell the user: %s", message)


@contextlib.asynccontextmanager
async def answer_errors(interaction: discord.Interaction) -> AsyncIterator[None]:
    """Run a button's action; any failure is answered privately (see `what_to_say`)."""
    try:
        yield
    except Exception as exc:
        await send_ephemeral(interaction, what_to_say(interaction, exc))
