"""Which pictures of a job the classifier sees, and what the server's choice makes of a
flagged one (`PictureCheck` on the job, written by the bot from the channel and `/safety`).

- A job whose channel is age-restricted is not checked, unless its server asked for it;
  every other job is (a job from an older bot too: `PictureCheck`'s defaults).
- A flagged picture is never posted in the job's channel. Withheld (the default): a grey
  placeholder takes its place, so the message keeps its layout and the other pictures keep
  their numbers and buttons (AI Horde's workers also replace a flagged picture rather than
  drop it). Spoiler: posted behind Discord's spoiler cover. Redirect: posted in the server's
  age-restricted channel, a placeholder here.
- Never fails open: a configured classifier that is missing or fails withholds every picture
  it should have checked, and says so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from inference.safety.classifier import (
    Classifier,
    ClassifierUnavailable,
    Verdict,
    load_classifier,
)
from ponybot_core.config import SafetyConfig, resolve_path
from ponybot_core.job import Flagged, Job

log = logging.getLogger(__name__)

PLACEHOLDER_COLOUR = (54, 57, 63)
# The job's record keeps at most this much of the verdict.
RECORD_CHARS = 1000


@dataclass(frozen=True)
class Checked:
    """A job's pictures after the check: what its result message shows, and the rest."""

    # In order, one per picture: the picture itself, or a placeholder where it is withheld.
    images: list[Image.Image]
    withheld: frozenset[int] = frozenset()
    spoilered: frozenset[int] = frozenset()
    # (index, picture) for the server's age-restricted channel.
    redirected: list[tuple[int, Image.Image]] = field(default_factory=list)
    # Shown with the result (no scores); said to the requester privately (with them).
    notes: list[str] = field(default_factory=list)
    private: str | None = None
    # For the job's state hash ("" when nothing was checked).
    record: str = ""

    @property
    def hidden(self) -> frozenset[int]:
        """Pictures not shown in the result message (no U/V buttons for them)."""
        return self.withheld


def placeholder(width: int, height: int) -> Image.Image:
    """A flat picture of the withheld one's size saying why it is not there."""
    image = Image.new("RGB", (width, height), PLACEHOLDER_COLOUR)
    ImageDraw.Draw(image).text((8, 8), "withheld by\nthe picture check", fill=(220, 221, 222))
    return image


class PictureChecker:
    """The worker's classifier, loaded on first use and kept; `check` is blocking (run it off
    the event loop). A load that fails is tried again on the next job (the operator may have
    pulled the file since)."""

    def __init__(self, config: SafetyConfig, *, base_dir: Path, device: torch.device) -> None:
        self.config, self.base_dir = config, base_dir
        self.folder = resolve_path(config.path, base_dir) if config.path is not None else None
        # float32 whatever the worker samples in: a tagger costs little next to a UNet (the
        # bench, bench/safety.py), and half precision's range is what can turn its outputs
        # to NaN (which `Classifier.classify` refuses: the pictures would be withheld).
        self.device, self.dtype = device, torch.float32
        self._classifier: Classifier | None = None
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.folder is not None

    def classifier(self) -> Classifier:
        with self._lock:
            if self._classifier is None:
                assert self.folder is not None
                self._classifier = load_classifier(self.config, self.folder, self.device,
                                                   self.dtype)
            return self._classifier

    def verdicts(self, images: Sequence[Image.Image]) -> list[Verdict]:
        """One verdict per picture; raises ClassifierUnavailable when there can be none."""
        if self.folder is None:
            raise ClassifierUnavailable("no classifier is configured")
        classifier = self.classifier()
        try:
            verdicts = classifier.classify(images)
        except Exception as exc:  # a device error, a bad picture: withhold, never post unchecked
            raise ClassifierUnavailable(f"the classifier failed ({exc!r})") from exc
        if len(verdicts) != len(images):
            raise ClassifierUnavailable("the classifier gave no verdict for some pictures")
        return verdicts

    def check(self, job: Job, images: list[Image.Image]) -> Checked:
        """What of `images` may be posted in the job's channel, and how."""
        if not job.picture_check.check:
            return Checked(list(images))
        if not self.configured:
            return Checked(list(images), record="not checked: no classifier configured")
        try:
            verdicts = self.verdicts(images)
        except ClassifierUnavailable as exc:
            log.error("job %s: picture check unavailable: %s", job.id, exc)
            return withheld_unchecked(images, str(exc))
        return apply_verdicts(job, images, verdicts, threshold=self.config.threshold)


def withheld_unchecked(images: list[Image.Image], reason: str) -> Checked:
    """Every picture withheld: the check was asked for and could not be made."""
    note = ("⚠️ The picture check is not working on this bot right now, so "
            f"{'the picture was' if len(images) == 1 else 'the pictures were'} withheld rather "
            "than posted unchecked. Please tell the bot's admin.")
    return Checked([placeholder(*i.size) for i in images], withheld=frozenset(range(len(images))),
                   notes=[note], private=note,
                   record=f"withheld all {len(images)}: check unavailable: {reason}"
                   [:RECORD_CHARS])


def apply_verdicts(job: Job, images: list[Image.Image], verdicts: Sequence[Verdict], *,
                   threshold: float) -> Checked:
    """The server's choice (`job.picture_check.flagged`) applied to the flagged pictures."""
    flagged = [i for i, v in enumerate(verdicts) if v.flagged]
    record_parts = [f"checked {len(images)} (threshold {threshold:g})"]
    record_parts += [f"image {i + 1}: {verdicts[i].describe()}" for i in flagged]
    if not flagged:
        return Checked(list(images), record="; ".join(record_parts)[:RECORD_CHARS])
    mode = job.picture_check.flagged
    if mode is Flagged.REDIRECT and job.picture_check.redirect_channel_id is None:
        mode = Flagged.WITHHOLD
    names = ", ".join(str(i + 1) for i in flagged)
    which = f"image {names}" if len(images) > 1 else "the picture"
    shown = list(images)
    if mode is Flagged.SPOILER:
        note = (f"⚠️ The picture check flagged {which} as not safe for this channel: "
                "it is behind a spoiler.")
        return Checked(shown, spoilered=frozenset(flagged), notes=[note],
                       private=_private(note, flagged, verdicts),
                       record="; ".join([f"spoilered {names}", *record_parts])[:RECORD_CHARS])
    for i in flagged:
        shown[i] = placeholder(*images[i].size)
    if mode is Flagged.REDIRECT:
        channel = job.picture_check.redirect_channel_id
        note = (f"⚠️ The picture check flagged {which} as not safe for this channel: it is "
                f"posted in <#{channel}> instead.")
        redirected = [(i, images[i]) for i in flagged]
        verb = "redirected"
    else:
        note = (f"⚠️ The picture check flagged {which} as not safe for this channel: it was "
                "not posted.")
        redirected, verb = [], "withheld"
    return Checked(shown, withheld=frozenset(flagged), redirected=redirected, notes=[note],
                   private=_private(note, flagged, verdicts),
                   record="; ".join([f"{verb} {names}", *record_parts])[:RECORD_CHARS])


def _private(note: str, flagged: Sequence[int], verdicts: Sequence[Verdict]) -> str:
    scores = "; ".join(f"image {i + 1}: {verdicts[i].describe()}" for i in flagged)
    return (f"{note}\nWhat the classifier said: {scores}. A classifier makes mistakes; a "
            "server admin can choose what happens to flagged pictures (`/safety`).")
