"""The hires pass a request asks for (`/pony hires:true`, the ⬆️ Hires button, an edited hires
job), planned from `[hires]` in config.toml and refused privately when the size cannot grow."""

from __future__ import annotations

from bot.errors import UserFacingError
from ponybot_core import hires
from ponybot_core.config import Config
from ponybot_core.hires import HiresPass


def hires_pass(config: Config, width: int, height: int, steps: int) -> HiresPass:
    """The second pass for a first pass of `width`×`height` px and `steps` steps."""
    try:
        return hires.plan(config.hires, width, height, steps)
    except hires.HiresTooLarge as exc:
        raise UserFacingError(f"Hires is not available here: {exc}.") from None
