"""The bot's metrics (ponybot_core/metrics.py defines them): every interaction and refusal, the
time to acknowledge each, and the queue's gauges read from Redis at scrape time.

The acknowledgement is timed where discord.py lets an application watch its HTTP requests
(`Client(http_trace=...)`, an aiohttp `TraceConfig`): the interaction callback's response,
timed from the interaction id's timestamp - Discord's own clock, the one its 3 seconds run on.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from types import SimpleNamespace

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from bot.errors import UserFacingError
from bot.guild_settings import SettingsUnavailable
from ponybot_core import metrics
from ponybot_core.config import MetricsConfig
from ponybot_core.custom_ids import PREFIX, Action
from ponybot_core.queue import QueueReads, UserLimitReached
from ponybot_core.queue.reads import Waiting

# The interaction callback, as discord.py posts it: /interactions/{id}/{token}/callback.
CALLBACK = re.compile(r"/interactions/(?P<id>[0-9]{1,20})/[^/]+/callback$")
# Interactions remembered between their arrival and their acknowledgement (for the label);
# one never acknowledged is forgotten, oldest first, past this many.
PENDING_MAX = 4096
# A scrape waits this long at most for the queue's gauges (then leaves them out).
QUEUE_READ_TIMEOUT_S = 2.0


def command_label(interaction: discord.Interaction) -> str:
    """A bounded name for what was used: a registered command's name, or a button's or a form's
    action (`button:reroll`); `other` for anything else."""
    if interaction.type is discord.InteractionType.application_command:
        command = interaction.command
        return command.qualified_name if command is not None else "other"
    custom_id = dict(interaction.data or {}).get("custom_id")
    kind = "form" if interaction.type is discord.InteractionType.modal_submit else "button"
    parts = str(custom_id).split(":")
    if len(parts) >= 2 and parts[0] == PREFIX and parts[1] in set(Action):
        return f"{kind}:{parts[1]}"
    return "other"


def refusal_reason(error: BaseException, *, unavailable: bool) -> str:
    """Why an interaction was refused, from a small fixed set. `unavailable`: the queue could
    not be reached (bot.answering decides what that is)."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if unavailable:
        return "queue_unavailable"
    if isinstance(error, SettingsUnavailable):
        return "settings_unavailable"
    if isinstance(error.__cause__, UserLimitReached):
        return "user_limit"
    if isinstance(error, UserFacingError):
        return "invalid_request"
    if isinstance(error, app_commands.CheckFailure):
        return "not_allowed"
    return "internal_error"


def refused(interaction: discord.Interaction, error: BaseException, *,
            unavailable: bool) -> None:
    """Count a refusal (bot.answering.what_to_say calls this for every one it words)."""
    metrics.REFUSALS.labels(command=command_label(interaction),
                            reason=refusal_reason(error, unavailable=unavailable)).inc()


class Acknowledgements:
    """Counts interactions as they arrive and times their acknowledgement."""

    def __init__(self) -> None:
        self.pending: OrderedDict[int, str] = OrderedDict()
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_end.append(self._on_request_end)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is discord.InteractionType.autocomplete:
            return  # keystrokes, not requests
        label = command_label(interaction)
        metrics.INTERACTIONS.labels(command=label).inc()
        self.pending[interaction.id] = label
        while len(self.pending) > PENDING_MAX:
            self.pending.popitem(last=False)

    async def _on_request_end(self, session: aiohttp.ClientSession, context: SimpleNamespace,
                              params: aiohttp.TraceRequestEndParams) -> None:
        found = CALLBACK.search(params.url.path)
        if found is None or params.method != "POST" or params.response.status >= 400:
            return
        interaction_id = int(found["id"])
        label = self.pending.pop(interaction_id, None)
        if label is None:
            return  # an autocomplete's answer, or one forgotten
        waited = time.time() - discord.utils.snowflake_time(interaction_id).timestamp()
        metrics.ACK_SECONDS.labels(command=label).observe(max(0.0, waited))


def instrument(bot: commands.Bot | commands.AutoShardedBot) -> Acknowledgements:
    """Count `bot`'s interactions and time their acknowledgements; call it before login.
    The trace is discord.py's `http_trace` option, which its HTTP client reads at login."""
    acknowledgements = Acknowledgements()
    bot.http.http_trace = acknowledgements.trace
    bot.add_listener(acknowledgements.on_interaction, "on_interaction")
    return acknowledgements


Reading = tuple[Waiting, tuple[bool, set[int]]]


class QueueGauges(Collector):
    """The queue's depth and oldest wait per model and the paused servers, read from Redis on
    the bot's event loop when Prometheus scrapes (a bounded read: `waiting_by_model`). One
    read at a time: scrapes that arrive while one runs, or within `reuse_s` of its end, share
    its result, so however many scrape at once or in a loop, the bot's loop and its Redis pool
    run at most one read (its commands one after another, on one pooled connection) per
    `reuse_s`."""

    NAMES = (metrics.QUEUE_JOBS, metrics.QUEUE_DEPTH, metrics.QUEUE_OLDEST_WAIT,
             metrics.PAUSED_SERVERS, metrics.PAUSED_GLOBALLY)

    def __init__(self, reads: QueueReads, loop: asyncio.AbstractEventLoop, *,
                 reuse_s: float = MetricsConfig().queue_read_reuse_s) -> None:
        self.reads = reads
        self.loop = loop
        self.reuse_s = reuse_s
        self._lock = threading.Lock()
        self._last: tuple[float, Reading | None] = (float("-inf"), None)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return metrics.families(self.NAMES)

    def _reading(self) -> Reading | None:
        """The latest read, made now unless one ended after this scrape arrived (it waited
        for it) or within `reuse_s` before; None when Redis or the loop is away (/healthz
        says which)."""
        arrived = time.monotonic()
        with self._lock:
            at, reading = self._last
            if at >= arrived or arrived - at < self.reuse_s:
                return reading

            async def read() -> Reading:
                return await self.reads.waiting_by_model(), await self.reads.paused()

            try:
                reading = metrics.on_loop(self.loop, read, QUEUE_READ_TIMEOUT_S)
            except Exception:
                reading = None  # no stale numbers
            self._last = (time.monotonic(), reading)
            return reading

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reading = self._reading()
        if reading is None:
            return
        waiting, (paused_all, paused) = reading
        now = time.time()
        jobs, depth, oldest, servers, everything = (metrics.gauge(n) for n in self.NAMES)
        jobs.add_metric([], waiting.jobs)
        for model, count in sorted(waiting.by_model.items()):
            depth.add_metric([model], count)
        for model, at in sorted(waiting.oldest.items()):
            oldest.add_metric([model], max(0.0, now - at))
        servers.add_metric([], len(paused))
        everything.add_metric([], float(paused_all))
        yield from (jobs, depth, oldest, servers, everything)


def serve(config: MetricsConfig, reads: QueueReads, redis: Redis) -> metrics.MetricsServer | None:
    """The bot process's /metrics and /healthz (call it on the bot's event loop)."""
    gauges = QueueGauges(reads, asyncio.get_running_loop(), reuse_s=config.queue_read_reuse_s)
    return metrics.serve(config, "bot", redis=redis, collectors=[gauges])
