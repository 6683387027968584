"""`ponybot draw "twilight sparkle, solo"`: one picture on this machine, no Discord, no Redis.

It is how a server owner checks a model before inviting the bot, so it draws exactly what
`/pony` would: the same option checks and defaults (option > model > config), the same tag
language, caption and channel policy (as in a channel that is not age-restricted, unless
`--nsfw`), the same job (ponybot_request.jobs.build_job, which every way into the bot calls),
sampled by the worker's own code (one pipeline call for the job's images, one seeded generator
per image: the same seed gives the same picture as the bot), upscaled by the same upscaler,
and written as PNGs with the same `parameters` text. It prints the caption the model
saw and shows a progress bar while sampling.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from inference.models.inventory import check_model
from ponybot_cli.config_loading import load_or_explain
from ponybot_core.config import LoadedConfig, Size
from ponybot_core.job import Job
from ponybot_request.errors import UserFacingError
from ponybot_request.jobs import Channel, PonyRequest, Requester, build_job
from ponybot_request.options import PonyOptions

if TYPE_CHECKING:
    from PIL.Image import Image

DEFAULT_OUT = Path("drawings")


class DrawFailed(Exception):
    """The model or the upscaler could not be used; `str(error)` says why."""


def add_parser(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    draw = commands.add_parser("draw", parents=[parent], help="draw locally, exactly as /pony",
                               description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    draw.add_argument("tags", help="derpibooru tags, comma-separated; -tag keeps a tag out")
    draw.add_argument("--negative", help="tags to keep out of the picture")
    draw.add_argument("--model", help="a model id from config.toml (default: default_model)")
    draw.add_argument("--seed", type=int, help="same seed + same options = same picture")
    draw.add_argument("--steps", type=int)
    draw.add_argument("--cfg", type=float)
    draw.add_argument("--count", type=int, help="pictures in one batch")
    draw.add_argument("--size", choices=[s.value for s in Size])
    draw.add_argument("--upscale", action="store_true", help="through the default upscaler")
    draw.add_argument("--nsfw", action="store_true",
                      help="as in an age-restricted channel (no forced `safe` rating)")
    draw.add_argument("--check-pictures", action="store_true",
                      help="pass the pictures through the picture check ([safety]), as the "
                           "worker does for a channel that is not age-restricted: a flagged "
                           "one is written as its placeholder")
    draw.add_argument("--out", type=Path, default=DEFAULT_OUT,
                      help=f"folder for the PNGs (default: ./{DEFAULT_OUT})")
    draw.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_or_explain(args.config)
    if loaded is None:
        return 2
    # 1. The job /pony would queue for these options.
    try:
        job, notes = job_for(loaded, args)
    except UserFacingError as exc:
        print(f"✘ {exc}", file=sys.stderr)
        return 2
    entry = loaded.config.model(job.model_id)
    # 2. The model's files, checked before paying for torch.
    check = check_model(entry, loaded.path.parent)
    if not check.usable:
        print(f"✘ {entry.id}: {check.problem}", file=sys.stderr)
        if check.fix:
            print(f"  → {check.fix}", file=sys.stderr)
        return 1
    print(f"model:    {entry.name} ({entry.id})\n"
          f"prompt:   {job.prompt}\n"
          f"negative: {job.negative_prompt or '(none)'}\n"
          f"settings: {job.steps} steps · {job.sampler.value} · cfg {job.cfg:g} · "
          f"{job.width}×{job.height} · seed {job.seed}" + (f" ×{job.count}" if job.count > 1
                                                            else ""), flush=True)
    for note in notes:
        print(f"note:     {note}", flush=True)
    # 3. Draw, upscale and write, as the worker does.
    started = time.perf_counter()
    try:
        images, upscaled_by, sampling_note = asyncio.run(draw(loaded, job))
    except DrawFailed as exc:
        print(f"✘ {exc}", file=sys.stderr)
        return 1
    if sampling_note:
        print(f"note:     {sampling_note}")
    withheld: frozenset[int] = frozenset()
    if args.check_pictures:
        images, withheld = check_pictures(loaded, job, images)
    for path in write_pngs(loaded, job, images, upscaled_by, args.out, withheld=withheld):
        print(f"wrote {path}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def job_for(loaded: LoadedConfig, args: argparse.Namespace) -> tuple[Job, tuple[str, ...]]:
    """The job /pony would queue for these options (ponybot_request.jobs.build_job, with
    nobody's saved settings, in a channel that is age-restricted only with `--nsfw`);
    UserFacingError if it would be refused."""
    config = loaded.config
    if args.upscale and not config.upscalers:
        raise UserFacingError("--upscale: no upscaler is configured ([[upscalers]] in the "
                              "config)")
    options = PonyOptions.parse(
        config, tags=args.tags, negative=args.negative, seed=args.seed, steps=args.steps,
        cfg=args.cfg, count=args.count, size=args.size, model=args.model,
    )  # fmt: skip
    request = PonyRequest(by=Requester(user_id=0), options=options, upscale=args.upscale)
    here = Channel(guild_id=None, channel_id=0, age_restricted=args.nsfw)
    built = build_job(request, here, None, config=config)
    return built.job, built.notes


async def draw(loaded: LoadedConfig, job: Job) -> tuple[list[Image], str | None, str | None]:
    """The job's images (upscaled if asked), the upscaler's description and the sampler's
    note (a long prompt encoded in chunks)."""
    from inference.drawing.sampling import sample_batch
    from inference.models.cache import ModelCache
    from inference.models.device import choose_placement, configure_for_size
    from inference.models.loading import ModelLoadError
    from inference.results.upscale import UpscalerCache, UpscalerUnavailable, upscale_images

    config, base_dir = loaded.config, loaded.path.parent
    placement = choose_placement(config.worker.device, config.worker.dtype)
    print(f"device:   {placement.describe()}", flush=True)
    try:
        pipe = await ModelCache(config, base_dir=base_dir, placement=placement).get(job.model_id)
    except ModelLoadError as exc:
        raise DrawFailed(str(exc)) from exc
    configure_for_size(pipe, job.width, job.height, config.worker)
    pipe.set_progress_bar_config(disable=False, desc="sampling")
    try:
        [sampled] = await asyncio.to_thread(sample_batch, pipe, [job])
    finally:
        pipe.set_progress_bar_config(disable=True)
    if not job.upscale:
        return sampled.images, None, sampled.note
    upscalers = UpscalerCache(base_dir=base_dir, device=placement.device, dtype=placement.dtype)
    try:
        images, upscaled_by = await asyncio.to_thread(upscale_images, config, upscalers,
                                                      sampled.images)
    except UpscalerUnavailable as exc:
        raise DrawFailed(f"not upscaled: {exc}") from exc
    return images, upscaled_by, sampled.note


def check_pictures(loaded: LoadedConfig, job: Job, images: list[Image]
                   ) -> tuple[list[Image], frozenset[int]]:
    """The pictures as the worker would post them in a channel that is not age-restricted
    (the server's default choice: a flagged one withheld, its placeholder in its place), and
    which were withheld."""
    from inference.models.device import choose_placement
    from inference.safety.checking import PictureChecker
    from ponybot_core.job import PictureCheck

    config = loaded.config
    if config.safety.path is None:
        print("note:     --check-pictures: no classifier is configured ([safety] path)")
    placement = choose_placement(config.worker.device, config.worker.dtype)
    checker = PictureChecker(config.safety, base_dir=loaded.path.parent,
                             device=placement.device)
    checked = checker.check(job.model_copy(update={"picture_check": PictureCheck()}), images)
    print(f"check:    {checked.record or 'nothing flagged'}")
    for note in checked.notes:
        print(f"note:     {note}")
    return checked.images, checked.withheld


def write_pngs(loaded: LoadedConfig, job: Job, images: list[Image], upscaled_by: str | None,
               out: Path, *, withheld: frozenset[int] = frozenset()) -> list[Path]:
    """One PNG per image, named and annotated like the bot's attachments (a withheld one is
    its placeholder, `…_withheld.png`, without parameters)."""
    from inference.results.fit import png_with_parameters
    from inference.results.post import image_parameters

    model_name = loaded.config.model(job.model_id).name
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (image, seed) in enumerate(zip(images, job.image_seeds(), strict=True)):
        gone = number in withheld
        path = out / (f"pony_{job.id}_{seed}" + ("_upscaled" if upscaled_by else "")
                      + ("_withheld" if gone else "") + ".png")
        parameters = "" if gone else image_parameters(job, seed, model_name, upscaled_by)
        path.write_bytes(png_with_parameters(image, parameters))
        paths.append(path)
    return paths
