"""The ``rlgrad`` command.

    rlgrad train CONFIG.yaml [KEY=VALUE ...] [--run-dir DIR] [--overwrite] [--quiet]

Errors the user can fix (a bad config, a bad override, an unusable env, an occupied run
directory) print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from rlgrad.checkpoint import CheckpointError
from rlgrad.config import ConfigError, load_config

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in how the command was called; printed as one line, exit code 2."""


def default_run_dir(config_path: str) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to write into a directory that already holds a run, unless told to overwrite."""
    holds_run = (run_dir / "config.yaml").exists() or (run_dir / "metrics.jsonl").exists()
    if holds_run and not overwrite:
        raise UsageError(
            f"run directory {run_dir} already holds a run; pass --overwrite to replace it "
            "or choose another --run-dir"
        )
    if holds_run:
        shutil.rmtree(run_dir)


def cmd_train(args: argparse.Namespace) -> int:
    from rlgrad.envs import check_spaces
    from rlgrad.runner import train

    cfg = load_config(args.config, args.overrides)
    check_spaces(cfg.env.id, **cfg.env.kwargs)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config)
    prepare_run_dir(run_dir, args.overwrite)
    result = train(cfg, run_dir, quiet=args.quiet)
    print(
        f"done: {result.global_step} steps, eval return {result.eval_return_mean:.1f} "
        f"± {result.eval_return_std:.1f}; run directory {result.run_dir}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlgrad", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an agent from a YAML config")
    train.add_argument("config", help="YAML config file, e.g. configs/sac_pendulum.yaml")
    train.add_argument(
        "overrides", nargs="*", help="KEY=VALUE overrides, e.g. agent.batch_size=512"
    )
    train.add_argument("--run-dir", help="where to write the run (default runs/<config>-<time>)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
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
