"""The worker's loaded pipelines, by model id."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from diffusers import StableDiffusionPipeline

from core.config import Config
from inference.device import Placement
from inference.loading import ModelLoadError, load_pipeline

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, config: Config, *, base_dir: Path, placement: Placement) -> None:
        self.config = config
        self.base_dir = base_dir
        self.placement = placement
        self._loaded: dict[str, StableDiffusionPipeline] = {}
        self._failures: dict[str, str] = {}
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> list[str]:
        """Model ids on the device, most recently used first."""
        return list(reversed(self._loaded))

    @property
    def failures(self) -> dict[str, str]:
        """Model id -> why it failed to load, for admins (`/model info`)."""
        return dict(self._failures)

    async def get(self, model_id: str) -> StableDiffusionPipeline:
        async with self._lock:
            pipe = self._loaded.get(model_id)
            if pipe is None:
                try:
                    entry = self.config.model(model_id)
                except KeyError:
                    raise ModelLoadError(
                        f"model {model_id!r} is not configured on this worker"
                    ) from None
                log.info("loading model %s from %s", model_id, entry.path)
                try:
                    pipe = await asyncio.to_thread(self._load, entry)
                except ModelLoadError as exc:
                    self._failures[model_id] = str(exc)
                    raise
                self._failures.pop(model_id, None)
                self._loaded[model_id] = pipe
            return pipe

    def _load(self, entry) -> StableDiffusionPipeline:
        pipe = load_pipeline(entry, base_dir=self.base_dir)
        return pipe.to(self.placement.device, self.placement.dtype)
