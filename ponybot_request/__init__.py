"""What a user asks for, turned into a queued `Job`: the tag language, the option checks, the
layered defaults, the caption for the model and the channel's policy, with one way in for every
entry point (`ponybot_request.jobs.build_job`). Imports neither discord.py nor torch: the bot
translates Discord into a request, `ponybot draw` its command line."""
