"""The GPU worker: loads checkpoints, samples, upscales, posts results to Discord."""
