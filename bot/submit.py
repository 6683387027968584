"""One way into the queue for everything a user asks for: `/pony` and the result buttons.

The cogs translate an interaction into a request (`requester`, `channel_of`) for
ponybot_request.jobs.build_job, and queue the job it builds here.

`submit` checks the job against today's config, enqueues it under the user's cap, answers the
interaction with the queued message (position or "paused", the exact prompt, a Cancel button)
and records that message for the worker to edit. Every failure before the answer is a
`UserFacingError`, answered privately by the caller, and nothing is queued. When the answer
itself fails after queuing (Discord's 3 seconds ran out, Discord is down), the job is taken
back out of the queue: what the user saw, "the application did not respond", stays true.

Everything before the answer is time the user waits, and in a burst each round trip lets the
other commands' work in first: `/pony` reads all it needs in one pipelined round trip (`read`:
saved settings and live workers), runs the enqueue script, and answers. What can wait (the
log line, recording the message for the worker) comes after the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import discord
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot import availability, guild_settings, saved_settings
from bot.availability import WorkerRoster, Workers
from bot.errors import QueueUnavailable, UserFacingError
from bot.guild_settings import GuildSettings
from bot.saved_settings import Layers
from ponybot_core.config import Config
from ponybot_core.job import SCHEMA_VERSION, Job
from ponybot_core.keys import Keys
from ponybot_core.logs import JobLog
from ponybot_core.messages import queued_text, queued_view
from ponybot_core.queue import Enqueued, JobStatus, Producer, UserLimitReached
from ponybot_core.replicas import Replication
from ponybot_request.jobs import Channel, Requester
from ponybot_request.options import out_of_limits

log = logging.getLogger(__name__)


def requester(interaction: discord.Interaction) -> Requester:
    """Who asked, and how the answer reaches them: the interaction a worker edits."""
    return Requester(
        user_id=interaction.user.id,
        application_id=interaction.application_id,
        interaction_id=interaction.id,
        interaction_token=interaction.token,
        # Discord says with each interaction how big a file may be here (boosts raise it).
        attachment_limit=interaction.filesize_limit or None,
    )


def channel_of(interaction: discord.Interaction, server: GuildSettings) -> Channel:
    """The channel the interaction came from, as build_job weighs it."""
    return Channel(guild_id=interaction.guild_id, channel_id=interaction.channel_id or 0,
                   age_restricted=is_age_restricted(interaction.channel),
                   blocked_tags=server.blocked_tags, quality_prefix=server.quality_prefix)


def job_channel(client: discord.Client, job: Job, server: GuildSettings) -> Channel:
    """The channel a job already lives in (not the one a click or a form came from)."""
    return Channel(guild_id=job.guild_id, channel_id=job.channel_id,
                   age_restricted=is_age_restricted(client.get_channel(job.channel_id)),
                   blocked_tags=server.blocked_tags, quality_prefix=server.quality_prefix)


def is_age_restricted(channel: object) -> bool:
    """Whether a channel is age-restricted (NSFW). DMs are not, and neither is a channel the
    bot does not know: when in doubt, the stricter rules."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def check_against_config(config: Config, job: Job) -> str:
    """The model's display name, if the job is still possible with today's config (a button
    re-uses parameters chosen before a config change); raises UserFacingError if not."""
    try:
        entry = config.model(job.model_id)
    except KeyError:
        raise UserFacingError(
            f"The model `{job.model_id}` is no longer available on this bot; "
            "use /pony to pick another."
        ) from None
    problem = out_of_limits(config.limits, steps=job.steps, cfg=job.cfg, count=job.count,
                            given="this job has")
    if problem:
        raise UserFacingError(problem.replace("must be", "must now be", 1))
    return entry.name


@dataclass(frozen=True)
class Reading:
    """What `/pony` reads before it answers, read in one round trip (`Submitter.read`)."""

    layers: Layers
    workers: Workers


@dataclass(frozen=True)
class Submitter:
    """What queuing needs, and nothing else of the bot."""

    config: Config
    redis: Redis
    keys: Keys
    queue: Producer
    # Tells the rest of the bot that a job's queued message is showing (cogs.positions).
    announce: Callable[[Job, int], None]
    roster: WorkerRoster = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "roster", WorkerRoster(self.keys))

    async def read(self, interaction: discord.Interaction) -> Reading:
        """The user's, the channel's and the server's saved settings and the live workers, in
        one pipelined round trip. Redis errors propagate: callers say what failed."""
        guild_id = interaction.guild_id
        async with self.redis.pipeline(transaction=False) as pipe:
            start = saved_settings.ask_layers(pipe, self.keys, guild_id=guild_id,
                                        channel_id=interaction.channel_id,
                                        user_id=interaction.user.id)
            asked = self.roster.ask(pipe)
            replies = await pipe.execute()
        return Reading(layers=saved_settings.layers_from(self.config, replies, start,
                                                   guild_id=guild_id),
                       workers=await self.roster.answer(self.redis, asked, replies))

    async def submit(self, interaction: discord.Interaction, job: Job, *,
                     notes: Sequence[str] = (), guild: GuildSettings | None = None,
                     workers: Workers | None = None) -> None:
        """Queue `job` and answer `interaction` with its queued message (a new public
        message; its interaction token travels with the job so the worker can edit it into
        the result). `guild` and `workers` are the server's settings and the live workers when
        the caller has read them (`read`)."""
        await _submit(self, interaction, job, notes=notes, guild=guild, workers=workers)


async def _submit(bot: Submitter, interaction: discord.Interaction, job: Job, *,
                  notes: Sequence[str], guild: GuildSettings | None,
                  workers: Workers | None) -> None:
    jlog = JobLog(log, job.id)
    # 1. Still possible with today's config, and with the workers running now.
    model_name = check_against_config(bot.config, job)
    if workers is None:
        workers = await bot.roster.read(bot.redis)
    notes = (*notes, *availability.check_job(workers, bot.config, job))
    # 2. Enqueue under the user's cap (the server's `/queue limit`, else the config's).
    try:
        if guild is None:
            guild = await guild_settings.load(bot.redis, bot.keys, interaction.guild_id)
        limit = guild.user_limit or bot.config.queue.user_limit
        # What the worker's picture check does with it: the channel's age restriction (the
        # job's own channel, which is the interaction's; any other counts as not restricted)
        # and the server's `/safety` choice.
        age_restricted = job.channel_id == interaction.channel_id and \
            is_age_restricted(interaction.channel)
        job = job.model_copy(update={
            "picture_check": guild.safety.picture_check(age_restricted=age_restricted),
            # A job built from an older one (a button on an old result) keeps its version:
            # this one carries a picture check, which a version-1 worker would ignore.
            "schema_version": SCHEMA_VERSION})
        enqueued = await bot.queue.enqueue(job, user_limit=limit)
    except UserLimitReached as exc:
        raise UserFacingError(
            f"You already have {len(exc.job_ids)} job(s) queued or running here (the limit "
            f"is {exc.limit}): {', '.join(f'`{i}`' for i in exc.job_ids)}. "
            "Wait for one to finish or cancel one."
        ) from exc
    except (RedisError, OSError) as exc:
        jlog.warning("enqueue failed: %r", exc)
        raise QueueUnavailable() from exc
    if enqueued.replication is Replication.LAGGING:
        # With Sentinel, "queued" is said only of a job a replica has: a failover now would
        # promote one without it (ponybot_core/replicas.py).
        await _take_back_unreplicated(bot, job)
        raise QueueUnavailable()
    # 3. Answer with the position (or "paused"), the exact prompt and a Cancel button.
    try:
        callback = await interaction.response.send_message(
            queued_text(job, position=enqueued.position, paused=enqueued.paused,
                        model_name=model_name, notes=notes),
            view=queued_view(job.id),
        )
    except discord.HTTPException as exc:
        _log_queued(jlog, job, enqueued)
        await _take_back(bot, job, exc)
        return
    _log_queued(jlog, job, enqueued)  # after the answer: the user does not wait for it
    # 4. Record the message for the worker. If the bot never records it (a crash right here),
    #    the worker falls back to a channel post, so the job is never stuck on it.
    message_id = callback.message_id or getattr(callback.resource, "id", None)
    if message_id:
        bot.announce(job, message_id)
        try:
            await bot.queue.record_message(job.id, message_id, position=enqueued.position)
        except (RedisError, OSError):
            jlog.warning("could not record message %s; the worker will post anew", message_id)


async def _take_back_unreplicated(bot: Submitter, job: Job) -> None:
    jlog = JobLog(log, job.id)
    try:
        cancelled = await bot.queue.cancel(job.id)
    except (RedisError, OSError) as exc:
        jlog.error("no replica confirmed the job and it could not be taken back (%r); its "
                   "result will be posted in the channel", exc)
        return
    jlog.warning("no replica confirmed the job in time: taken back (it was %s), the user is "
                 "told the queue is unavailable", cancelled.was)


def _log_queued(jlog: JobLog, job: Job, enqueued: Enqueued) -> None:
    jlog.info("queued %s at %d for user=%s guild=%s model=%s paused=%s", job.kind.value,
              enqueued.position, job.user_id, job.guild_id, job.model_id, enqueued.paused)


async def _take_back(bot: Submitter, job: Job, exc: discord.HTTPException) -> None:
    """The user never saw the job queued: cancel it while it still waits."""
    jlog = JobLog(log, job.id)
    try:
        cancelled = await bot.queue.cancel(job.id)
    except (RedisError, OSError) as redis_exc:
        jlog.error("answer failed (%s) and the job could not be taken back (%s); its result "
                   "will be posted in the channel", exc, redis_exc)
        return
    if cancelled.was == JobStatus.QUEUED:
        jlog.warning("answer failed (%s): job taken back out of the queue", exc)
    else:
        jlog.warning("answer failed (%s) after a worker took the job (%s); its result will be "
                     "posted in the channel", exc, cancelled.was)
