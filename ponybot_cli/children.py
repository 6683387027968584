"""Child processes that cannot outlive `ponybot up`, even when it is killed with SIGKILL and
has no chance to stop them: on Linux the kernel sends them SIGTERM when their parent dies."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A `preexec_fn` for `subprocess.Popen`. The kernel ties the signal to the *thread* that
    forked, so only use it for children started from the main thread."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
