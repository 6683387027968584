"""Configuration: `config.toml` validated into pydantic models, secrets from the environment.

The bot and the worker load the same file. Secrets (the Discord token, a Redis URL with a
password) come only from the environment so the file can be committed and shared.
"""

from __future__ import annotations

import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CONFIG_PATH = Path("config.toml")


class ConfigError(Exception):
    """The config file is missing or invalid; the message names the file and the key."""


class _Strict(BaseModel):
    # A typo in config.toml must fail loudly at start, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampler(StrEnum):
    DDIM = "ddim"
    EULER_A = "euler_a"
    DPMPP_2M_KARRAS = "dpm++2m_karras"


class Architecture(StrEnum):
    """Which Stable Diffusion family a checkpoint belongs to: what its networks look like, which
    component configs and tokenizers load it, which sizes it was trained at."""

    AUTO = "auto"  # the worker reads it from the file's keys (or a folder's model_index.json)
    SD1 = "sd1"  # SD 1.x: CLIP ViT-L text tower, 512 px (Lun's V1/V2, pony-diffusion, V4)
    SD2 = "sd2"  # SD 2.x: OpenCLIP ViT-H text tower, 768 px v-prediction (Pony Diffusion V5)
    SDXL = "sdxl"  # SDXL: two text towers, pooled embeddings, 1024 px (Pony Diffusion V6 XL)


class PredictionType(StrEnum):
    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"


class ModelFormat(StrEnum):
    AUTO = "auto"
    DIFFUSERS = "diffusers"
    CKPT = "ckpt"
    SAFETENSORS = "safetensors"


# The most shards one deployment may name (Discord's largest bots run a few thousand).
MAX_SHARDS = 65_536


# One shard id or a range of them, in ASCII digits only: int() would also read "٣", "１", "1_0"
# and "+1", each a shard the operator did not type.
_SHARD_PART = re.compile(r"([0-9]+)(?:[ \t]*-[ \t]*([0-9]+))?")


def _shard_number(digits: str) -> int:
    # More digits than any shard id has: out of range, without int()'s 4,300-digit limit.
    return int(digits) if len(digits) <= 6 else MAX_SHARDS


def parse_shard_ids(value: object) -> object:
    """Shard ids as a list, or as an operator types them in an environment variable or the
    file: `"0-3"`, `"0,2,5"`, `"0-1,4"`; blank is unset (None). The ids are counted as the
    ranges expand, and more than MAX_SHARDS in all is refused before the next range is read,
    so neither a typo nor a long value can make a list of billions. Errors quote the part at
    fault, never the whole value (it may be 128 KiB)."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    ids: list[int] = []
    # A JSON list ("[0, 1]") reads as its comma-separated items.
    for part in (p.strip() for p in value.strip().removeprefix("[").removesuffix("]").split(",")):
        if not part:
            continue
        shown = part if len(part) <= 24 else f"{part[:24]}..."
        match = _SHARD_PART.fullmatch(part)
        if match is None:
            raise ValueError(f"{shown!r} is not a shard id or a range like 0-3 (digits 0-9)")
        low = _shard_number(match.group(1))
        high = _shard_number(match.group(2) or match.group(1))
        if not 0 <= low <= high < MAX_SHARDS:
            raise ValueError(f"{shown!r} is not a range within 0..{MAX_SHARDS - 1}")
        if len(ids) + high - low + 1 > MAX_SHARDS:
            raise ValueError(f"more than {MAX_SHARDS} shard ids (at {shown!r}): each process "
                             "names each of its shards once")
        ids.extend(range(low, high + 1))
    return ids


ShardIds = Annotated[list[int] | None, BeforeValidator(parse_shard_ids)]


def _parse_shard_count(value: object) -> object:
    """PONYBOT_SHARD_COUNT in ASCII digits only (pydantic alone reads "+4", "1_0", "4.0")."""
    if isinstance(value, str) and not re.fullmatch(r"[ \t]*[0-9]{1,6}[ \t]*", value):
        raise ValueError(f"{value[:24]!r} is not a shard count (digits 0-9)")
    return value


class DiscordConfig(_Strict):
    # Only set these to talk to a Discord proxy (nirn-proxy and friends) or a test double.
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    # Guilds to sync commands to instantly (guild commands); empty = global sync.
    sync_guilds: list[int] = []
    owners: list[int] = []
    # Gateway sharding (README, "Several bot processes"). Unset: this one process runs every
    # shard, as many as Discord recommends. Several processes: the same shard_count in each and
    # each its own shard_ids (`[0, 1]`, or "0-1"); PONYBOT_SHARD_COUNT / PONYBOT_SHARD_IDS
    # override them (`with_shard_environment`), so every host can share one config file.
    shard_count: Annotated[int, Field(ge=1, le=MAX_SHARDS)] | None = None
    shard_ids: ShardIds = None

    @model_validator(mode="after")
    def _check_shards(self) -> DiscordConfig:
        if self.shard_ids is None:
            return self
        if self.shard_count is None:
            raise ValueError("shard_ids needs shard_count: the number of shards across every "
                             "bot process")
        if not self.shard_ids:
            raise ValueError("shard_ids is empty: a bot process needs at least one shard")
        outside = sorted({i for i in self.shard_ids if not 0 <= i < self.shard_count})
        if outside:
            raise ValueError(f"shard_ids {outside} outside 0..{self.shard_count - 1} "
                             f"(shard_count {self.shard_count})")
        if len(set(self.shard_ids)) != len(self.shard_ids):
            raise ValueError("shard_ids lists a shard twice")
        return self


class SentinelConfig(_Strict):
    """`[redis.sentinel]`: a highly available Redis (a primary, its replicas, three or more
    sentinels), reached through redis-py's Sentinel client (ponybot_core/redis_client.py). Set,
    the bot, the workers and `ponybot check` ask the sentinels where the primary is, and follow
    a failover by themselves. The passwords come from the environment only: REDIS_PASSWORD (the
    primary's and replicas') and REDIS_SENTINEL_PASSWORD (the sentinels', if they have one)."""

    # The sentinels, "host:port" each (all of them: any one that answers is enough).
    addresses: Annotated[list[str], Field(min_length=1)]
    # The name the sentinels monitor the primary under (`sentinel monitor <name> ...`).
    service_name: str = "ponybot"
    db: Annotated[int, Field(ge=0)] = 0
    # A job is acknowledged to its user only once this many replicas have it (Redis' WAIT): a
    # failover promotes a replica, so an acknowledged job is on the one promoted. 0 = do not
    # wait (a job acknowledged in the last moments before a failover may be lost).
    ack_replicas: Annotated[int, Field(ge=0)] = 1
    # How long the bot waits for them, inside Discord's 3 seconds for an answer.
    ack_timeout_ms: Annotated[int, Field(ge=1, le=2000)] = 500

    @model_validator(mode="after")
    def _check_addresses(self) -> SentinelConfig:
        for address in self.addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"addresses: {address!r} is not host:port")
        return self

    def hosts(self) -> list[tuple[str, int]]:
        return [(a.rpartition(":")[0].strip("[]"), int(a.rpartition(":")[2]))
                for a in self.addresses]


class RedisConfig(_Strict):
    # Unset (and no REDIS_URL in the environment) = start an embedded redis-server.
    url: str | None = None
    data_dir: Path = Path("data/redis")
    key_prefix: str = "ponybot"
    # Set = a highly available Redis behind Sentinel (url and REDIS_URL are then not used).
    sentinel: SentinelConfig | None = None


class Size(StrEnum):
    SQUARE = "square"
    PORTRAIT = "portrait"
    LANDSCAPE = "landscape"


class Dimensions(_Strict):
    width: Annotated[int, Field(ge=64, le=2048, multiple_of=8)]
    height: Annotated[int, Field(ge=64, le=2048, multiple_of=8)]


# Each family's own square/portrait/landscape, for entries that declare `base` and no `sizes`.
# SD 1.x's are the config's `[sizes]` (512 px, what SD 1.x was trained at).
FAMILY_SIZES: dict[Architecture, dict[Size, tuple[int, int]]] = {
    # SD 2.1 768 is the 768x768 model (Pony Diffusion V5's page, civitai.com/models/95367:
    # Base Model "SD 2.1 768", "SD 2.1 768px finetune"). Portrait and landscape are ours, by
    # the rule of SD 1.x's [sizes] (the native side, and 1.5 times it: 512x768): 768x1152.
    # Unverified for V5, whose page names no other size.
    Architecture.SD2: {Size.SQUARE: (768, 768), Size.PORTRAIT: (768, 1152),
                       Size.LANDSCAPE: (1152, 768)},
    # SDXL's aspect buckets (SDXL report, arXiv:2307.01952, appendix: 1024x1024, 832x1216,
    # 1216x832 among them; about one megapixel each), which V6 XL's card means by "most
    # supported SDXL resolution".
    Architecture.SDXL: {Size.SQUARE: (1024, 1024), Size.PORTRAIT: (832, 1216),
                        Size.LANDSCAPE: (1216, 832)},
}
# Each family's largest hires side: twice its native size, as `[hires] scale` 2 gives SD 1.x
# (1536 lets SD 1.x's 512x768 double); SD 1.x and `auto` use `[hires] max_side`.
FAMILY_HIRES_MAX_SIDE: dict[Architecture, int] = {Architecture.SD2: 1536,
                                                  Architecture.SDXL: 2048}


def _default_sizes() -> dict[Size, Dimensions]:
    return {
        Size.SQUARE: Dimensions(width=512, height=512),
        Size.PORTRAIT: Dimensions(width=512, height=768),
        Size.LANDSCAPE: Dimensions(width=768, height=512),
    }


class Defaults(_Strict):
    """The config's `[defaults]` table: the last layer of `ponybot_request.resolution`, what
    applies when nothing more specific says otherwise. (What users save with `/settings` is
    `bot.saved_settings`.)"""

    steps: Annotated[int, Field(ge=1)] = 25
    cfg: Annotated[float, Field(gt=0)] = 7.5
    sampler: Sampler = Sampler.DDIM
    size: Size = Size.SQUARE
    count: Annotated[int, Field(ge=1)] = 1


class Limits(_Strict):
    steps_min: Annotated[int, Field(ge=1)] = 1
    steps_max: Annotated[int, Field(ge=1)] = 60
    cfg_min: Annotated[float, Field(ge=0)] = 1.0
    cfg_max: Annotated[float, Field(ge=0)] = 20.0
    count_max: Annotated[int, Field(ge=1, le=10)] = 4
    max_tags: Annotated[int, Field(ge=1)] = 60
    max_prompt_chars: Annotated[int, Field(ge=16)] = 1500


class LongPrompts(StrEnum):
    """What happens to a caption longer than CLIP's window of 75 tokens."""

    CHUNK = "chunk"  # the worker encodes it in 75-token chunks, as the web UIs do
    TRUNCATE = "truncate"  # the bot leaves out whole tags from the end until it fits


class CaptionProfile(_Strict):
    """How one model's training captions were written, so that `/pony`
    (ponybot_request/tags.py) writes its prompts the same way. The rules mirror the knobs of the
    caption builder the pony fine-tunes were trained with (translunar-diffusion's
    `load_images_using_metadata`); config.toml cites the evidence for each shipped profile."""

    # Between tags. Users may type commas for every model; space-separated text is read as
    # one tag per word for models whose captions are space-separated with `_` inside tags.
    separator: Literal[", ", ",", " "] = ", "
    # Spaces inside a tag become `_` (applied after the replacements).
    underscores: bool = False
    # Ordered substring replacements inside each tag, written exactly as the training config
    # wrote them (lower case, spaces): `twilight sparkle` -> `twilight`, `artist:` -> `by:`.
    replacements: list[tuple[str, str]] = []
    # Tags the training removed from its captions: left out, and the user is told.
    dropped_tags: list[str] = []
    # Tags whose images were left out of training, so the model never saw them: kept, and
    # the user is told.
    unseen_tags: list[str] = []
    # Rating tags the captions are known to carry; another rating is kept with a note.
    ratings: list[str] = ["safe", "suggestive", "questionable", "explicit"]
    # Added when the user typed no score tag; None = no default.
    score_tag: str | None = None
    # The score tags (`scrN`) the captions had; a typed score outside them gets a note.
    score_buckets: list[int] = []
    # Always in the negative prompt; `sfw_negative_tags` too outside age-restricted channels.
    negative_tags: list[str] = []
    sfw_negative_tags: list[str] = []
    long_prompts: LongPrompts = LongPrompts.CHUNK
    # The card's prompt template: the quality tags it puts before what the user describes
    # (Pony Diffusion V6 XL's `score_9, score_8_up, ...`, V5's `score_9`), written first in
    # every caption unless a server turns it off (`/settings server quality_prefix:off`).
    quality_prefix: list[str] = []
    # The model's own spelling of a derpibooru rating (`safe` -> `rating_safe` for V6 XL):
    # what a typed rating, in any model's spelling, is written as, and the `safe` a channel
    # that is not age-restricted forces. A rating not listed is written as derpibooru spells it.
    rating_tags: dict[str, str] = {}
    # Tags the card spells with `_` (`source_pony`): typed with spaces or `_`, written as the
    # card writes them even where `underscores` is false.
    keyword_tags: list[str] = []
    # Trained on sentences as well as tags (V5's and V6 XL's cards): text typed without a comma
    # is one piece, a sentence, never guessed to be space-separated tags.
    natural_language: bool = False
    # What `/model info` renders as its worked example (derpibooru tags as a user types them).
    example: str = "twilight sparkle, artist:pierogarts, solo"
    # One line saying where these rules come from, shown by `/model info`.
    evidence: str = ""

    @model_validator(mode="after")
    def _check_replacements(self) -> CaptionProfile:
        for old, _new in self.replacements:
            # Captions were lower case; an upper-case rule would silently never match.
            if not old or old != old.lower():
                raise ValueError(f"replacements: {old!r} must be non-empty and lower case")
        ratings = ("safe", "suggestive", "questionable", "explicit")
        for rating in self.rating_tags:
            # A key that is not a rating would never be looked up: a silent no-op.
            if rating not in ratings:
                raise ValueError(f"rating_tags: {rating!r} is not one of {', '.join(ratings)}")
        return self

    @property
    def splits_on_spaces(self) -> bool:
        """Captions whose tags are separated by spaces and have none inside (V2's)."""
        return self.separator == " " and self.underscores


class ModelEntry(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")]
    name: str
    description: str = ""
    path: Path
    format: ModelFormat = ModelFormat.AUTO
    # The model's family; `auto` = read from the file by the worker (declare it so the bot
    # knows the model's own sizes without opening the file).
    base: Architecture = Architecture.AUTO
    # What the UNet predicts; unset = its family's shipped scheduler config says (SD 2.x: the
    # 768 px v-prediction model's `v_prediction`; SD 1.x and SDXL: `epsilon`).
    prediction: PredictionType | None = None
    # CLIP skip as AUTOMATIC1111 counts it: 1 = the text tower's last layer, 2 = the one before
    # it (what Pony Diffusion V6 XL's card asks for), and so on.
    clip_skip: Annotated[int, Field(ge=1, le=12)] = 1
    # The model's own pixel sizes for square/portrait/landscape; unset = its family's defaults
    # (`FAMILY_SIZES`; SD 1.x and `auto`: the config's `[sizes]`). A partial table is filled in
    # from the family's.
    sizes: dict[Size, Dimensions] | None = None
    # The largest side of its hires pictures; unset = its family's (`FAMILY_HIRES_MAX_SIDE`;
    # SD 1.x and `auto`: `[hires] max_side`).
    hires_max_side: Annotated[int, Field(ge=64, le=2048, multiple_of=8)] | None = None
    # A VAE to use instead of the checkpoint's own (a folder or single file), e.g. SDXL's
    # fp16-safe VAE; unset = the checkpoint's.
    vae: Path | None = None
    # Upcast attention to float32 (SD 2.1 768-v overflows in fp16 without it); unset = its
    # family's shipped config says.
    upcast_attention: bool | None = None
    # Diffusers-format folder of component configs (no weights) for single-file checkpoints;
    # unset = the folder shipped for its family (inference/sd1_config, sd2_config, sdxl_config).
    single_file_config: Path | None = None
    # How its training captions were written: /pony writes prompts the same way.
    caption: CaptionProfile = Field(default_factory=lambda: CaptionProfile())
    sampler: Sampler | None = None
    steps: Annotated[int, Field(ge=1)] | None = None
    cfg: Annotated[float, Field(gt=0)] | None = None
    # Where `ponybot models pull <id>` downloads the model from: a Hugging Face hub repository
    # (`owner/name`) and optionally a branch, tag or commit. Unset = not on the hub.
    hub_repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")] | None = None
    revision: str | None = None
    # For a model that is not on the hub: where its author published the file (printed by
    # `ponybot models pull <id>`, which cannot fetch it).
    download_url: str | None = None
    # Its card says it draws NSFW as well as SFW (a `safe` prompt makes explicit output less
    # likely, not impossible): without a picture check ([safety]) `/model info`, `ponybot
    # check` and the worker's start warn about it.
    draws_nsfw: bool = False

    def resolved_format(self) -> ModelFormat:
        if self.format is not ModelFormat.AUTO:
            return self.format
        suffix = self.path.suffix.lower()
        if suffix in (".ckpt", ".pt", ".pth"):
            return ModelFormat.CKPT
        if suffix == ".safetensors":
            return ModelFormat.SAFETENSORS
        return ModelFormat.DIFFUSERS


# How long a job that ended without a result stays in Redis (the queue's defaults too).
CANCELLED_TTL_S = 3600
DEAD_TTL_S = 3 * 24 * 3600


class QueueConfig(_Strict):
    # Queued + running jobs one user may have in one server (`/queue limit` overrides it).
    user_limit: Annotated[int, Field(ge=1)] = 3
    # A job is tried this many times (worker crashes included) before it is dead-lettered.
    max_attempts: Annotated[int, Field(ge=1)] = 3
    # A job whose worker has not renewed its lease for this long is reclaimed by another worker.
    lease_s: Annotated[float, Field(gt=0)] = 60.0
    # How long a posted job's parameters stay in Redis (result buttons, re-rolls).
    result_ttl_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    # A job that ended without a result is kept only this long (its Cancel button and
    # `/queue cancel` say "already cancelled" until then): cancelled, or taken back when the
    # bot's answer failed.
    cancelled_ttl_s: Annotated[int, Field(ge=60)] = CANCELLED_TTL_S
    # A dead-lettered job, for the admin to look up from the dead-letter stream.
    dead_ttl_s: Annotated[int, Field(ge=60)] = DEAD_TTL_S


class WorkerConfig(_Strict):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # Models loaded at start so the first job does not pay the cold load.
    preload: list[str] = []
    # Jobs taken at once; compatible ones are sampled together.
    max_batch: Annotated[int, Field(ge=1, le=16)] = 1
    block_ms: Annotated[int, Field(ge=10)] = 2000
    # Device memory the loaded pipelines may use; unset = 80 % of the GPU (no limit on CPU).
    memory_budget_gb: Annotated[float, Field(gt=0)] | None = None
    # Pipelines evicted from the device are kept in CPU RAM (a fast swap back) up to this many.
    ram_cache_models: Annotated[int, Field(ge=0)] = 2
    # Workers prefer jobs for a model they have loaded, but no job waits longer than this
    # because of it.
    max_preference_wait_s: Annotated[float, Field(ge=0)] = 30.0
    # Live progress: edit the queued message with "sampling n/N" and a preview this often.
    progress: bool = True
    progress_interval_s: Annotated[float, Field(ge=1.0)] = 3.0
    # Precision on GPUs: auto = float16 (bfloat16 trades a little detail for no overflow).
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # Images one pipeline call may draw; on CUDA also bounded by free memory (see
    # inference/models/device.py).
    max_images_per_call: Annotated[int, Field(ge=1, le=64)] = 8
    # torch.compile the UNet on CUDA (slow first job per size, then faster); warmed up at start.
    compile_unet: bool = False
    # Decode with VAE tiling above this many pixels per image (bounded memory, tiny seams).
    vae_tiling_above_px: Annotated[int, Field(ge=0)] = 1024 * 1024
    # Discord's attachment limit for servers without boosts.
    attachment_limit_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    # Discord's cap on one message request, all files together (25,000,000 bytes: discord.js
    # utilities' MessageLimits.MaximumRequestSize); four upscaled images can exceed it even
    # when each file is under `attachment_limit_bytes`, so the files share it.
    message_limit_bytes: Annotated[int, Field(ge=1024 * 1024)] = 25_000_000


class UpscalerEntry(_Strict):
    """A Real-ESRGAN (or other spandrel-supported) network, `.pth` or `.safetensors`."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")]
    name: str
    description: str = ""
    path: Path
    # Inputs are upscaled in tiles of this many pixels so memory stays bounded (0 = whole).
    tile: Annotated[int, Field(ge=0)] = 256
    tile_overlap: Annotated[int, Field(ge=0)] = 32


class HiresConfig(_Strict):
    """`/pony hires:true` and the ⬆️ Hires button (ponybot_core/hires_plan.py): draw at the size
    asked, enlarge the picture `scale` times (Lanczos), refine it with img2img at `strength`.

    The defaults follow AUTOMATIC1111's hires fix for SD 1.x (stable-diffusion-webui,
    modules/ui.py, its txt2img "Hires. fix" sliders): "Upscale by" 2.0, "Hires steps" 0 (= the
    first pass's steps). Its "Denoising strength" default is 0.7 because its default upscaler
    is "Latent", whose interpolated latents come out blurry unless re-noised past about 0.5;
    with an image upscaler, as here, 0.5-0.6 is the usual range (enough to add detail at the
    new size, little enough to keep the composition), so 0.55."""

    scale: Annotated[float, Field(gt=1, le=4)] = 2.0
    strength: Annotated[float, Field(gt=0, le=1)] = 0.55
    # The second pass's sampling steps (img2img runs `steps × strength` of them); 0 = the
    # first pass's, as A1111's "Hires steps" 0.
    steps: Annotated[int, Field(ge=0)] = 0
    # No side of a hires picture is larger (the scale shrinks to fit): 1536 lets the default
    # 512×768 sizes double; beyond it an SD 1.x UNet's memory and time grow fast.
    max_side: Annotated[int, Field(ge=64, le=2048, multiple_of=8)] = 1536


class UploadsConfig(_Strict):
    """Pictures users give the bot (`/pony image:`, `/upscale`, the Parameters menu): fetched
    only from these hosts, within these bounds (ponybot_core/downloads.py)."""

    # Where attachments may be downloaded from: a host (https) or an origin
    # (`scheme://host:port`). Discord serves attachments from these two.
    hosts: list[str] = ["cdn.discordapp.com", "media.discordapp.net"]
    # Largest file accepted (Discord's metadata checked first, the download cut off past it).
    max_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    # Largest picture decoded (width × height), checked before any pixel is decompressed;
    # at most Pillow's own decompression-bomb limit.
    max_pixels: Annotated[int, Field(ge=64 * 64, le=89_478_485)] = 4096 * 4096
    # Largest picture `/upscale` takes: its output has scale² times as many pixels.
    upscale_max_pixels: Annotated[int, Field(ge=64 * 64, le=89_478_485)] = 1024 * 1024
    # A download that takes longer is abandoned.
    timeout_s: Annotated[float, Field(gt=0)] = 20.0


SafetyRating = Literal["safe", "suggestive", "questionable", "explicit"]


class SafetyConfig(_Strict):
    """[safety]: the picture check (inference/safety). Every picture bound for a channel that
    is not age-restricted passes this classifier after sampling (and upscaling), before it is
    posted; a flagged one is never posted there. Unset `path` = no check."""

    # A timm classifier folder: config.json (`architecture`, `num_classes`, `pretrained_cfg`),
    # model.safetensors and the labels file; what SmilingWolf/wd-*-tagger-v3 ship.
    path: Path | None = None
    format: Literal["timm"] = "timm"
    # Where `ponybot models pull safety` downloads it from.
    hub_repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")] | None = None
    revision: str | None = None
    # A CSV with a `name` column, one row per output of the classifier, in order.
    labels_file: str = "selected_tags.csv"
    # The outputs that rate a picture, and the rating each stands for (Danbooru's
    # general/sensitive/questionable/explicit in the wd taggers); other outputs are ignored.
    rating_labels: dict[str, SafetyRating] = {
        "general": "safe", "sensitive": "suggestive", "questionable": "questionable",
        "explicit": "explicit"}
    # Ratings not posted outside age-restricted channels.
    flagged_ratings: list[SafetyRating] = ["questionable", "explicit"]
    # A picture is flagged when a flagged rating's probability reaches this: lower catches
    # more (fewer misses, more false alarms), higher the reverse.
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    # Pictures classified in one call on the worker's device.
    batch_size: Annotated[int, Field(ge=1, le=64)] = 8

    @model_validator(mode="after")
    def _check_labels(self) -> SafetyConfig:
        if not set(self.flagged_ratings) & set(self.rating_labels.values()):
            raise ValueError("safety.flagged_ratings: no label of rating_labels has one of them")
        return self


class MetricsConfig(_Strict):
    """`[metrics]`: each process's Prometheus `/metrics` and `/healthz`, served from a thread
    (ponybot_core/metrics.py) so that a stuck event loop is reported, not hidden."""

    enabled: bool = True
    # Loopback by default: the endpoints show the fleet's activity (no tokens, prompts or user
    # ids). Set "0.0.0.0" (or PONYBOT_METRICS_BIND) only where the scraper's network is trusted.
    bind: str = "127.0.0.1"
    # One port per process kind; several processes of one kind on a host each need their own
    # (PONYBOT_METRICS_PORT). 0 = any free port, written in the process's log.
    bot_port: Annotated[int, Field(ge=0, le=65535)] = 9750
    worker_port: Annotated[int, Field(ge=0, le=65535)] = 9751
    # /healthz fails when the event loop has not run a callback within this long, or Redis has
    # not answered a PING within this long.
    loop_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    redis_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    # The bot reads the queue's gauges at most once per this long: scrapes within it of the
    # last read (or while one runs) share it, however many scrape (bot/metrics.py).
    queue_read_reuse_s: Annotated[float, Field(ge=0, le=60)] = 1.0


class Config(_Strict):
    discord: DiscordConfig = DiscordConfig()
    redis: RedisConfig = RedisConfig()
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    queue: QueueConfig = QueueConfig()
    sizes: dict[Size, Dimensions] = Field(default_factory=_default_sizes)
    default_model: str
    models: list[ModelEntry]
    worker: WorkerConfig = WorkerConfig()
    upscalers: list[UpscalerEntry] = []
    default_upscaler: str | None = None
    # img2img strength of the V (variation) buttons: 0 = same picture, 1 = a new one.
    variation_strength: Annotated[float, Field(gt=0, le=1)] = 0.6
    # Pictures users give the bot ([uploads]).
    uploads: UploadsConfig = UploadsConfig()
    hires: HiresConfig = HiresConfig()
    metrics: MetricsConfig = MetricsConfig()
    # The picture check ([safety]).
    safety: SafetyConfig = SafetyConfig()

    @model_validator(mode="after")
    def _check_consistency(self) -> Config:
        upscaler_ids = [u.id for u in self.upscalers]
        if self.default_upscaler is not None and self.default_upscaler not in upscaler_ids:
            raise ValueError(f"default_upscaler: {self.default_upscaler!r} is not one of the "
                             f"upscalers ({', '.join(upscaler_ids) or 'none configured'})")
        ids = [m.id for m in self.models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"models: duplicate id(s) {', '.join(duplicates)}")
        if self.default_model not in ids:
            raise ValueError(
                f"default_model: {self.default_model!r} is not one of the models ({', '.join(ids)})"
            )
        for name in self.worker.preload:
            if name not in ids:
                raise ValueError(f"worker.preload: {name!r} is not a configured model")
        if self.limits.steps_min > self.limits.steps_max:
            raise ValueError("limits: steps_min is greater than steps_max")
        if self.limits.cfg_min > self.limits.cfg_max:
            raise ValueError("limits: cfg_min is greater than cfg_max")
        if not self.limits.steps_min <= self.defaults.steps <= self.limits.steps_max:
            raise ValueError("defaults.steps: outside limits.steps_min..steps_max")
        missing = [s.value for s in Size if s not in self.sizes]
        if missing:
            raise ValueError(f"sizes: missing {', '.join(missing)}")
        return self

    def upscaler(self, upscaler_id: str | None = None) -> UpscalerEntry:
        wanted = upscaler_id or self.default_upscaler or (
            self.upscalers[0].id if self.upscalers else None)
        for entry in self.upscalers:
            if entry.id == wanted:
                return entry
        raise KeyError(upscaler_id or "no upscaler configured")

    def model_sizes(self, entry: ModelEntry) -> dict[Size, Dimensions]:
        """The model's square/portrait/landscape in pixels: its own `sizes`, over its family's
        (`FAMILY_SIZES`), over the config's `[sizes]` (SD 1.x, and a family not declared)."""
        family = FAMILY_SIZES.get(entry.base, {})
        sizes = {size: Dimensions(width=w, height=h) for size, (w, h) in family.items()}
        return {**self.sizes, **sizes, **(entry.sizes or {})}

    def model_hires(self, entry: ModelEntry) -> HiresConfig:
        """`[hires]` for this model: its largest side is its own (`hires_max_side`), else its
        family's (`FAMILY_HIRES_MAX_SIDE`), else `[hires] max_side`."""
        side = entry.hires_max_side or FAMILY_HIRES_MAX_SIDE.get(entry.base)
        return self.hires if side is None else self.hires.model_copy(update={"max_side": side})

    def model(self, model_id: str) -> ModelEntry:
        for entry in self.models:
            if entry.id == model_id:
                return entry
        raise KeyError(model_id)


class Secrets(BaseSettings):
    """What only the environment may hold."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    discord_token: SecretStr | None = Field(default=None, validation_alias="DISCORD_TOKEN")
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    # With [redis.sentinel]: the primary's and replicas' password, and the sentinels'.
    redis_password: SecretStr | None = Field(default=None, validation_alias="REDIS_PASSWORD")
    redis_sentinel_password: SecretStr | None = Field(
        default=None, validation_alias="REDIS_SENTINEL_PASSWORD")


class ShardEnvironment(BaseSettings):
    """`PONYBOT_SHARD_COUNT` and `PONYBOT_SHARD_IDS` ("0-3", "0,2" or "[0, 2]"): which
    shards this bot process runs, over the file's `[discord]`, so one config file serves every
    bot host (`with_shard_environment`)."""

    # A variable set to "" (`${PONYBOT_SHARD_IDS:-}` in a unit or compose file) is unset.
    model_config = SettingsConfigDict(env_prefix="PONYBOT_", extra="ignore",
                                      env_ignore_empty=True)

    shard_count: Annotated[int | None, BeforeValidator(_parse_shard_count)] = None
    # NoDecode: pydantic-settings would read a list variable as JSON only; "0-3" is parsed here.
    shard_ids: Annotated[ShardIds, NoDecode] = None


# Which variable each field's error is about (a bare field name would send the operator to
# config.toml's [discord]).
_SHARD_VARIABLES = {"shard_count": "PONYBOT_SHARD_COUNT", "shard_ids": "PONYBOT_SHARD_IDS"}


def with_shard_environment(config: Config, environment: ShardEnvironment | None = None) -> Config:
    """`config` with the environment's shard settings (`ShardEnvironment`) over `[discord]`'s,
    checked as the file's are; raises ConfigError naming the variables."""
    try:
        env = environment if environment is not None else ShardEnvironment()
        changes = env.model_dump(exclude_none=True)
        if not changes:
            return config
        discord = DiscordConfig.model_validate(config.discord.model_dump() | changes)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {_SHARD_VARIABLES.get(str(item['loc'][0]) if item['loc'] else '', 'the two')}: "
            f"{item['msg']}" for item in exc.errors())
        raise ConfigError("PONYBOT_SHARD_COUNT / PONYBOT_SHARD_IDS (over [discord]): "
                          f"invalid:\n{problems}") from exc
    return config.model_copy(update={"discord": discord})


class LoadedConfig(BaseModel):
    """Everything a process needs: the validated file plus the environment's secrets, and where
    the file is (relative paths in it are relative to its folder). Not the `/settings` users
    save (`bot.saved_settings`), nor the config's `[defaults]` table (`Defaults`)."""

    model_config = ConfigDict(frozen=True)

    config: Config
    secrets: Secrets
    path: Path

    @property
    def redis_url(self) -> str | None:
        return self.secrets.redis_url or self.config.redis.url

    def resolve(self, path: Path) -> Path:
        return resolve_path(path, self.path.parent)

    def connection(self, process: str) -> tuple[str, str]:
        """(Discord token, Redis URL — "" with [redis.sentinel]) that the bot and the worker
        cannot start without; raises ConfigError saying what to set."""
        token = self.secrets.discord_token
        if token is None:
            raise ConfigError(f"{process}: DISCORD_TOKEN is not set")
        if not self.redis_url and self.config.redis.sentinel is None:
            raise ConfigError(f"{process}: no Redis: set REDIS_URL or redis.url (or start "
                              "everything with `ponybot up`)")
        return token.get_secret_value(), self.redis_url or ""


def resolve_path(path: Path | str, base_dir: Path) -> Path:
    """Every path in the config: relative to the config file's folder (`base_dir`); `~` works.
    The one resolver, for models, upscalers, single-file configs and the Redis data folder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def config_path(cli_value: str | None = None) -> Path:
    if cli_value:
        return Path(cli_value)
    env = os.environ.get("PONYBOT_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def load_config(path: Path) -> Config:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: config file not found (set --config or PONYBOT_CONFIG)"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    if "token" in raw.get("discord", {}):
        raise ConfigError(f"{path}: discord.token: the token is read from DISCORD_TOKEN only")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid config:\n{_describe(exc)}") from exc


def load_config_and_secrets(path: Path | None = None) -> LoadedConfig:
    """The config file at `path` (default: `config_path()`) with the environment's secrets;
    raises ConfigError saying what is wrong."""
    path = path or config_path()
    return LoadedConfig(config=load_config(path), secrets=Secrets(), path=path.resolve())
