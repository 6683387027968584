"""The picture check's cost: classifier time per image as a share of sampling time per image,
on the same device (issue 19's goal: under 5 % at 512²).

    python bench/safety.py                          # CPU, what this machine has
    python bench/safety.py --device cuda --steps 25 --timed-steps 25

Both sides are the real architectures with random weights (the cost does not depend on the
weights): the classifier is SmilingWolf/wd-vit-tagger-v3's, a timm ViT-B/16 at 448 px with its
10,861 outputs, saved as the folder the worker loads and run through the worker's own
`inference.safety.classifier` (pre-processing on the device included); sampling is the full-size
SD 1.x UNet from the shipped config (`inference/sd1_config/unet`) at 512² (64² latents), one
call per step for the classifier-free-guidance pair, as the pipeline does. On a slow CPU only
`--timed-steps` UNet calls are timed and multiplied by `--steps`; the text encoder, the
scheduler and the VAE decode are left out of sampling, so the share printed is an upper bound.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file

import inference
from inference.safety.classifier import load_classifier
from ponybot_core.config import SafetyConfig

WD_VIT_OUTPUTS = 10_861  # rows of wd-vit-tagger-v3's selected_tags.csv
RATINGS = ("general", "sensitive", "questionable", "explicit")


def wd_vit_folder(folder: Path) -> Path:
    """A classifier folder shaped like wd-vit-tagger-v3's, random weights."""
    import timm

    model_args: dict[str, Any] = {"img_size": 448}
    model = timm.create_model("vit_base_patch16_224", pretrained=False,
                              num_classes=WD_VIT_OUTPUTS, **model_args)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_base_patch16_224", "num_classes": WD_VIT_OUTPUTS,
        "model_args": model_args,
        "pretrained_cfg": {"input_size": [3, 448, 448], "interpolation": "bicubic",
                           "mean": [0.5] * 3, "std": [0.5] * 3}}))
    with (folder / "selected_tags.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i in range(WD_VIT_OUTPUTS):
            writer.writerow([i, RATINGS[i] if i < 4 else f"tag{i}", 9 if i < 4 else 0, 1])
    return folder


def unet_seconds_per_step(device: torch.device, dtype: torch.dtype, size: int,
                          timed: int) -> float:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    config = json.loads((Path(inference.__file__).parent / "sd1_config/unet/config.json")
                        .read_text())
    unet = UNet2DConditionModel.from_config(config).to(device=device, dtype=dtype).eval()
    latents = torch.randn(2, 4, size // 8, size // 8, device=device, dtype=dtype)
    text = torch.randn(2, 77, 768, device=device, dtype=dtype)
    times = []
    with torch.inference_mode():
        for i in range(timed + 1):  # the first call warms up
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            unet(latents, 999 - i, encoder_hidden_states=text)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - started)
    return statistics.median(times)


def classifier_seconds_per_image(device: torch.device, dtype: torch.dtype, size: int,
                                 images: int, rounds: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        folder = wd_vit_folder(Path(tmp))
        config = SafetyConfig(path=folder, batch_size=images)
        classifier = load_classifier(config, folder, device, dtype)
    pictures = [Image.effect_noise((size, size), 64).convert("RGB") for _ in range(images)]
    classifier.classify(pictures)  # warm up
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        classifier.classify(pictures)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) / images)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25, help="sampling steps per picture")
    parser.add_argument("--timed-steps", type=int, default=2,
                        help="UNet calls actually timed (multiplied by --steps)")
    parser.add_argument("--images", type=int, default=4, help="pictures per check (a job)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    per_step = unet_seconds_per_step(device, dtype, args.size, args.timed_steps)
    # The UNet call above draws one picture (its guidance pair); a batch of n costs about n
    # times as much on a busy device, so per picture it is this.
    sampling = per_step * args.steps
    # The worker runs the classifier in float32 whatever it samples in
    # (inference/safety/checking.py, PictureChecker): time it so.
    check = classifier_seconds_per_image(device, torch.float32, args.size, args.images,
                                         args.rounds)
    print(f"device {device} {args.dtype}, {args.size}² pictures")
    print(f"sampling: {per_step:.3f} s per UNet step x {args.steps} steps = {sampling:.2f} s "
          f"per picture (median of {args.timed_steps} timed steps)")
    print(f"picture check (wd-vit-tagger-v3 architecture, float32, batches of {args.images}): "
          f"{check * 1000:.1f} ms per picture")
    print(f"check / sampling: {100 * check / sampling:.2f} %")


if __name__ == "__main__":
    main()
