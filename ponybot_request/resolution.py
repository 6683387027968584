"""Where each `/pony` parameter comes from, decided in one place.

The most specific layer that says something wins, field by field:

    1. the command's own options                      Layer.OPTION
    2. the user's `/settings` in this server          Layer.USER
    3. the channel's `/settings channel`              Layer.CHANNEL
    4. the server's `/model set` (only the model)     Layer.SERVER
    5. the chosen model's own steps, cfg and sampler  Layer.MODEL
    6. config.toml: `default_model`, `[defaults]`     Layer.CONFIG

The result says which layer gave each value, so the queued message can name the saved
defaults that applied. `/pony` and `ponybot draw` (no layers) both resolve here, through
`ponybot_request.jobs.build_job`; button jobs never do: a re-roll re-uses its original job's
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol, get_args

from ponybot_core.config import Config, ModelEntry, Size
from ponybot_request.options import Generation, PonyOptions

Setting = Literal["model", "size", "steps", "cfg", "count", "negative", "upscale"]
# The `/pony` options a user or a channel can save (`/settings`), in the order they are shown.
SETTINGS: tuple[Setting, ...] = get_args(Setting)


class SavedOptions(Protocol):
    """One user's or one channel's saved options (`bot.saved_settings.SavedSettings`): one per
    name in SETTINGS, None where nothing is saved."""

    @property
    def model(self) -> str | None: ...
    @property
    def size(self) -> str | None: ...
    @property
    def steps(self) -> int | None: ...
    @property
    def cfg(self) -> float | None: ...
    @property
    def count(self) -> int | None: ...
    @property
    def negative(self) -> str | None: ...
    @property
    def upscale(self) -> bool | None: ...


class ServerChoice(Protocol):
    """The server's own settings (`bot.guild_settings.GuildSettings`), as far as defaults go."""

    def configured_model(self, config: Config) -> str | None: ...


class Saved(Protocol):
    """Everything saved that applies to one request (`bot.saved_settings.Layers`, read in one
    round trip): read here by its shape, so this package needs nothing of the bot's stores."""

    @property
    def user(self) -> SavedOptions: ...
    @property
    def channel(self) -> SavedOptions: ...
    @property
    def server(self) -> ServerChoice: ...
    @property
    def notes(self) -> tuple[str, ...]: ...


class Layer(StrEnum):
    OPTION = "option"
    USER = "user"
    CHANNEL = "channel"
    SERVER = "server"
    MODEL = "model"
    CONFIG = "config"


# How the queued message introduces the saved defaults of each layer.
_SAVED_BY = {Layer.USER: "defaults from your /settings",
             Layer.CHANNEL: "defaults from this channel's /settings"}


@dataclass(frozen=True)
class Resolved:
    """Every parameter of one request, and the layer each came from. (A dataclass: a
    pydantic field would run PonyOptions' validators again, without the config they need.)"""

    model: ModelEntry
    # The command's options with the resolved model and negative tags in: what the caption
    # is written from (`ponybot_request.prompting.render_prompt`).
    options: PonyOptions
    size: Size
    upscale: bool
    generation: Generation
    # Every setting in SETTINGS, and `sampler`.
    sources: dict[str, Layer]
    # Saved values that no longer pass today's checks (`Saved.notes`).
    ignored: tuple[str, ...] = ()

    def saved_from(self, layer: Layer) -> list[Setting]:
        return [name for name in SETTINGS if self.sources[name] is layer]

    def notes(self) -> tuple[str, ...]:
        """For the queued message: the saved defaults that applied, then those ignored."""
        lines = []
        for layer, intro in _SAVED_BY.items():
            if used := self.saved_from(layer):
                lines.append(f"⚙️ {intro}: " + " · ".join(self.describe(n) for n in used))
        return (*lines, *self.ignored)

    def describe(self, name: Setting) -> str:
        """One setting as the user reads it (`steps 30`, `model Tiny Pony`)."""
        g = self.generation
        return {
            "model": f"model {self.model.name}",
            "size": f"size {self.size.value}",
            "steps": f"steps {g.steps}",
            "cfg": f"cfg {g.cfg:g}",
            "count": f"count {g.count}",
            "negative": "negative tags",
            "upscale": "upscale " + ("on" if self.upscale else "off"),
        }[name]


def resolve(options: PonyOptions, config: Config, saved: Saved | None = None, *,
            upscale: bool | None = None) -> Resolved:
    """Apply the layers to one request. `options` and every saved layer were checked already
    (`PonyOptions.parse`, `bot.saved_settings.from_hash`); `upscale` is the command's option; None
    for `saved` is nobody's saved settings (`ponybot draw`)."""
    given = {"model": options.model, "size": options.size, "steps": options.steps,
             "cfg": options.cfg, "count": options.count, "negative": options.negative or None,
             "upscale": upscale}
    people: list[tuple[Layer, SavedOptions]] = []
    if saved is not None:
        people = [(Layer.USER, saved.user), (Layer.CHANNEL, saved.channel)]

    def said(name: Setting) -> tuple[Any, Layer] | None:
        """Layers 1-3: the most specific value someone gave for `name`."""
        if given[name] is not None:
            return given[name], Layer.OPTION
        return next(((getattr(d, name), layer) for layer, d in people
                     if getattr(d, name) is not None), None)

    def below(from_model: Any, from_config: Any) -> tuple[Any, Layer]:
        """Layers 5-6: the model's own value, else config.toml's."""
        return (from_model, Layer.MODEL) if from_model is not None else (from_config,
                                                                          Layer.CONFIG)

    sources: dict[str, Layer] = {}
    # The model first: its own sampling sits below everyone's choices.
    requested = said("model")
    server_model = saved.server.configured_model(config) if saved is not None else None
    model = config.model(requested[0] if requested else server_model or config.default_model)
    sources["model"] = requested[1] if requested else (
        Layer.SERVER if server_model else Layer.CONFIG)
    steps, sources["steps"] = said("steps") or below(model.steps, config.defaults.steps)
    cfg, sources["cfg"] = said("cfg") or below(model.cfg, config.defaults.cfg)
    sampler, sources["sampler"] = below(model.sampler, config.defaults.sampler)
    size, sources["size"] = said("size") or (config.defaults.size, Layer.CONFIG)
    count, sources["count"] = said("count") or (config.defaults.count, Layer.CONFIG)
    negative, sources["negative"] = said("negative") or ("", Layer.CONFIG)
    upscale_, sources["upscale"] = said("upscale") or (False, Layer.CONFIG)
    dims = config.model_sizes(model)[Size(size)]  # the model's own (SDXL: 1024 px)
    return Resolved(
        model=model,
        options=options.model_copy(update={"model": model.id, "negative": negative}),
        size=Size(size),
        upscale=upscale_,
        generation=Generation(seed=options.seed, steps=steps, cfg=cfg, sampler=sampler,
                              count=count, width=dims.width, height=dims.height),
        sources=sources,
        ignored=saved.notes if saved is not None else (),
    )
