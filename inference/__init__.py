"""The GPU worker: takes jobs from the queue, draws, upscales, posts results to Discord.

`worker.py` is the recipe (`Worker.process`, numbered steps); each step's code is in a folder:
`models/` (5: load), `drawing/` (3, 6: group and sample), `results/` (4, 7, 9: source picture,
upscale, post) and `loop/` (1, 2, 10 and the upkeep around them)."""
