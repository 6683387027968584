"""The model hash AUTOMATIC1111 writes into a picture's parameters (`Model hash: 67ab2fd8ec`).

A1111's "AutoV2" short hash is the first 10 hex digits of the SHA-256 of the whole checkpoint
file (`modules/sd_models.py`, `CheckpointInfo`: `self.sha256 = hashes.sha256_from_cache(...)`,
`self.shorthash = self.sha256[0:10]`; infotext `"Model hash": p.sd_model_hash`), the same
number civitai shows as "AutoV2" (Pony Diffusion V6 XL: 67AB2FD8EC). It names a *file*: a
diffusers folder has none, and A1111 writes none for it.

Hashing reads the whole file (6.5 GB for V6 XL: seconds to a minute, disk-bound), so it runs
once per file per process, in a worker thread (never on the event loop), when a job first uses
the model; the result is kept per (path, size, modification time), so a replaced file is hashed
again and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

# Read in 1 MiB blocks, like A1111's `calculate_sha256` (`blksize = 1024 * 1024`).
_BLOCK = 1024 * 1024
SHORT_HASH_DIGITS = 10


def autov2(path: Path) -> str:
    """The first 10 hex digits of the file's SHA-256 (lower case, as A1111 writes it)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()[:SHORT_HASH_DIGITS]


class ModelHashes:
    """AutoV2 hashes of model files, computed once each; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_file: dict[tuple[str, int, int], str] = {}
        self._by_model: dict[str, str] = {}
        self.computed = 0  # files hashed (for tests: "once per file")

    def compute(self, model_id: str, path: Path) -> str | None:
        """The hash of `model_id`'s file at `path` (blocking; cached); None for a folder or a
        file that cannot be read."""
        try:
            if not path.is_file():
                return None
            stat = path.stat()
        except OSError:
            return None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._by_file.get(key)
        if known is None:
            try:
                known = autov2(path)
            except OSError:
                return None
            with self._lock:
                self._by_file[key] = known
                self.computed += 1
        with self._lock:
            self._by_model[model_id] = known
        return known

    def known(self, model_id: str) -> str | None:
        """The hash `compute` found for `model_id` (non-blocking); None when it has none."""
        with self._lock:
            return self._by_model.get(model_id)


# The worker process's hashes: filled by the worker when a job uses a model, read when its
# pictures' parameters are written.
MODEL_HASHES = ModelHashes()
