"""Slash-command cogs, one concern each."""
