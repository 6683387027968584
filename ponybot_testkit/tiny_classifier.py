"""A tiny picture-check classifier in exactly the format the worker loads
(inference/safety/classifier.py: a timm folder with config.json, model.safetensors and
selected_tags.csv, as SmilingWolf's wd-*-tagger-v3 ship), whose verdict the test sets.

It is a timm VisionTransformer with one 32 px patch, two embedding channels and no blocks:
the patch embedding makes (b - t, t - b) from the picture's mean brightness b (in the
normalised -1..1 the taggers see) and the cut-off t; the LayerNorm before the head turns that
into (+1, -1) or (-1, +1); the head rates a picture brighter than t `explicit` (p ≈ 0.98) and
any other `general` (p ≈ 0.98). So `brighter_than=-10` flags everything, `+10` nothing, and a
value in between flags exactly the pictures brighter than it (`brightness` says what the
classifier sees of a picture)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file

LABELS = ("general", "sensitive", "questionable", "explicit", "pony", "solo")
FLAG_ALL = -10.0
FLAG_NONE = 10.0
_SIDE = 32
_STRENGTH = 4.0
MODEL_ARGS: dict[str, Any] = {"img_size": _SIDE, "patch_size": _SIDE, "embed_dim": 2, "depth": 0,
              "num_heads": 1, "class_token": False, "global_pool": "avg"}
PRETRAINED_CFG = {"input_size": [3, _SIDE, _SIDE], "interpolation": "bicubic",
                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0,
                  "num_classes": len(LABELS)}


def save_tiny_classifier(folder: Path, *, brighter_than: float = FLAG_NONE) -> Path:
    """Writes the classifier into `folder` (created) and returns it."""
    import timm

    folder.mkdir(parents=True, exist_ok=True)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False,
                              num_classes=len(LABELS), **MODEL_ARGS)
    state = {name: torch.zeros_like(value) for name, value in model.state_dict().items()}
    mean_weight = 1.0 / (3 * _SIDE * _SIDE)
    state["patch_embed.proj.weight"][0] = mean_weight
    state["patch_embed.proj.weight"][1] = -mean_weight
    state["patch_embed.proj.bias"][:] = torch.tensor([-brighter_than, brighter_than])
    state["fc_norm.weight"][:] = 1.0
    head = state["head.weight"]
    head[LABELS.index("explicit")] = torch.tensor([_STRENGTH, 0.0])
    head[LABELS.index("general")] = torch.tensor([-_STRENGTH, 0.0])
    for label in ("sensitive", "questionable", "pony", "solo"):
        state["head.bias"][LABELS.index(label)] = -_STRENGTH
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": len(LABELS),
        "model_args": MODEL_ARGS, "pretrained_cfg": PRETRAINED_CFG}), encoding="utf-8")
    with (folder / "selected_tags.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for number, label in enumerate(LABELS):
            writer.writerow([number, label, 9 if number < 4 else 0, 1000])
    return folder


def brightness(images: Sequence[Image.Image]) -> list[float]:
    """Each picture's mean brightness as the tiny classifier sees it (normalised -1..1, after
    the check's own pre-processing: padded square, resized to 32 px)."""
    from inference.safety.classifier import model_inputs

    half = torch.full((1, 3, 1, 1), 0.5)
    return [float(x.mean()) for x in model_inputs(
        images, (_SIDE, _SIDE), interpolation="bicubic", mean=half, std=half,
        device=torch.device("cpu"), dtype=torch.float32)]
