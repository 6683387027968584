"""Which device and dtype the worker samples on."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
