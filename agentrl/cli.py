"""The ``agentrl`` console script: one entry point, one subcommand per workflow.

Each subcommand lives in a small module exposing ``add_parser(subparsers)``; the module only
builds its argparse parser and imports heavy dependencies (torch, ray) inside its handler, so
``agentrl sandbox selftest`` starts fast. Add a command by appending its module to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Module paths, each with ``add_parser(subparsers) -> None`` that sets ``func`` via set_defaults.
COMMANDS: list[str] = [
    "agentrl.sandboxes.cli",
    "agentrl.envs.cli",
    "agentrl.methods_cli",  # outside agentrl.algorithms, whose __init__ imports torch
    "agentrl.train_cli",
    "agentrl.eval.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentrl",
        description="Train and evaluate tool-using LLM agents with RL on long horizons.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and friends, which stopped reading
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
