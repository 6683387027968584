"""The `ponybot` command line: `up` (everything on one machine), `models` (find and fetch
checkpoints), `draw` (a local picture without Discord or Redis) and `check` (the doctor).

Used by neither the bot nor the worker process; it starts them, or does their work once."""
