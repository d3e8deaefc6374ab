"""The ``rlgrad`` command and its sub-commands (one module each in :mod:`rlgrad.commands`).

Errors the user can fix (a bad config, a bad override, an unusable env, an occupied run
directory, an unreadable checkpoint) print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import rlgrad.commands
from rlgrad.checkpoint import CheckpointError
from rlgrad.config import ConfigError
from rlgrad.errors import UsageError

EXIT_USAGE = 2
COMMAND_ORDER = ("train", "eval", "compare", "report")

__all__ = ["EXIT_USAGE", "UsageError", "build_parser", "main"]


def command_modules() -> list[str]:
    """The sub-command module names, in help order (known ones first, then the rest)."""
    found = {m.name for m in pkgutil.iter_modules(rlgrad.commands.__path__)}
    return [n for n in COMMAND_ORDER if n in found] + sorted(found - set(COMMAND_ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlgrad", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in command_modules():
        importlib.import_module(f"rlgrad.commands.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UsageError, CheckpointError) as exc:
        print(f"rlgrad: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
