"""Step 5 of `Worker.process`, the model: files found and checked, loaded, converted, placed on
the device and kept in an LRU cache. Torch-free to import: `inventory` and `files` serve the
launcher and the bot's side too, so nothing heavy may be imported here."""
