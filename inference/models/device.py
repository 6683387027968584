"""Where a worker's models run, and what makes them fast there.

The device and dtype (`choose_placement`): CUDA, then MPS, then the CPU unless config.toml
names one; half precision on GPUs, float32 on CPUs.

The GPU fast path, applied automatically when the model is placed on a GPU. Each switch is one
line diffusers or torch offers; defaults stay portable.

- PyTorch SDPA attention (flash / memory-efficient kernels): diffusers' `AttnProcessor2_0`,
  the default with torch 2, set where a model came with another processor (except a model that
  upcasts its attention, SD 2.1 768-v, in half precision off CUDA: see `prepare`);
- channels_last UNet weights: faster convolutions on tensor cores;
- VAE slicing on GPUs (decodes a batch one image at a time: a lower memory peak) and VAE
  tiling above `worker.vae_tiling_above_px` (bounded memory, faint seams);
- optional `torch.compile` of the UNet (`worker.compile_unet`), warmed up at start;
- images per pipeline call bounded by free device memory.
On the CPU only SDPA applies, which changes no pixel.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from inference.models.loading import Pipeline
from ponybot_core.config import Config, WorkerConfig

log = logging.getLogger(__name__)

# Device memory one 512×512 image needs while sampling an SD 1.x UNet in half precision with
# classifier-free guidance (two UNet rows) and SDPA, with headroom; an estimate from the
# activations' sizes, not a measurement: `worker.max_images_per_call` caps it anyway.
_BYTES_PER_512_IMAGE = 600 * 1024**2


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)} {dtype}"
        return f"{self.device.type} {dtype}"


def choose_placement(requested: str, dtype: str = "auto") -> Placement:
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    device = torch.device(requested)
    if dtype != "auto":
        return Placement(device=device, dtype=getattr(torch, dtype))
    # Half precision halves memory and doubles speed on GPUs; CPUs are faster in fp32.
    chosen = torch.float16 if device.type in ("cuda", "mps") else torch.float32
    return Placement(device=device, dtype=chosen)


def prepare(pipe: Pipeline, placement: Placement, config: WorkerConfig) -> None:
    """Once per loaded model, before it is first moved to the device."""
    for model in (pipe.unet, pipe.vae):
        if any(not isinstance(p, AttnProcessor2_0) for p in model.attn_processors.values()):
            model.set_attn_processor(AttnProcessor2_0())
    if needs_upcast_attention(pipe, placement):
        # SD 2.1 768-v overflows in fp16 attention unless the scores are computed in float32
        # (Pony Diffusion V5's page: "--xformers or --no-half"). CUDA's fused SDPA kernels
        # accumulate in float32, as xformers does; elsewhere SDPA may take its plain half
        # precision path, so the classic processor, which honours `upcast_attention`, runs.
        pipe.unet.set_attn_processor(AttnProcessor())
        log.info("attention upcast to float32 on %s (the model's upcast_attention)",
                 placement.device.type)
    if placement.device.type != "cuda":
        return
    # Slicing decodes a batch one image at a time: a lower memory peak, but pixels can move by
    # ±1/255 against a batched decode, so only where memory is the constraint.
    pipe.vae.enable_slicing()
    pipe.unet.to(memory_format=torch.channels_last)
    if config.compile_unet:
        # Compiled lazily on the first call per shape; the worker warms it up at start.
        pipe.unet = torch.compile(pipe.unet)
        log.info("UNet will be compiled with torch.compile on first use")


def needs_upcast_attention(pipe: Pipeline, placement: Placement) -> bool:
    """The UNet asks for float32 attention scores, in float16 (bfloat16 has float32's range),
    away from CUDA."""
    return (bool(pipe.unet.config.get("upcast_attention"))
            and placement.dtype == torch.float16
            and placement.device.type not in ("cuda", "cpu"))


def configure_for_size(pipe: Pipeline, width: int, height: int,
                       config: WorkerConfig) -> None:
    """VAE tiling only for images big enough to need it (it shows faint seams)."""
    if config.vae_tiling_above_px and width * height > config.vae_tiling_above_px:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()


def images_per_call(placement: Placement, width: int, height: int,
                    config: WorkerConfig) -> int:
    """How many images one pipeline call may draw: the configured cap, and on CUDA what the
    free memory holds at this size."""
    cap = config.max_images_per_call
    if placement.device.type != "cuda":
        return cap
    free, _total = torch.cuda.mem_get_info(placement.device)
    per_image = _BYTES_PER_512_IMAGE * (width * height) / (512 * 512)
    if placement.dtype == torch.float32:
        per_image *= 2
    return max(1, min(cap, int(free // per_image)))


def chunk_by_images(counts: list[int], cap: int) -> list[list[int]]:
    """Split jobs (given by their image counts, in order) into consecutive runs of at most
    `cap` images; a job bigger than `cap` runs alone. Returns index lists."""
    chunks: list[list[int]] = []
    current: list[int] = []
    images = 0
    for index, count in enumerate(counts):
        if current and images + count > cap:
            chunks.append(current)
            current, images = [], 0
        current.append(index)
        images += count
    if current:
        chunks.append(current)
    return chunks


def warm_up(pipe: Pipeline, model_id: str, config: Config) -> float:
    """Compile the UNet for the default size before the first user waits for it (with
    `worker.compile_unet`); returns the seconds it took."""
    from inference.drawing.sampling import sample_batch
    from ponybot_core.job import Job

    # The model's own default size: an SDXL model compiles for 1024 px, not SD 1.x's 512.
    dims = config.model_sizes(config.model(model_id))[config.defaults.size]
    job = Job(application_id=0, interaction_id=0, guild_id=None, channel_id=0, user_id=0,
              model_id=model_id, tags="warm-up", prompt="pony", negative_prompt="", seed=0,
              steps=2, cfg=7.5, sampler=config.defaults.sampler, width=dims.width,
              height=dims.height)
    started = time.perf_counter()
    sample_batch(pipe, [job])
    return time.perf_counter() - started
