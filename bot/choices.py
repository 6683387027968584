"""Autocomplete for options that name a configured model or upscaler: the entries whose id or
name contains what the user typed (Discord shows at most 25)."""

from __future__ import annotations

from discord import app_commands

from ponybot_core.config import Config

_SHOWN = 25


def model_choices(config: Config, current: str) -> list[app_commands.Choice[str]]:
    return _matching([(m.id, m.name) for m in config.models], current)


def upscaler_choices(config: Config, current: str) -> list[app_commands.Choice[str]]:
    return _matching([(u.id, u.name) for u in config.upscalers], current)


def _matching(entries: list[tuple[str, str]], current: str) -> list[app_commands.Choice[str]]:
    needle = current.casefold().strip()
    return [app_commands.Choice(name=f"{name} ({id_})"[:100], value=id_)
            for id_, name in entries
            if needle in id_.casefold() or needle in name.casefold()][:_SHOWN]
