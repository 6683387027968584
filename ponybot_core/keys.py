"""Every Redis key the project uses, built in one place.

Everything hangs off one prefix so several bots can share a Redis and an admin can see what is
ours with `SCAN MATCH ponybot:*`. The queue's Lua scripts never build a key: they get them
through KEYS, or read names that were built here and stored as data (the ring holds waiting-list
keys, a waiting list holds job-hash keys, a job hash names its own list, user set and token key).
"""

from __future__ import annotations

from dataclasses import dataclass

from ponybot_core.redis_client import as_str

WORKER_GROUP = "workers"
# The member of `Keys.paused` that pauses every server. (The Lua scripts, which cannot import
# it, spell it '*' too.)
ALL_SERVERS = "*"


@dataclass(frozen=True)
class Keys:
    prefix: str = "ponybot"

    @property
    def stream(self) -> str:
        """Running jobs: the take script adds a job here and reads it into the group in the
        same step, so the group's pending list is exactly what workers hold (with leases)."""
        return f"{self.prefix}:jobs"

    def waiting(self, guild_id: int | str) -> str:
        """A server's queued jobs (their hash keys), oldest first (DMs are server 0)."""
        return f"{self.prefix}:waiting:{guild_id}"

    def waiting_server(self, waiting_key: str | bytes) -> int:
        """The server id in a key built by `waiting` (0: DMs)."""
        return int(as_str(waiting_key).removeprefix(f"{self.prefix}:waiting:"))

    @property
    def ring(self) -> str:
        """The waiting-list keys of servers that have queued jobs and are not paused, in
        round-robin order: the head is served next. Paused servers are out of the ring, so
        they cost the others nothing however many there are."""
        return f"{self.prefix}:ring"

    @property
    def paused(self) -> str:
        """Paused server ids; the member `ALL_SERVERS` pauses everything."""
        return f"{self.prefix}:paused"

    def user_jobs(self, guild_id: int | None, user_id: int) -> str:
        """A user's queued and running job ids in one server (for the per-user cap)."""
        return f"{self.prefix}:user:{guild_id or 0}:{user_id}"

    @property
    def wake(self) -> str:
        """Tokens pushed on enqueue and resume so idle workers wake up at once."""
        return f"{self.prefix}:wake"

    @property
    def durations(self) -> str:
        """Recent jobs' worker seconds per plain job's worth of work, newest first, for ETAs."""
        return f"{self.prefix}:durations"

    def token(self, job_id: str) -> str:
        """A job's interaction token, kept only while Discord accepts it (15 min), and never
        longer than its job's hash once the job has ended."""
        return f"{self.prefix}:token:{job_id}"

    @property
    def dead(self) -> str:
        """Dead letters: jobs that failed too often, kept for the admin."""
        return f"{self.prefix}:dead"

    def job(self, job_id: str) -> str:
        """Hash of a job's state (`ponybot_core.queue.state.JobState`)."""
        return f"{self.prefix}:job:{job_id}"

    def job_id(self, job_key: str | bytes) -> str:
        """The job id in a key built by `job` (waiting lists hold keys)."""
        return as_str(job_key).removeprefix(f"{self.prefix}:job:")

    def guild(self, guild_id: int | None) -> str:
        """Hash of a server's settings: default model, blocked tags, per-user limit."""
        return f"{self.prefix}:guild:{guild_id or 0}"

    # Saved settings (`bot.saved_settings`) keep the `defaults` in their key names: that is
    # how they were stored before the code said "saved settings", and renaming stored keys
    # would lose every user's.

    def user_settings(self, guild_id: int | None, user_id: int) -> str:
        """Hash of one user's saved `/settings` in one server (DMs are server 0)."""
        return f"{self.prefix}:defaults:{guild_id or 0}:user:{user_id}"

    def channel_settings(self, guild_id: int | None, channel_id: int) -> str:
        """Hash of one channel's saved `/settings channel`."""
        return f"{self.prefix}:defaults:{guild_id or 0}:channel:{channel_id}"

    def saved_settings_index(self, guild_id: int) -> str:
        """Set of the `user_settings` and `channel_settings` keys saved in one server, so
        that the bot's removal from it deletes them without a SCAN of the keyspace."""
        return f"{self.prefix}:defaults:{guild_id}:index"

    def saved_settings_guild(self, key: str | bytes) -> int | None:
        """The server a `user_settings` or `channel_settings` key belongs to; None for any
        other key (an index, a DM's settings)."""
        parts = as_str(key).removeprefix(f"{self.prefix}:defaults:").split(":")
        if len(parts) != 3 or parts[1] not in ("user", "channel") or not parts[0].isdigit():
            return None
        return int(parts[0]) or None

    @property
    def saved_settings_indexed(self) -> str:
        """Set once the settings saved before servers had a `saved_settings_index` are in
        theirs (one SCAN per deployment, by the first bot that knows about indexes)."""
        return f"{self.prefix}:defaults_indexed"

    def drawable(self, parameters_id: str) -> str:
        """Parameters the Parameters menu read from a picture, kept (with a TTL) for its
        **Draw this** button, whose custom_id names them."""
        return f"{self.prefix}:drawable:{parameters_id}"

    def commands_digest(self, application_id: int) -> str:
        """What the slash commands looked like when last synced (sync only on change)."""
        return f"{self.prefix}:commands_digest:{application_id}"

    def worker(self, name: str) -> str:
        """A worker's heartbeat (JSON, with a TTL)."""
        return f"{self.prefix}:worker:{name}"

    @property
    def workers(self) -> str:
        """Sorted set of worker names scored by their last beat (epoch seconds): the list of
        workers without a SCAN of the keyspace, and when the last one was seen."""
        return f"{self.prefix}:workers"
