"""Import-light code shared by the bot and the worker: config, the job contract, the queue."""
