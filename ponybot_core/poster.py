"""Posting job results and notices to Discord through discord.py (it owns HTTP and limits).

A result goes into the interaction's own message (the queued message the bot sent), edited with
the interaction token. When that token has expired (15 min) or the message is gone, the result
is posted in the channel with the bot token instead, replying to the user with a mention.

Posting twice must never show twice. Editing the same message again shows one result; a channel
post carries a nonce made from the job id with `enforce_nonce`, so Discord answers a repeat
within a few minutes with the first message instead of a new one; and a worker that takes over
a job that may have been posted asks Discord first (`find_posted`).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import discord

from ponybot_core.job import Job
from ponybot_core.logs import JobLog
from ponybot_core.messages import progress_text

log = logging.getLogger(__name__)

# How far back in a channel to look for a job's result before posting it again.
_HISTORY_LOOKBACK = 100
# Discord error codes that mean "the interaction's message cannot be edited any more".
_UNKNOWN_WEBHOOK = 10015
_UNKNOWN_MESSAGE = 10008
_INVALID_WEBHOOK_TOKEN = 50027
_REQUEST_TOO_LARGE = 40005


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes

    def to_file(self) -> discord.File:
        # A discord.File is consumed by one request; build a fresh one per attempt.
        return discord.File(io.BytesIO(self.data), filename=self.filename)


@dataclass(frozen=True)
class Post:
    content: str
    embed: discord.Embed | None
    attachments: list[Attachment]
    # None clears the queued message's buttons (Cancel) when the result replaces it.
    view: discord.ui.View | None = None


class PostFailed(Exception):
    """Discord refused the post. `permanent` = retrying the same post cannot succeed;
    `too_large` = the request was over Discord's size cap (send smaller files)."""

    def __init__(self, message: str, *, permanent: bool, too_large: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.too_large = too_large


class Poster:
    def __init__(self, client: discord.Client) -> None:
        # A logged-in but not connected client: REST only, with discord.py's rate limiting.
        self.client = client

    async def post(self, job: Job, message_id: int | None, post: Post, *,
                      nonce: str | None = None) -> int:
        """Put the result in front of the user; returns the id of the message that shows it.
        `nonce` (at most 25 characters) makes a repeated channel post return the first one."""
        jlog = JobLog(log, job.id)
        if message_id is not None and job.token_usable(time.time()):
            try:
                return await self._edit_interaction_message(job, message_id, post)
            except discord.HTTPException as exc:
                if not _token_or_message_gone(exc):
                    raise _failed(exc) from exc
                jlog.info("interaction message not editable (%s); posting in the channel", exc.code)
        try:
            return await self._post_in_channel(job, message_id, post, nonce or f"r{job.id}")
        except discord.HTTPException as exc:
            raise _failed(exc) from exc

    async def find_posted(self, job: Job, message_id: int | None) -> int | None:
        """The message that already shows the job's result, if any: the queued message edited
        into the result, or a channel post. Raises discord.HTTPException when Discord cannot
        be asked (the caller tries again later)."""
        def shows_result(message: discord.Message | discord.WebhookMessage) -> bool:
            # A spoilered picture (the picture check, inference/safety) is `SPOILER_pony_…`.
            return any(a.filename.removeprefix("SPOILER_").startswith(f"pony_{job.id}_")
                       for a in message.attachments)

        if message_id is not None and job.token_usable(time.time()):
            webhook = self._interaction_webhook(job)
            try:
                if shows_result(await webhook.fetch_message(message_id)):
                    return message_id
            except discord.HTTPException as exc:
                if not _token_or_message_gone(exc):
                    raise
        me = self.client.user
        if me is None:  # a Poster's client is logged in (`logged_in_client`, the bot)
            raise RuntimeError("finding a posted result needs a logged-in client")
        channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        asked = dt.datetime.fromtimestamp(job.created_at - 1, tz=dt.UTC)
        after = discord.Object(discord.utils.time_snowflake(asked))
        async for message in channel.history(limit=_HISTORY_LOOKBACK, after=after):
            if message.author.id == me.id and shows_result(message):
                return message.id
        return None

    def _interaction_webhook(self, job: Job) -> discord.Webhook:
        """The interaction's token as the application webhook it is (it may send ephemeral
        messages; discord.py's partial webhooks default to the incoming kind)."""
        webhook = discord.Webhook.partial(job.application_id, job.interaction_token,
                                          client=self.client)
        webhook.type = discord.WebhookType.application
        return webhook

    async def _edit_interaction_message(self, job: Job, message_id: int, post: Post) -> int:
        webhook = self._interaction_webhook(job)
        message = await webhook.edit_message(
            message_id,
            content=post.content,
            embed=post.embed,
            attachments=[a.to_file() for a in post.attachments],
            view=post.view,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        return message.id

    async def _post_in_channel(self, job: Job, message_id: int | None, post: Post,
                               nonce: str) -> int:
        channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        reference = (
            discord.MessageReference(
                message_id=message_id, channel_id=job.channel_id, fail_if_not_exists=False
            )
            if message_id is not None
            else None
        )
        message = await channel.send(
            content=post.content,
            # send() takes None for "none" (its implementation's signature says so); only its
            # overloads leave None out.
            embed=post.embed,  # type: ignore[arg-type]  # None: no embed (see above)
            files=[a.to_file() for a in post.attachments],
            view=post.view,  # type: ignore[arg-type]  # None: no buttons (see above)
            reference=reference,  # type: ignore[arg-type]  # None: not a reply (see above)
            nonce=nonce,
            allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(job.user_id)]
            ),
        )
        return message.id

    async def edit_queued(self, job: Job, message_id: int, content: str) -> bool:
        """Update the queued message's text in place (position changes): never posts anew,
        keeps its buttons; False when the token has expired or the edit failed."""
        return await self._with_token(job, "position edit", lambda webhook: webhook.edit_message(
            message_id, content=content, allowed_mentions=discord.AllowedMentions.none()))

    async def show_progress(self, job: Job, message_id: int, step: int, total: int,
                            preview: bytes | None) -> None:
        """"sampling n/N" and a small preview on the queued message; keeps its Cancel button.
        Raises on failure: the progress reporter counts failures and gives up on the job."""
        webhook = self._interaction_webhook(job)
        files = [Attachment("progress.jpg", preview).to_file()] if preview else []
        await webhook.edit_message(message_id, content=progress_text(job, step, total),
                                   attachments=files,
                                   allowed_mentions=discord.AllowedMentions.none())

    async def whisper(self, job: Job, content: str) -> bool:
        """A message only the user sees (an ephemeral followup through the interaction token),
        leaving the job's own message as it is; False when the token is gone or it failed."""
        return await self._with_token(job, "private notice", lambda webhook: webhook.send(
            content, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()))

    async def _with_token(self, job: Job, what: str,
                          call: Callable[[discord.Webhook], Awaitable[object]]) -> bool:
        """`call` with the interaction's webhook while its token lives; False when it has
        expired or Discord refused (logged)."""
        if not job.token_usable(time.time()):
            return False
        try:
            await call(self._interaction_webhook(job))
        except discord.HTTPException as exc:
            JobLog(log, job.id).info("%s failed: %s", what, exc)
            return False
        return True

    async def tell(self, job: Job, message_id: int | None, content: str) -> None:
        """Best effort notice (failures, cancellations): never raises."""
        try:
            await self.post(job, message_id, Post(content=content, embed=None, attachments=[]),
                               nonce=f"t{job.id}")
        except Exception as exc:
            JobLog(log, job.id).warning("could not tell the user %r: %s", content[:80], exc)


def _token_or_message_gone(exc: discord.HTTPException) -> bool:
    return exc.code in (_UNKNOWN_WEBHOOK, _UNKNOWN_MESSAGE, _INVALID_WEBHOOK_TOKEN) or isinstance(
        exc, discord.NotFound
    )


def _failed(exc: discord.HTTPException) -> PostFailed:
    # discord.py already retried 5xx and waited out 429s; a 4xx will not get better.
    too_large = exc.status == 413 or exc.code == _REQUEST_TOO_LARGE
    permanent = 400 <= exc.status < 500 and exc.status != 429 and not too_large
    return PostFailed(f"Discord answered {exc.status} (code {exc.code}): {exc.text}",
                      permanent=permanent, too_large=too_large)
