"""The worker's model cache: an LRU on the device within a memory budget, a RAM tier behind it,
and load failures that stay with their model."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from inference.models import cache as models
from inference.models.cache import GIB, ModelCache, device_budget_bytes, pipeline_bytes
from inference.models.device import Placement, choose_placement
from inference.models.loading import ModelLoadError
from ponybot_core.config import Config, ModelEntry
from ponybot_testkit.world import tiny_config

# The tiny pipeline weighs ~43 MiB in float32: one fits in this budget, two do not.
ONE_MODEL_GB = 0.06



def cache_config(pipeline_dir: Path, *, ids=("a", "b", "c"), budget_gb: float | None = None,
                 ram: int = 2, broken: bool = False) -> Config:
    """Models `ids`, all the tiny pipeline folder under different ids (and a missing one)."""
    tiny = ModelEntry(id="a", name="Tiny", path=pipeline_dir)
    entries = [tiny.model_copy(update={"id": model_id, "name": model_id}) for model_id in ids]
    if broken:
        entries.append(tiny.model_copy(update={"id": "broken", "path": pipeline_dir / "nowhere"}))
    worker = {"device": "cpu", "ram_cache_models": ram}
    if budget_gb is not None:
        worker["memory_budget_gb"] = budget_gb
    return tiny_config(pipeline_dir, default_model=ids[0], worker=worker,
                       models=[entry.model_dump() for entry in entries])


@pytest.fixture
def cold_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model ids read from disk, in order (the real loader still does the reading)."""
    loads: list[str] = []
    real = models.load_pipeline

    def counting(entry, **kwargs):
        loads.append(entry.id)
        return real(entry, **kwargs)

    monkeypatch.setattr(models, "load_pipeline", counting)
    return loads


def make_cache(config: Config, pipeline_dir: Path) -> ModelCache:
    return ModelCache(config, base_dir=pipeline_dir.parent, placement=choose_placement("cpu"))


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": tensor.clone()
            for name in ("unet", "vae", "text_encoder")
            for key, tensor in getattr(pipe, name).state_dict().items()}


# --- LRU ---------------------------------------------------------------------------------------


async def test_loaded_lists_models_most_recently_used_first(tiny_pipeline_dir, cold_loads) -> None:
    cache = make_cache(cache_config(tiny_pipeline_dir, ids=("a", "b")), tiny_pipeline_dir)
    assert cache.budget_bytes is None  # CPU and no budget configured: no limit
    a = await cache.get("a")
    b = await cache.get("b")
    assert cache.loaded == ["b", "a"]
    assert await cache.get("a") is a
    assert cache.loaded == ["a", "b"]
    assert a is not b
    assert cold_loads == ["a", "b"]
    assert cache.used_bytes == 2 * pipeline_bytes(a, torch.float32)
    assert cache.in_ram == [] and cache.failures == {}


async def test_a_model_over_the_budget_evicts_the_least_recently_used_to_ram(
    tiny_pipeline_dir, cold_loads
) -> None:
    config = cache_config(tiny_pipeline_dir, ids=("a", "b"), budget_gb=ONE_MODEL_GB)
    cache = make_cache(config, tiny_pipeline_dir)
    a = await cache.get("a")
    weights = snapshot(a)
    await cache.get("b")
    assert cache.loaded == ["b"]
    assert cache.in_ram == ["a"]
    assert cache.used_bytes <= cache.budget_bytes == int(ONE_MODEL_GB * GIB)

    # Back from RAM: the same pipeline, the same weights, no read from disk.
    assert await cache.get("a") is a
    assert cache.loaded == ["a"]
    assert cache.in_ram == ["b"]
    assert cold_loads == ["a", "b"]
    after = snapshot(a)
    assert weights.keys() == after.keys()
    assert all(torch.equal(weights[key], after[key]) for key in weights)


async def test_models_beyond_ram_cache_models_are_dropped(tiny_pipeline_dir, cold_loads) -> None:
    config = cache_config(tiny_pipeline_dir, budget_gb=ONE_MODEL_GB, ram=1)
    cache = make_cache(config, tiny_pipeline_dir)
    a = weakref.ref(await cache.get("a"))
    await cache.get("b")
    await cache.get("c")
    assert cache.loaded == ["c"]
    assert cache.in_ram == ["b"]  # "a" was least recently used: dropped for good
    gc.collect()
    assert a() is None, "a dropped pipeline must be freed"
    assert cold_loads == ["a", "b", "c"]


async def test_a_model_bigger_than_the_whole_budget_still_loads_alone(
    tiny_pipeline_dir, caplog
) -> None:
    config = cache_config(tiny_pipeline_dir, ids=("a",), budget_gb=0.001, ram=0)
    cache = make_cache(config, tiny_pipeline_dir)
    await cache.get("a")
    assert cache.loaded == ["a"]
    assert "more than the whole budget" in caplog.text


# --- failures ----------------------------------------------------------------------------------


async def test_a_model_that_fails_to_load_is_recorded_and_the_others_keep_working(
    tiny_pipeline_dir,
) -> None:
    cache = make_cache(cache_config(tiny_pipeline_dir, ids=("a",), broken=True), tiny_pipeline_dir)
    with pytest.raises(ModelLoadError, match="nowhere"):
        await cache.get("broken")
    assert "nowhere" in cache.failures["broken"]
    pipe = await cache.get("a")
    assert pipe.unet is not None
    assert cache.loaded == ["a"]
    assert list(cache.failures) == ["broken"]
    with pytest.raises(ModelLoadError, match="not configured"):
        await cache.get("unknown")


# --- sizes and budgets ---------------------------------------------------------------------------


async def test_sizes_are_measured_at_the_device_dtype(tiny_pipeline_dir) -> None:
    cache = make_cache(cache_config(tiny_pipeline_dir, ids=("a",)), tiny_pipeline_dir)
    pipe = await cache.get("a")
    full = pipeline_bytes(pipe, torch.float32)
    half = pipeline_bytes(pipe, torch.float16)
    integers = sum(b.numel() * b.element_size() for b in pipe.text_encoder.buffers()
                   if not b.is_floating_point())
    assert cache.used_bytes == full == sum(
        t.numel() * t.element_size()
        for m in (pipe.unet, pipe.vae, pipe.text_encoder)
        for t in (*m.parameters(), *m.buffers())
    )
    assert half - integers == (full - integers) // 2


def test_the_default_budget_is_80_percent_of_the_gpu_and_unlimited_on_cpu(monkeypatch) -> None:
    cuda = Placement(device=torch.device("cuda"), dtype=torch.float16)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=10 * GIB))
    assert device_budget_bytes(None, cuda) == 8 * GIB
    assert device_budget_bytes(2.5, cuda) == int(2.5 * GIB)
    assert device_budget_bytes(None, choose_placement("cpu")) is None
    assert device_budget_bytes(1.0, choose_placement("cpu")) == GIB
