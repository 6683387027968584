"""Test support shared by tests/ and bench/: a fake Discord the real discord.py talks to, tiny
random diffusers and Real-ESRGAN models built offline, a fake Hugging Face hub, Redis fault
injection, and the world they share (ids, the tiny config, a logged-in bot)."""
