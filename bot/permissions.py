"""Who may do what, checked inside each command (Discord's default permissions are only a
hint that server admins can change)."""

from __future__ import annotations

import discord

from bot.errors import UserFacingError
from ponybot_core.config import Config


def is_owner(config: Config, user_id: int) -> bool:
    return user_id in config.discord.owners


def is_server_admin(interaction: discord.Interaction) -> bool:
    """Manage Server here (administrators have it too)."""
    permissions = interaction.permissions
    return interaction.guild_id is not None and (
        permissions.manage_guild or permissions.administrator)


def require_server_admin(interaction: discord.Interaction, action: str = "do this") -> int:
    """The server id, if the user may manage this server (its queue, its settings); raises
    a UserFacingError naming `action` otherwise."""
    if interaction.guild_id is None:
        raise UserFacingError(
            "This works in a server, not in direct messages; run it in one of its channels.")
    if not is_server_admin(interaction):
        raise UserFacingError(f"You need the Manage Server permission to {action}.")
    return interaction.guild_id


def require_owner(config: Config, interaction: discord.Interaction) -> None:
    if not is_owner(config, interaction.user.id):
        raise UserFacingError("Only the bot's owners can do this.")
