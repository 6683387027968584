"""Tiny randomly initialised upscaler networks, built offline in the key layouts of the real
releases, so spandrel detects them exactly as it detects RealESRGAN_x4plus.pth.

- Real-ESRGAN (basicsr `RRDBNet`): `conv_first`, `body.N.rdbM.convK`, `conv_body`, `conv_up1`,
  `conv_up2`, `conv_hr`, `conv_last`, saved as `{"params_ema": state}` like the GitHub releases.
- The original ESRGAN layout (`model.0`, `model.1.sub.N.RDBM.convK.0`, ...), same weights.
- Real-ESRGAN Compact (`SRVGGNetCompact`, realesr-general-x4v3 / animevideov3): `body.N`.

spandrel only accepts RRDB nets with 32 growth channels (it hard-codes `gc=32`); 8 features and
one block keep the x4 net at ~60k parameters, ~20 ms for 64 -> 256 px on a CPU.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

StateDict = dict[str, torch.Tensor]

# Receptive field of the tiny RRDB net in input pixels (each side): conv_first, 3 RDBs of 5
# convs, conv_body, then conv_up1 at 2x and conv_up2/conv_hr/conv_last at 4x (< 1 px each).
TINY_RRDB_RECEPTIVE_RADIUS = 1 + 3 * 5 + 1 + 2


def _conv(generator: torch.Generator, out_ch: int, in_ch: int, *, gain: float = 1.0,
          bias: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    # nn.Conv2d's default uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), scaled by `gain` (basicsr
    # scales the RDB convs by 0.1 too).
    bound = gain / (in_ch * 9) ** 0.5
    weight = (torch.rand(out_ch, in_ch, 3, 3, generator=generator) * 2 - 1) * bound
    return weight, torch.full((out_ch,), bias)


def realesrgan_state_dict(*, num_feat: int = 8, num_block: int = 1, num_grow_ch: int = 32,
                          seed: int = 0) -> StateDict:
    """basicsr's RRDBNet keys for an x4 net, as Real-ESRGAN releases them (its x2 and x1 nets
    are the same x4 net behind a pixel-unshuffle of the input)."""
    if num_grow_ch != 32:
        raise ValueError("spandrel only loads RRDB nets with 32 growth channels")
    generator = torch.Generator().manual_seed(seed)
    state: StateDict = OrderedDict()

    def put(name: str, out_ch: int, in_ch: int, **kwargs: float) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = _conv(generator, out_ch, in_ch,
                                                               **kwargs)

    put("conv_first", num_feat, 3)
    for block in range(num_block):
        for rdb in (1, 2, 3):
            for k in range(1, 5):
                put(f"body.{block}.rdb{rdb}.conv{k}", num_grow_ch,
                    num_feat + (k - 1) * num_grow_ch, gain=0.1)
            put(f"body.{block}.rdb{rdb}.conv5", num_feat, num_feat + 4 * num_grow_ch, gain=0.1)
    put("conv_body", num_feat, num_feat)
    put("conv_up1", num_feat, num_feat)  # after the first nearest 2x
    put("conv_up2", num_feat, num_feat)  # after the second
    put("conv_hr", num_feat, num_feat)
    # Centre the random output on mid-grey so the test images are not clamped flat.
    put("conv_last", 3, num_feat, gain=16.0, bias=0.5)
    return state


def old_esrgan_layout(state: StateDict) -> StateDict:
    """The same network in the original ESRGAN (`RRDB_ESRGAN_x4.pth`) key layout."""
    old: StateDict = OrderedDict()
    num_block = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    ups = sorted(int(k[len("conv_up")]) for k in state if k.startswith("conv_up")
                 and k.endswith(".weight"))
    for kind in ("weight", "bias"):
        old[f"model.0.{kind}"] = state[f"conv_first.{kind}"]
        for block in range(num_block):
            for rdb in (1, 2, 3):
                for k in range(1, 6):
                    old[f"model.1.sub.{block}.RDB{rdb}.conv{k}.0.{kind}"] = state[
                        f"body.{block}.rdb{rdb}.conv{k}.{kind}"]
        old[f"model.1.sub.{num_block}.{kind}"] = state[f"conv_body.{kind}"]
        for up in ups:
            old[f"model.{3 * up}.{kind}"] = state[f"conv_up{up}.{kind}"]
        last_up = 3 * ups[-1]
        old[f"model.{last_up + 2}.{kind}"] = state[f"conv_hr.{kind}"]
        old[f"model.{last_up + 4}.{kind}"] = state[f"conv_last.{kind}"]
    return old


def compact_state_dict(*, num_feat: int = 8, num_conv: int = 2, scale: int = 4,
                       seed: int = 0) -> StateDict:
    """SRVGGNetCompact keys (conv, PReLU, conv, PReLU, ..., conv to 3*scale^2 channels)."""
    generator = torch.Generator().manual_seed(seed)
    state: StateDict = OrderedDict()
    index = 0
    in_ch = 3
    for _ in range(num_conv + 1):
        state[f"body.{index}.weight"], state[f"body.{index}.bias"] = _conv(
            generator, num_feat, in_ch)
        state[f"body.{index + 1}.weight"] = torch.full((num_feat,), 0.25)  # PReLU slopes
        index += 2
        in_ch = num_feat
    # The net adds a nearest-neighbour upscale of its input: keep the residual small.
    state[f"body.{index}.weight"], state[f"body.{index}.bias"] = _conv(
        generator, 3 * scale * scale, num_feat, gain=0.1)
    return state


def save_pth(state: StateDict, path: Path, *, params_ema: bool = True) -> Path:
    """torch.save of the state dict, wrapped in {"params_ema": ...} like Real-ESRGAN's files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state} if params_ema else dict(state), path)
    return path


def save_safetensors(state: StateDict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@dataclass(frozen=True)
class TinyUpscalers:
    realesrgan_pth: Path  # Real-ESRGAN x4 layout, {"params_ema": ...}
    realesrgan_safetensors: Path  # the same weights
    esrgan_pth: Path  # the same weights, original ESRGAN layout, bare state dict
    compact_pth: Path  # SRVGGNetCompact x4
    restoration_pth: Path  # SRVGGNetCompact at 1x: a restoration model, not an upscaler


def build_tiny_upscalers(folder: Path) -> TinyUpscalers:
    state = realesrgan_state_dict()
    return TinyUpscalers(
        realesrgan_pth=save_pth(state, folder / "tiny-realesrgan-x4.pth"),
        realesrgan_safetensors=save_safetensors(state, folder / "tiny-realesrgan-x4.safetensors"),
        esrgan_pth=save_pth(old_esrgan_layout(state), folder / "tiny-esrgan-x4.pth",
                            params_ema=False),
        compact_pth=save_pth(compact_state_dict(), folder / "tiny-compact-x4.pth"),
        restoration_pth=save_pth(compact_state_dict(scale=1), folder / "tiny-compact-x1.pth"),
    )
