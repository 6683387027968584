"""Configuration: `config.toml` validated into pydantic models, secrets from the environment.

The bot and the worker load the same file. Secrets (the Discord token, a Redis URL with a
password) come only from the environment so the file can be committed and shared.
"""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class DiscordConfig(_Strict):
    # Only set these to talk to a Discord proxy (nirn-proxy and friends) or a test double.
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    # Guilds to sync commands to instantly (guild commands); empty = global sync.
    sync_guilds: list[int] = []
    owners: list[int] = []


class RedisConfig(_Strict):
    # Unset (and no REDIS_URL in the environment) = start an embedded redis-server.
    url: str | None = None
    data_dir: Path = Path("data/redis")
    key_prefix: str = "ponybot"


class Size(StrEnum):
    SQUARE = "square"
    PORTRAIT = "portrait"
    LANDSCAPE = "landscape"


class Dimensions(_Strict):
    width: Annotated[int, Field(ge=64, le=2048, multiple_of=8)]
    height: Annotated[int, Field(ge=64, le=2048, multiple_of=8)]


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
    # The model's own pixel sizes for square/portrait/landscape; unset = its family's defaults.
    sizes: dict[Size, Dimensions] | None = None
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
        """(Discord token, Redis URL) that the bot and the worker cannot start without;
        raises ConfigError saying what to set."""
        token = self.secrets.discord_token
        if token is None:
            raise ConfigError(f"{process}: DISCORD_TOKEN is not set")
        if not self.redis_url:
            raise ConfigError(f"{process}: no Redis: set REDIS_URL or redis.url (or start "
                              "everything with `ponybot up`)")
        return token.get_secret_value(), self.redis_url


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
