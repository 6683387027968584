"""The worker's metrics (ponybot_core/metrics.py defines them): what each pipeline call drew and
how long it took, how long its jobs waited, and the device's memory read at scrape time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence

import torch
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from ponybot_core import metrics
from ponybot_core.config import Config, MetricsConfig
from ponybot_core.job import Job


def size_label(config: Config, job: Job) -> str:
    """The configured size a job was drawn at (`square`, ...), `hires` for a second pass, or
    `other`: bounded by the config, whatever sizes jobs carry."""
    if job.hires is not None:
        return "hires"
    try:
        sizes = config.model_sizes(config.model(job.model_id))
    except KeyError:
        return "other"
    for size, dims in sizes.items():
        if (dims.width, dims.height) == (job.width, job.height):
            return size.value
    return "other"


def drawn(config: Config, jobs: Sequence[Job], sample_s: float, *,
          attempts: Sequence[int]) -> None:
    """One pipeline call sampled `jobs` in `sample_s` seconds: its batch sizes, each image's
    share of the time, and how long each job on its first try (`attempts`) waited from its
    creation to its sampling."""
    images = sum(job.count for job in jobs)
    if not jobs or images == 0:
        return
    first = jobs[0]  # a call never mixes models or sizes (drawing/calls.py)
    metrics.BATCH_JOBS.observe(len(jobs))
    metrics.BATCH_IMAGES.observe(images)
    per_image = metrics.SAMPLING_SECONDS.labels(model=first.model_id,
                                                size=size_label(config, first))
    for _ in range(images):
        per_image.observe(sample_s / images)
    started = time.time() - sample_s
    waited = metrics.QUEUE_WAIT_SECONDS.labels(model=first.model_id)
    for job, attempt in zip(jobs, attempts, strict=True):
        if attempt <= 1:
            waited.observe(max(0.0, started - job.created_at))


class DeviceMemory(Collector):
    """The worker's accelerator memory, read when Prometheus scrapes (CUDA only; on the CPU
    the process's resident memory is prometheus_client's `process_resident_memory_bytes`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return metrics.families([metrics.DEVICE_MEMORY])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = metrics.gauge(metrics.DEVICE_MEMORY)
        if self.device.type == "cuda" and torch.cuda.is_available():
            name = str(self.device)
            free, total = torch.cuda.mem_get_info(self.device)
            family.add_metric([name, "allocated"], torch.cuda.memory_allocated(self.device))
            family.add_metric([name, "reserved"], torch.cuda.memory_reserved(self.device))
            family.add_metric([name, "free"], free)
            family.add_metric([name, "total"], total)
        yield family


def serve(config: MetricsConfig, redis: Redis,
          device: torch.device) -> metrics.MetricsServer | None:
    """The worker process's /metrics and /healthz (call it on the worker's event loop)."""
    asyncio.get_running_loop()  # the health check runs callbacks on this loop
    return metrics.serve(config, "worker", redis=redis, collectors=[DeviceMemory(device)])
