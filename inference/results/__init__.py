"""Steps 4, 7 and 9 of `Worker.process`: the earlier picture fetched back from Discord, the
upscale, and the result message (files fitted under Discord's limits) posted."""
