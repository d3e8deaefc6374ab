"""``rlgrad report DIR [--threshold T] [--wandb]``: figures and tables of a study's runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from rlgrad.report import log_to_wandb, write_report

    report = write_report(Path(args.dir), threshold=args.threshold)
    print(f"report: {report.path} ({len(report.stats)} estimator/env groups)")
    if args.wandb:
        print(f"rlgrad: {log_to_wandb(report)}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="write returns.png, gradients.png, profiles.png and report.md for a study folder",
        description="Read the finished runs under DIR (config.yaml, metrics.jsonl) and write "
        "returns.png, gradients.png, profiles.png and report.md into DIR. Runs are pooled as "
        "seeds only when their configs differ in nothing but seed, name and logging.",
    )
    parser.add_argument("dir", help="study folder (rlgrad compare's --out) or any folder of runs")
    parser.add_argument(
        "--threshold",
        type=float,
        help="return for 'steps to threshold', every env (default: the study spec's)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the aggregate table and the figures as one W&B run in the study's group "
        "(job type 'report'; offline under DIR/wandb unless a W&B key is configured)",
    )
    parser.set_defaults(func=run)
