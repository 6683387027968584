"""The picture check's classifier: a timm image tagger whose outputs include ratings.

The format is the one SmilingWolf's wd-*-tagger-v3 taggers ship in on the Hugging Face hub
(`library_name: timm`): `config.json` (timm's `architecture`, `num_classes`, `model_args`,
`pretrained_cfg`), `model.safetensors`, and `selected_tags.csv` (one row per output, in order,
with a `name` column; the four rating rows are Danbooru's general/sensitive/questionable/
explicit). It loads offline with timm and safetensors: no pickle, no hub call.

Pre-processing follows the reference timm inference script for those taggers
(github.com/neggles/wdv3-timm, `wdv3_timm.py`): transparency onto white, padded to a square
with white, resized to the model's input size, normalised by its `pretrained_cfg`, channels
RGB -> BGR; outputs through a sigmoid (the taggers are multi-label). Here it runs batched on
the worker's device: the pictures go up as uint8 and are resized there.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file as load_safetensors

from inference.safety.files import CONFIG_FILE, WEIGHTS_FILE, required_files
from ponybot_core.config import SafetyConfig

log = logging.getLogger(__name__)

# White, as the reference script pads and flattens with.
_WHITE = 1.0


class ClassifierUnavailable(Exception):
    """The classifier cannot be loaded or run; `str(error)` says which file and what is wrong."""


@dataclass(frozen=True)
class Verdict:
    """What the classifier says of one picture."""

    flagged: bool
    # The most probable rating, and the highest probability of a flagged rating.
    rating: str
    score: float
    ratings: dict[str, float]

    def describe(self) -> str:
        return ", ".join(f"{name} {p:.2f}" for name, p in
                         sorted(self.ratings.items(), key=lambda kv: -kv[1]))


def read_labels(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "name" not in rows[0]:
        raise ClassifierUnavailable(f"{path}: no `name` column")
    return [row["name"] for row in rows]


class Classifier:
    """A loaded classifier on one device. `classify` is blocking: call it off the event loop."""

    def __init__(self, model: torch.nn.Module, config: SafetyConfig, labels: Sequence[str],
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.config, self.device, self.dtype = model, config, device, dtype
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        _, height, width = cfg.get("input_size", (3, 448, 448))
        self.size = (int(height), int(width))
        self.interpolation = "bicubic" if cfg.get("interpolation", "bicubic") == "bicubic" \
            else "bilinear"
        self.mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), device=device).view(1, 3, 1, 1)
        # output index -> rating, for the outputs that are ratings
        self.rating_outputs = {i: config.rating_labels[name] for i, name in enumerate(labels)
                               if name in config.rating_labels}
        if not set(self.rating_outputs.values()) & set(config.flagged_ratings):
            raise ClassifierUnavailable("the labels file has none of safety.rating_labels "
                                        "that rate a picture as one of safety.flagged_ratings")

    def inputs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return model_inputs(images, self.size, interpolation=self.interpolation,
                            mean=self.mean, std=self.std, device=self.device,
                            dtype=self.dtype)

    @torch.inference_mode()
    def classify(self, images: Sequence[Image.Image]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        step = self.config.batch_size
        for start in range(0, len(images), step):
            logits = self.model(self.inputs(images[start:start + step])).float().cpu()
            # A NaN or infinite output (an overflow in the trunk, damaged weights) is a failed
            # check, not a score: `max(0.0, nan)` is 0.0, which would read as safe.
            if not bool(torch.isfinite(logits).all()):
                raise ClassifierUnavailable("the classifier's scores are not a number "
                                            "(NaN or infinite outputs)")
            verdicts.extend(self._verdict(row) for row in torch.sigmoid(logits))
        return verdicts

    def _verdict(self, row: torch.Tensor) -> Verdict:
        ratings: dict[str, float] = {}
        for index, rating in self.rating_outputs.items():
            score = float(row[index])
            if not math.isfinite(score):  # `classify` refuses these; never read one as safe
                raise ClassifierUnavailable(f"output {index} is not a number ({score})")
            ratings[rating] = max(ratings.get(rating, 0.0), score)
        flagged_scores = [p for r, p in ratings.items() if r in self.config.flagged_ratings]
        score = max(flagged_scores, default=0.0)
        return Verdict(flagged=score >= self.config.threshold,
                       rating=max(ratings, key=lambda r: ratings[r]), score=score,
                       ratings=ratings)


def model_inputs(images: Sequence[Image.Image], size: tuple[int, int], *, interpolation: str,
                 mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """The batch as a tagger takes it (N, 3, H, W), made on `device` (module docstring)."""
    batch = []
    for image in images:
        rgba = np.array(image.convert("RGBA"))
        pixels = torch.from_numpy(rgba).to(device).permute(2, 0, 1).float() / 255
        alpha = pixels[3:4]
        rgb = pixels[:3] * alpha + _WHITE * (1 - alpha)
        side = max(rgb.shape[1], rgb.shape[2])
        top, left = (side - rgb.shape[1]) // 2, (side - rgb.shape[2]) // 2
        square = torch.nn.functional.pad(
            rgb, (left, side - rgb.shape[2] - left, top, side - rgb.shape[1] - top),
            value=_WHITE)
        batch.append(torch.nn.functional.interpolate(
            square[None], size=size, mode=interpolation, antialias=True,
            align_corners=False).clamp_(0, 1))
    normalised = (torch.cat(batch) - mean.to(device)) / std.to(device)
    return normalised[:, [2, 1, 0]].to(dtype)  # RGB -> BGR, as the taggers expect


def load_classifier(config: SafetyConfig, folder: Path, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> Classifier:
    """The classifier in `folder` on `device`. Raises ClassifierUnavailable naming the file."""
    import timm  # the worker's only user of timm: imported when a check is configured

    missing = [name for name in required_files(config) if not (folder / name).is_file()]
    if missing:
        raise ClassifierUnavailable(f"{folder}: missing {', '.join(missing)} (run `ponybot "
                                    "models pull safety`)")
    try:
        described = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        labels = read_labels(folder / config.labels_file)
        model = timm.create_model(
            described["architecture"], pretrained=False,
            num_classes=described.get("num_classes", len(labels)),
            pretrained_cfg_overlay=described.get("pretrained_cfg", {}),
            **described.get("model_args", {}))
        head = getattr(model, "get_classifier", lambda: None)()
        outputs = getattr(head, "out_features", None)
        if outputs != len(labels):
            raise ClassifierUnavailable(f"{folder}: the model has {outputs} outputs and "
                                        f"{config.labels_file} {len(labels)} labels")
        model.load_state_dict(load_safetensors(folder / WEIGHTS_FILE), strict=True)
    except ClassifierUnavailable:
        raise
    except Exception as exc:
        raise ClassifierUnavailable(f"{folder}: cannot be loaded ({exc})") from exc
    model.eval().to(device=device, dtype=dtype)
    return Classifier(model, config, labels, device, dtype)
