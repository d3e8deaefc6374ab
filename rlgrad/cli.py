"""The ``rlgrad`` command and its sub-commands (one module each in :mod:`rlgrad.commands`).

Errors the user can fix (a bad config, a bad override, an unusable env, an occupied run
directory, an unreadable checkpoint) print one line to stderr and exit with code 2.

Start-up stays fast (``rlgrad --help`` in well under half a second): this module and the
command modules import only the standard library at import time; torch, gymnasium, pydantic
and OmegaConf are imported by the command that runs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import rlgrad
import rlgrad.commands
from rlgrad.errors import UsageError, describe_os_error

EXIT_USAGE = 2
COMMAND_ORDER = ("train", "eval", "compare", "report", "configs", "keys")
DESCRIPTION = """\
Train and evaluate reinforcement-learning agents (SAC, PPO, REINFORCE, discrete SAC) whose
policy gradient is a score-function, a pathwise or a relaxed estimate, and measure how noisy
(and, for discrete actions, how biased) each is."""
EPILOG = """first steps:
  rlgrad configs                                 the shipped configs
  rlgrad train sac_pendulum total_steps=5000     train (any config key can be overridden)
  rlgrad eval runs/RUN_DIR                       evaluate a trained run
  rlgrad keys sac                                every config key of an agent

rlgrad COMMAND --help describes a command."""
# Errors printed as one line (exit 2): defined in modules that the failing command imported.
USAGE_ERRORS = (
    ("rlgrad.errors", "UsageError"),
    ("rlgrad.config", "ConfigError"),
    ("rlgrad.checkpoint", "CheckpointError"),
)

__all__ = ["EXIT_USAGE", "UsageError", "build_parser", "main"]


def command_modules() -> list[str]:
    """The sub-command module names, in help order (known ones first, then the rest)."""
    found = {m.name for m in pkgutil.iter_modules(rlgrad.commands.__path__)}
    return [n for n in COMMAND_ORDER if n in found] + sorted(found - set(COMMAND_ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlgrad",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rlgrad {rlgrad.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(f"rlgrad.commands.{name}").register(commands)
    return parser


def is_usage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error the user can fix (printed as one line, exit code 2).

    The classes are looked up among the modules already imported: an exception of a class
    defined in a module that was never imported cannot have been raised.
    """
    kinds = [getattr(sys.modules[m], name) for m, name in USAGE_ERRORS if m in sys.modules]
    return isinstance(exc, tuple(kinds))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        # The one place where expected failures become one line: config, build, checkpoint
        # and env errors (is_usage_error), and I/O (a read-only run directory, a full disk).
        if isinstance(exc, OSError):
            message = describe_os_error(exc)
        elif is_usage_error(exc):
            message = str(exc)
        else:
            raise
        print(f"rlgrad: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
