"""Fault injection at named points of a job's life, for the crash tests (off unless asked).

`PONYBOT_FAULTS="after_sample=exit"` makes the worker process `os._exit` the first time it
passes `after_sample`; `=raise` raises `InjectedFault` there instead; `=exit*3` / `=raise*3`
does it the first three times, `=raise*-1` every time, and `=raise@poison` only for jobs whose
tags contain "poison". Several points are separated by commas. The points, in the order a job
passes them: after_take, sampling (inside the pipeline call, for the jobs drawn together),
after_sample, before_post (marked `posting`), after_post (on Discord, not yet recorded),
after_finish (recorded and acknowledged).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

POINTS = ("after_take", "sampling", "after_sample", "before_post", "after_post",
          "after_finish")
# The exit status of an injected crash (what a SIGKILL'd process reports, minus the signal).
EXIT_STATUS = 137


class InjectedFault(RuntimeError):
    """Raised at a point named in PONYBOT_FAULTS with `=raise`."""


@dataclass
class _Plan:
    action: str
    times: int  # -1: every time
    tag: str  # only for jobs whose tags contain it ("" = any job)


def _plans(spec: str) -> dict[str, _Plan]:
    plans = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, action = item.partition("=")
        action, _, tag = action.partition("@")
        action, _, times = action.partition("*")
        if point not in POINTS or action not in ("exit", "raise"):
            raise ValueError(f"PONYBOT_FAULTS: cannot read {item!r} (points: {POINTS})")
        plans[point] = _Plan(action, int(times or 1), tag)
    return plans


_PLANS = _plans(os.environ.get("PONYBOT_FAULTS", ""))


def arm(spec: str) -> None:
    """Replace the plan (in-process tests; processes take PONYBOT_FAULTS)."""
    _PLANS.clear()
    _PLANS.update(_plans(spec))


def fault_point(point: str, job_id: str = "", tags: str = "") -> None:
    """Crash or raise here if PONYBOT_FAULTS says so; nothing otherwise."""
    plan = _PLANS.get(point)
    if plan is None or plan.times == 0 or plan.tag not in tags:
        return
    if plan.times > 0:
        plan.times -= 1
    if plan.action == "exit":
        log.warning("fault injection: exiting at %s (job=%s)", point, job_id)
        logging.shutdown()
        os._exit(EXIT_STATUS)
    raise InjectedFault(f"injected fault at {point}")
