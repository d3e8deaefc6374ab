"""``rlgrad train CONFIG.yaml [KEY=VALUE ...] [--run-dir DIR] [--overwrite] [--quiet]``
and ``rlgrad train --resume RUN_DIR [total_steps=N] [--quiet]``.

Exit codes: 0 done; 1 stopped by non-finite updates; 2 a usage or config error (nothing
written); 128 + signal number when SIGINT/SIGTERM stopped the run after a checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from rlgrad.config import RunConfig, load_config
from rlgrad.errors import UsageError
from rlgrad.run_lock import LOCK_FILE, hold_run_dir


def default_run_dir(config_path: str) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to write into a directory that already holds a run, unless told to overwrite.

    The caller holds the directory's lock (:func:`rlgrad.run_lock.hold_run_dir`); an overwrite
    deletes everything in it but the lock file.
    """
    holds_run = (run_dir / "config.yaml").exists() or (run_dir / "metrics.jsonl").exists()
    if holds_run and not overwrite:
        raise UsageError(
            f"run directory {run_dir} already holds a run; continue it with "
            f"rlgrad train --resume {run_dir}, pass --overwrite to replace it, "
            "or choose another --run-dir"
        )
    if holds_run:
        for entry in run_dir.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


RESUMABLE_KEYS = ("total_steps",)


def resume_overrides(args: argparse.Namespace) -> list[str]:
    """With ``--resume`` the run's own config.yaml is used; only ``total_steps`` may change."""
    if args.run_dir or args.overwrite:
        raise UsageError("--resume continues RUN_DIR in place; drop --run-dir/--overwrite")
    overrides = ([args.config] if args.config else []) + list(args.overrides)
    for item in overrides:
        if item.split("=", 1)[0].strip() not in RESUMABLE_KEYS or "=" not in item:
            raise UsageError(
                f"--resume takes the run's own config.yaml; got {item!r}, but only "
                "total_steps=N may be changed when resuming"
            )
    return overrides


def load_run(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    """The config and run directory of a new run, or of the one ``--resume`` continues."""
    if args.resume:
        run_dir = Path(args.resume)
        overrides = resume_overrides(args)
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            raise UsageError(
                f"{run_dir} is not a run directory (no config.yaml); give the directory "
                "a run was started in"
            )
        return load_config(config_path, overrides), run_dir
    if args.config is None:
        raise UsageError("give a CONFIG.yaml to train, or --resume RUN_DIR to continue a run")
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config)
    return cfg, run_dir


def run(args: argparse.Namespace) -> int:
    from rlgrad.envs import check_spaces

    cfg, run_dir = load_run(args)
    check_spaces(cfg.env.id, **cfg.env.kwargs)
    if args.resume:  # train() takes the run directory's lock itself
        return train_and_report(cfg, run_dir, args)
    with hold_run_dir(run_dir):  # before --overwrite deletes anything; train() re-enters it
        prepare_run_dir(run_dir, args.overwrite)
        return train_and_report(cfg, run_dir, args)


def train_and_report(cfg: RunConfig, run_dir: Path, args: argparse.Namespace) -> int:
    """Train (or resume) the run and print how it ended; returns the exit code."""
    from rlgrad.learner import NonFiniteError
    from rlgrad.runner import CHECKPOINT_FILE, TrainingInterrupted, train

    try:
        result = train(cfg, run_dir, quiet=args.quiet, resume=bool(args.resume))
    except TrainingInterrupted as stop:
        print(f"rlgrad: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except NonFiniteError as exc:
        checkpoint = run_dir / CHECKPOINT_FILE
        kept = (
            f"the last good checkpoint is {checkpoint}"
            if checkpoint.exists()
            else ("no checkpoint was written yet")
        )
        print(f"rlgrad: error: {exc}; {kept}", file=sys.stderr)
        return 1
    print(
        f"done: {result.global_step} steps, eval return {result.eval_return_mean:.1f} "
        f"± {result.eval_return_std:.1f}; run directory {result.run_dir}"
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train an agent from a YAML config")
    parser.add_argument(
        "config", nargs="?", help="YAML config file, e.g. configs/sac_pendulum.yaml"
    )
    parser.add_argument(
        "overrides", nargs="*", help="KEY=VALUE overrides, e.g. agent.batch_size=512"
    )
    parser.add_argument("--run-dir", help="where to write the run (default runs/<config>-<time>)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run directory"
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest checkpoint (with its own config)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
