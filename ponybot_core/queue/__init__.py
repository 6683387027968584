"""The job queue on Redis: a small package, one side a module (as arq splits its own).

- `producer` — the bot's side: enqueue with positions and the per-user cap, edit a
  waiting job in place, cancel, pause;
- `consumer` — the workers' side: take by the queue policy, take over a dead worker's jobs,
  renew leases; each taken job is a `Delivery` that makes its own moves;
- `reads` — reading: a job's `state.JobState`, positions, the admins' snapshot;
- `state` — the job's life as a state machine, the legal moves written once;
- `lua/` — each atomic step as a script that gets every key through KEYS.

Layout (every key from `ponybot_core.keys`): one waiting list per server and a ring of the
lists that have jobs and are not paused (served round-robin, FIFO within); running jobs in a
stream with the consumer group `workers`, so a dead worker's jobs stay pending and are taken
over when their lease runs out; one hash per job; a dead-letter stream. The multi-key scripts
want one Redis (or Sentinel), not Redis Cluster.
"""

from ponybot_core.queue.consumer import Consumer, Delivery, Outcome
from ponybot_core.queue.producer import (
    Cancelled,
    Edited,
    Enqueued,
    Producer,
    UserLimitReached,
)
from ponybot_core.queue.reads import QueueReads, Snapshot
from ponybot_core.queue.state import JobState, JobStatus

__all__ = ["Cancelled", "Consumer", "Delivery", "Edited", "Enqueued", "JobState", "JobStatus",
           "Outcome", "Producer", "QueueReads", "Snapshot", "UserLimitReached"]
