"""Who may do what, checked inside each command (Discord's default permissions are only a
hint that server admins can change)."""

from __future__ import annotations

import discord

from bot.errors import UserFacingError
from ponybot_core.config import Config


def is_owner(config: Config, user_id: int) -> bool:
    return user_id in config.discord.owners


def is_server_admin(interaction: discord.Interaction) -> bool:
    return interaction.guild_id is not None and interaction.permissions.manage_guild


def require_server_admin(interaction: discord.Interaction) -> int:
    """The server id, if the user may manage this server's queue; raises otherwise."""
    if interaction.guild_id is None:
        raise UserFacingError("This only works in a server.")
    if not interaction.permissions.manage_guild:
        raise UserFacingError("You need the Manage Server permission for this.")
    return interaction.guild_id


def require_owner(config: Config, interaction: discord.Interaction) -> None:
    if not is_owner(config, interaction.user.id):
        raise UserFacingError("Only the bot's owners can do this.")
