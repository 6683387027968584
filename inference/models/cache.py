"""The worker's pipelines: an LRU on the device within a memory budget, a RAM tier behind it.

Three places a model can be, fastest first:

* **on the device**: ready to sample. Pipelines here are kept least-recently-used first and
  together stay within a memory budget: `worker.memory_budget_gb` (GiB), or, when that is unset,
  80 % of the GPU's memory on CUDA and no limit on CPU/MPS. A model's size is what its weights
  take at the device dtype (parameters and buffers of the UNet, VAE and text encoders, so
  an SDXL model weighs about 3x an SD 1.x one: 2.6 B against 1.07 B parameters);
  activations are what the rest of the GPU is left for.
* **in CPU RAM**: a model evicted from the device to make room is moved to the CPU and kept,
  up to `worker.ram_cache_models` of them (least recently used dropped first). Its next use
  moves it back (a warm swap: a memory copy instead of reading and converting the file).
* **on disk**: anything else; loading it is a cold load (`inference.models.loading.load_pipeline`).

On a CPU worker the device *is* the RAM: nothing is copied between tiers, but the budget (when
configured) and the RAM tier's size still decide what is kept, so a small machine can cap memory.

Loads and moves run in a thread (`asyncio.to_thread`), one at a time (a lock), so heartbeats and
leases keep flowing. A model that cannot be loaded has its reason in `.failures` and raises
`ModelLoadError`; the cache keeps serving the others. The worker samples one job at a time, so a
pipeline returned by `get` is not evicted while it is in use.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.models.device import Placement, prepare
from inference.models.loading import COMPONENTS, ModelLoadError, Pipeline, load_pipeline
from ponybot_core import metrics
from ponybot_core.config import Config, ModelEntry

log = logging.getLogger(__name__)

GIB = 1024**3
# The share of a GPU's memory the weights may take when no budget is configured.
DEFAULT_GPU_BUDGET_FRACTION = 0.8


@dataclass
class _Resident:
    """A pipeline the cache holds (on the device or in RAM) and what its weights weigh there."""

    model_id: str
    pipe: Pipeline | None
    size_bytes: int


class DeviceFull(Exception):
    """A model did not fit on the device just now (other models or a big batch held the
    memory). Not the model's fault: the job is tried again, and the message tells admins what
    to change if it keeps happening."""


def pipeline_bytes(pipe: Pipeline, dtype: torch.dtype) -> int:
    """Bytes of the weights of `pipe`'s UNet, VAE and text encoder(s) once cast to `dtype`
    (floating-point tensors at `dtype`, the others, like position ids, as they are)."""
    total = 0
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for tensor in (*module.parameters(), *module.buffers()):
            width = dtype.itemsize if tensor.is_floating_point() else tensor.element_size()
            total += tensor.numel() * width
    return total


def device_budget_bytes(memory_budget_gb: float | None, placement: Placement) -> int | None:
    """The configured budget, else 80 % of the GPU on CUDA; None = no limit."""
    if memory_budget_gb is not None:
        return int(memory_budget_gb * GIB)
    if placement.device.type == "cuda":
        total = torch.cuda.get_device_properties(placement.device).total_memory
        return int(total * DEFAULT_GPU_BUDGET_FRACTION)
    return None


def format_bytes(size: int | None) -> str:
    if size is None:
        return "unlimited"
    if size >= GIB:
        return f"{size / GIB:.2f} GiB"
    return f"{size / 1024**2:.1f} MiB"


class ModelCache:
    def __init__(self, config: Config, *, base_dir: Path, placement: Placement) -> None:
        self.config = config
        self.base_dir = base_dir
        self.placement = placement
        self.budget_bytes = device_budget_bytes(config.worker.memory_budget_gb, placement)
        self.ram_slots = config.worker.ram_cache_models
        # Least recently used first.
        self._device: OrderedDict[str, _Resident] = OrderedDict()
        self._ram: OrderedDict[str, _Resident] = OrderedDict()
        self._failures: dict[str, str] = {}
        self._load_s: dict[str, float] = {}
        self._lock = asyncio.Lock()

    # --- what is where ----------------------------------------------------------------------

    @property
    def loaded(self) -> list[str]:
        """Model ids on the device, most recently used first."""
        return list(reversed(self._device))

    @property
    def in_ram(self) -> list[str]:
        """Model ids evicted to CPU RAM (a warm swap away), most recently used first."""
        return list(reversed(self._ram))

    @property
    def failures(self) -> dict[str, str]:
        """Model id -> why it failed to load, for admins (`/model info`)."""
        return dict(self._failures)

    @property
    def load_seconds(self) -> dict[str, float]:
        """Model id -> seconds its last cold load took (`ponybot models` shows it)."""
        return dict(self._load_s)

    @property
    def used_bytes(self) -> int:
        """What the pipelines on the device weigh together (compare with `budget_bytes`)."""
        return sum(resident.size_bytes for resident in self._device.values())

    # --- getting a model --------------------------------------------------------------------

    async def get(self, model_id: str) -> Pipeline:
        """The pipeline of `model_id` on the device: cached, swapped in from RAM, or loaded."""
        async with self._lock:
            # 1. Already on the device: just mark it used.
            resident = self._device.get(model_id)
            if resident is not None:
                self._device.move_to_end(model_id)
                assert resident.pipe is not None
                return resident.pipe
            # 2. In RAM (a warm swap) or on disk (a cold load).
            entry = self._entry(model_id)
            resident = self._ram.pop(model_id, None)
            if resident is None:
                resident = await self._load(entry)
            # 3. Make room within the budget, least recently used first; then move it in.
            await self._make_room(resident)
            await self._move_in(resident)
            self._device[model_id] = resident
            self._failures.pop(model_id, None)
            assert resident.pipe is not None
            return resident.pipe

    async def preload(self, model_ids: Iterable[str]) -> list[str]:
        """Load these models before the first job; returns those that loaded. A broken model
        is logged and recorded and does not take the others down with it."""
        loaded = []
        for model_id in model_ids:
            try:
                await self.get(model_id)
            except (ModelLoadError, DeviceFull) as exc:
                log.error("model %s failed to load: %s", model_id, exc)
                continue
            loaded.append(model_id)
        return loaded

    def _entry(self, model_id: str) -> ModelEntry:
        try:
            return self.config.model(model_id)
        except KeyError:
            raise ModelLoadError(f"model {model_id!r} is not configured on this worker") from None

    async def _load(self, entry: ModelEntry) -> _Resident:
        """Cold load from disk onto the CPU; a failure is recorded and re-raised."""
        log.info("model %r: cold load from %s", entry.id, entry.path)
        started = time.perf_counter()
        try:
            pipe = await asyncio.to_thread(load_pipeline, entry, base_dir=self.base_dir)
            await asyncio.to_thread(prepare, pipe, self.placement, self.config.worker)
        except ModelLoadError as exc:
            self._failures[entry.id] = str(exc)
            log.error("model %r: load failed after %.1f s: %s", entry.id,
                      time.perf_counter() - started, exc)
            metrics.model_loaded(entry.id, time.perf_counter() - started, ok=False)
            raise
        resident = _Resident(entry.id, pipe, pipeline_bytes(pipe, self.placement.dtype))
        self._load_s[entry.id] = time.perf_counter() - started
        metrics.model_loaded(entry.id, self._load_s[entry.id], ok=True)
        log.info("model %r: read from disk in %.2f s (%s at %s)", entry.id,
                 self._load_s[entry.id], format_bytes(resident.size_bytes),
                 _dtype_name(self.placement.dtype))
        return resident

    async def _make_room(self, incoming: _Resident) -> None:
        if self.budget_bytes is None:
            return
        while self._device and self.used_bytes + incoming.size_bytes > self.budget_bytes:
            _, oldest = self._device.popitem(last=False)
            await self._evict(oldest, for_id=incoming.model_id)
        if incoming.size_bytes > self.budget_bytes:
            log.warning(
                "model %r: %s is more than the whole budget (%s); loading it anyway, alone. "
                "Raise worker.memory_budget_gb if the device has the memory.",
                incoming.model_id, format_bytes(incoming.size_bytes),
                format_bytes(self.budget_bytes))

    async def _move_in(self, resident: _Resident) -> None:
        """RAM -> device. Running out of device memory is a load failure, not a crash."""
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._to_device, resident)
        except torch.OutOfMemoryError as exc:
            await asyncio.to_thread(self._to_ram, resident)
            self._empty_device_cache()
            self._keep_in_ram(resident)
            message = (
                f"model {resident.model_id!r} ({format_bytes(resident.size_bytes)}) does not fit "
                f"on {self.placement.describe()}: {exc}. Lower worker.memory_budget_gb so fewer "
                f"models share the device."
            )
            self._failures[resident.model_id] = message
            raise DeviceFull(message) from exc
        log.info("model %r: on %s in %.2f s (%s; device %s of %s)", resident.model_id,
                 self.placement.device, time.perf_counter() - started,
                 format_bytes(resident.size_bytes),
                 format_bytes(self.used_bytes + resident.size_bytes),
                 format_bytes(self.budget_bytes))

    # --- evicting ---------------------------------------------------------------------------

    async def _evict(self, resident: _Resident, *, for_id: str) -> None:
        """Device -> RAM tier (or dropped when the RAM tier has no slots)."""
        if self.ram_slots == 0:
            self._drop(resident, why=f"evicted for {for_id!r}; worker.ram_cache_models is 0")
            return
        # Free the RAM tier's slot first, so host memory never holds one model too many.
        while len(self._ram) >= self.ram_slots:
            _, oldest = self._ram.popitem(last=False)
            self._drop(oldest, why=f"the RAM tier holds {self.ram_slots} models")
        started = time.perf_counter()
        await asyncio.to_thread(self._to_ram, resident)
        self._empty_device_cache()
        self._keep_in_ram(resident)
        log.info("model %r: evicted from %s to RAM for %r in %.2f s (%s)", resident.model_id,
                 self.placement.device, for_id, time.perf_counter() - started,
                 format_bytes(resident.size_bytes))

    def _keep_in_ram(self, resident: _Resident) -> None:
        self._ram[resident.model_id] = resident
        while len(self._ram) > self.ram_slots:
            _, oldest = self._ram.popitem(last=False)
            self._drop(oldest, why=f"the RAM tier holds {self.ram_slots} models")

    def _drop(self, resident: _Resident, *, why: str) -> None:
        """Forget a pipeline entirely; its memory is freed once nothing else refers to it."""
        started = time.perf_counter()
        resident.pipe = None
        gc.collect()
        self._empty_device_cache()
        log.info("model %r: dropped (%s) in %.2f s, freeing %s; its next use is a cold load",
                 resident.model_id, why, time.perf_counter() - started,
                 format_bytes(resident.size_bytes))

    # --- moving (in a thread) ---------------------------------------------------------------

    def _to_device(self, resident: _Resident) -> None:
        pipe = resident.pipe
        assert pipe is not None
        if not _is_on(pipe, self.placement.device, self.placement.dtype):
            pipe.to(self.placement.device, self.placement.dtype)
            self._synchronize()

    def _to_ram(self, resident: _Resident) -> None:
        pipe = resident.pipe
        assert pipe is not None
        # On a CPU worker the device is the RAM: nothing to move.
        if self.placement.device.type != "cpu":
            pipe.to("cpu")  # keeps the device dtype: half the RAM of float32 on GPUs

    def _synchronize(self) -> None:
        if self.placement.device.type == "cuda":
            torch.cuda.synchronize(self.placement.device)

    def free_device_cache(self) -> None:
        """Give the device's cached blocks back (before retrying after out-of-memory)."""
        gc.collect()
        self._empty_device_cache()

    def _empty_device_cache(self) -> None:
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.placement.device.type == "mps":
            torch.mps.empty_cache()


def _is_on(pipe: Pipeline, device: torch.device, dtype: torch.dtype) -> bool:
    """Every component's weights are already on `device` in `dtype` (so `.to` is not needed)."""
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for tensor in module.parameters():
            if tensor.device.type != device.type or tensor.dtype != dtype:
                return False
            if device.index is not None and tensor.device.index != device.index:
                return False
    return True


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
