"""``rlgrad train CONFIG [KEY=VALUE ...] [--run-dir DIR] [--overwrite] [--quiet]
[--print-config]`` and ``rlgrad train --resume RUN_DIR [total_steps=N] [--quiet]``.

CONFIG is a YAML file or the name of a shipped config (``rlgrad configs`` lists them).

Exit codes: 0 done; 1 stopped by non-finite data (updates, env steps, network state, the final
evaluation); 2 a usage, config, build, checkpoint or I/O error (nothing written); 128 + signal
number when SIGINT/SIGTERM stopped the run after a checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rlgrad.errors import UsageError
from rlgrad.run_lock import LOCK_FILE, hold_run_dir

if TYPE_CHECKING:
    from rlgrad.config import RunConfig

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_run_dir(cfg: RunConfig, root: Path = Path("runs")) -> Path:
    """``runs/<agent>-<env>-s<seed>-<YYYYmmdd-HHMMSS>-<4 random hex>``: the overrides that
    matter most show, and two runs started in the same second get different directories."""
    env = _UNSAFE.sub("_", cfg.env.id).strip("._") or "env"  # rlgrad/PointMass-v0, pkg.mod:Env
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        run_dir = root / f"{cfg.agent.name}-{env}-s{cfg.seed}-{stamp}-{secrets.token_hex(2)}"
        if not run_dir.exists():
            return run_dir


def refuse_a_file(run_dir: Path) -> None:
    """Refuse a ``--run-dir`` that is a file (before taking its lock would fail on it)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file, not a directory; choose another")


def check_run_dir(run_dir: Path, overwrite: bool) -> bool:
    """Refuse a ``--run-dir`` that is a file, or that already holds a run unless told to
    overwrite; returns whether it holds a run."""
    refuse_a_file(run_dir)
    holds_run = (run_dir / "config.yaml").exists() or (run_dir / "metrics.jsonl").exists()
    if holds_run and not overwrite:
        raise UsageError(
            f"run directory {run_dir} already holds a run; continue it with "
            f"rlgrad train --resume {run_dir}, pass --overwrite to replace it, "
            "or choose another --run-dir"
        )
    return holds_run


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to write into a directory that already holds a run, unless told to overwrite.

    The caller holds the directory's lock (:func:`rlgrad.run_lock.hold_run_dir`); an overwrite
    deletes everything in it but the lock file.
    """
    if check_run_dir(run_dir, overwrite):
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
    from rlgrad.config import load_config

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
        raise UsageError(
            "give a CONFIG to train (a shipped config's name, e.g. sac_pendulum, or a YAML "
            "file), or --resume RUN_DIR to continue a run"
        )
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    return cfg, run_dir


def run(args: argparse.Namespace) -> int:
    from rlgrad.config import to_yaml
    from rlgrad.envs import check_env

    cfg, run_dir = load_run(args)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    check_env(cfg.env, cfg.agent.name)  # the spaces, the agent, one reset and step
    if args.resume:  # train() takes the run directory's lock itself
        return train_and_report(cfg, run_dir, args)
    refuse_a_file(run_dir)
    with hold_run_dir(run_dir):  # before --overwrite deletes anything; train() re-enters it
        check_run_dir(run_dir, args.overwrite)
        # --overwrite empties the directory only once train() has built the run from its config
        prepare = functools.partial(prepare_run_dir, run_dir, args.overwrite)
        return train_and_report(cfg, run_dir, args, prepare)


def train_and_report(
    cfg: RunConfig,
    run_dir: Path,
    args: argparse.Namespace,
    prepare: Callable[[], None] | None = None,
) -> int:
    """Train (or resume) the run and print how it ended; returns the exit code. ``prepare``
    (a new run): see :func:`rlgrad.runner.train`."""
    from rlgrad.learner import NonFiniteError
    from rlgrad.runner import CHECKPOINT_FILE, TrainingInterrupted, train

    try:
        result = train(cfg, run_dir, quiet=args.quiet, resume=bool(args.resume), prepare=prepare)
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
    parser = commands.add_parser(
        "train",
        help="train an agent from a config",
        description="Train an agent from a config: the name of a shipped config (rlgrad configs "
        "lists them) or a YAML file, with any key overridden as KEY=VALUE. Writes the run "
        "directory (config, metrics, TensorBoard, checkpoints, result.json). Exit codes: 0 "
        "done, 1 stopped by non-finite data, 2 a usage or config error, 130/143 stopped by "
        "Ctrl-C/SIGTERM after a checkpoint.",
        epilog="example: rlgrad train sac_pendulum total_steps=5000 agent.batch_size=128 seed=1",
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="a shipped config's name (e.g. sac_pendulum) or a YAML file",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="KEY=VALUE overrides, e.g. agent.batch_size=512 total_steps=1e5 "
        "(rlgrad keys AGENT lists the keys)",
    )
    parser.add_argument(
        "--run-dir",
        help="where to write the run (default runs/<agent>-<env>-s<seed>-<time>-<hex>)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run directory"
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest checkpoint (with its own config)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (overrides applied) and exit without training",
    )
    parser.set_defaults(func=run)
