"""Point discord.py at the configured API and gateway (Discord itself, a proxy, or a test double).

discord.py builds every REST and webhook URL from `Route.BASE` and connects a plain client to
`DiscordWebSocket.DEFAULT_GATEWAY`; setting both is all it takes.
"""

from __future__ import annotations

import discord
import discord.gateway
import discord.http
import yarl

from ponybot_core.config import DiscordConfig


def use_endpoints(config: DiscordConfig) -> None:
    discord.http.Route.BASE = config.api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.gateway_url)
