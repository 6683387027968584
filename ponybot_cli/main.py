"""`ponybot COMMAND`: one entry point for the commands a server owner runs by hand.

    ponybot models [pull ID]   which checkpoints are usable; fetch one from the Hugging Face hub
    ponybot draw TAGS          a local picture, exactly as /pony would draw it
    ponybot check              the doctor: what stands between this machine and a /pony
    ponybot up                 Redis, the bot and the worker(s), until Ctrl-C

Each command imports what it needs when it runs, so `ponybot models` and `ponybot up` start
without torch.
"""

from __future__ import annotations

import argparse

from ponybot_cli import doctor, draw, models, supervisor


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default: $PONYBOT_CONFIG or ./config.toml)")
    parser = argparse.ArgumentParser(prog="ponybot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (models, draw, doctor, supervisor):
        command.add_parser(commands, common)
    args = parser.parse_args(argv)
    return args.run(args)
