"""Steps 3 and 6 of `Worker.process`: jobs grouped into pipeline calls, and the pictures drawn
(text to image, img2img for variations and hires, samplers, long prompts, live progress)."""
