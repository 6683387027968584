"""Posting job results and notices to Discord through discord.py (it owns HTTP and limits).

A result goes into the interaction's own message (the queued message the bot sent), edited with
the interaction token. When that token has expired (15 min) or the message is gone, the result
is posted in the channel with the bot token instead, replying to the user with a mention.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass

import discord

from core.job import Job
from core.logs import JobLog
from core.messages import progress_text

log = logging.getLogger(__name__)

# Edit through the token only while it has comfortably more than this left.
_TOKEN_MARGIN_S = 30.0
# Discord error codes that mean "the interaction's message cannot be edited any more".
_UNKNOWN_WEBHOOK = 10015
_UNKNOWN_MESSAGE = 10008
_INVALID_WEBHOOK_TOKEN = 50027


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
    """Discord refused the post. `permanent` = retrying the same post cannot succeed."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Poster:
    def __init__(self, client: discord.Client) -> None:
        # A logged-in but not connected client: REST only, with discord.py's rate limiting.
        self.client = client

    async def deliver(self, job: Job, message_id: int | None, post: Post) -> int:
        """Put the result in front of the user; returns the id of the message that shows it."""
        jlog = JobLog(log, job.id)
        if message_id is not None and time.time() < job.token_expires_at() - _TOKEN_MARGIN_S:
            try:
                return await self._edit_interaction_message(job, message_id, post)
            except discord.HTTPException as exc:
                if not _token_or_message_gone(exc):
                    raise _failed(exc) from exc
                jlog.info("interaction message not editable (%s); posting in the channel", exc.code)
        try:
            return await self._post_in_channel(job, message_id, post)
        except discord.HTTPException as exc:
            raise _failed(exc) from exc

    async def _edit_interaction_message(self, job: Job, message_id: int, post: Post) -> int:
        webhook = discord.Webhook.partial(job.application_id, job.interaction_token,
                                          client=self.client)
        message = await webhook.edit_message(
            message_id,
            content=post.content,
            embed=post.embed,
            attachments=[a.to_file() for a in post.attachments],
            view=post.view,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        return message.id

    async def _post_in_channel(self, job: Job, message_id: int | None, post: Post) -> int:
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
            embed=post.embed,
            files=[a.to_file() for a in post.attachments],
            view=post.view,  # type: ignore[arg-type]
            reference=reference,  # type: ignore[arg-type]
            allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(job.user_id)]
            ),
        )
        return message.id

    async def edit_queued(self, job: Job, message_id: int, content: str) -> bool:
        """Update the queued message's text in place (position changes): never posts anew,
        keeps its buttons; False when the token has expired or the edit failed."""
        if time.time() >= job.token_expires_at() - _TOKEN_MARGIN_S:
            return False
        webhook = discord.Webhook.partial(job.application_id, job.interaction_token,
                                          client=self.client)
        try:
            await webhook.edit_message(message_id, content=content,
                                       allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            JobLog(log, job.id).info("position edit failed: %s", exc)
            return False
        return True

    async def show_progress(self, job: Job, message_id: int, step: int, total: int,
                            preview: bytes | None) -> None:
        """"sampling n/N" and a small preview on the queued message; keeps its Cancel button.
        Raises on failure: the progress reporter counts failures and gives up on the job."""
        webhook = discord.Webhook.partial(job.application_id, job.interaction_token,
                                          client=self.client)
        files = [Attachment("progress.jpg", preview).to_file()] if preview else []
        await webhook.edit_message(message_id, content=progress_text(job, step, total),
                                   attachments=files,
                                   allowed_mentions=discord.AllowedMentions.none())

    async def tell(self, job: Job, message_id: int | None, content: str) -> None:
        """Best effort notice (failures, cancellations): never raises."""
        try:
            await self.deliver(job, message_id, Post(content=content, embed=None, attachments=[]))
        except Exception as exc:
            JobLog(log, job.id).warning("could not tell the user %r: %s", content[:80], exc)


def _token_or_message_gone(exc: discord.HTTPException) -> bool:
    return exc.code in (_UNKNOWN_WEBHOOK, _UNKNOWN_MESSAGE, _INVALID_WEBHOOK_TOKEN) or isinstance(
        exc, discord.NotFound
    )


def _failed(exc: discord.HTTPException) -> PostFailed:
    # discord.py already retried 5xx and waited out 429s; a 4xx will not get better.
    permanent = 400 <= exc.status < 500 and exc.status != 429
    return PostFailed(f"Discord answered {exc.status} (code {exc.code}): {exc.text}",
                      permanent=permanent)
