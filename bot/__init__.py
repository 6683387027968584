"""The Discord bot process: gateway, slash commands, enqueueing. Never imports torch."""
