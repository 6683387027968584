"""The picture check: every picture bound for a channel that is not age-restricted passes a
classifier after sampling (and upscaling) and before it is posted (step 8 of
`Worker.process`); a flagged one is never posted there.

- `classifier.py`: the classifier ([safety] in config.toml; a timm tagger with a rating head,
  SmilingWolf's wd-*-tagger-v3 by default), loaded offline, run in batches on the worker's
  device, and its verdict per picture;
- `checking.py`: which pictures of a job are checked, and what the server's choice makes of
  a flagged one (withheld behind a placeholder, spoilered, or moved to its age-restricted
  channel). A configured classifier that is missing or fails withholds: never fails open;
- `channels.py`: a job queued as needing no check (an age-restricted channel) is checked
  unless Discord says, when the worker draws and posts it, that the channel still is.
"""
