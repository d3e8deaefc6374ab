"""``rlgrad train CONFIG.yaml [KEY=VALUE ...] [--run-dir DIR] [--overwrite] [--quiet]``."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from rlgrad.config import load_config
from rlgrad.errors import UsageError


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


def run(args: argparse.Namespace) -> int:
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


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train an agent from a YAML config")
    parser.add_argument("config", help="YAML config file, e.g. configs/sac_pendulum.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="KEY=VALUE overrides, e.g. agent.batch_size=512"
    )
    parser.add_argument("--run-dir", help="where to write the run (default runs/<config>-<time>)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run directory"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
