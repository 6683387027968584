"""The worker loop's upkeep around `Worker.process`'s steps: the jobs held (leases, cancels),
Redis waited out, how a job ends when it is not posted, heartbeats, and fault points."""
