"""Every Redis key the project uses, built in one place.

Everything hangs off one prefix so several bots can share a Redis and an admin can see what is
ours with `SCAN MATCH ponybot:*`.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKER_GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    prefix: str = "ponybot"

    @property
    def stream(self) -> str:
        """The job stream: entries are `{"job": <Job JSON>}`, consumed by the worker group."""
        return f"{self.prefix}:jobs"

    @property
    def dead(self) -> str:
        """Dead letters: jobs that failed too often, kept for the admin."""
        return f"{self.prefix}:dead"

    def job(self, job_id: str) -> str:
        """Hash of a job's state: job JSON, entry id, message id, attempts, status."""
        return f"{self.prefix}:job:{job_id}"

    def guild(self, guild_id: int | None) -> str:
        """Hash of a server's settings: default model, blocked tags, per-user limit."""
        return f"{self.prefix}:guild:{guild_id or 0}"

    def worker(self, name: str) -> str:
        """A worker's heartbeat (JSON, with a TTL)."""
        return f"{self.prefix}:worker:{name}"

    @property
    def workers_pattern(self) -> str:
        return f"{self.prefix}:worker:*"
