"""``rlgrad report DIR [--threshold T]``: figures and tables of a study's finished runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from rlgrad.report import write_report

    report = write_report(Path(args.dir), threshold=args.threshold)
    print(f"report: {report.path} ({len(report.stats)} estimator/env groups)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="write returns.png, gradients.png and report.md for a study folder",
        description="Read the finished runs under DIR (config.yaml, metrics.jsonl) and write "
        "returns.png, gradients.png and report.md into DIR.",
    )
    parser.add_argument("dir", help="study folder (rlgrad compare's --out) or any folder of runs")
    parser.add_argument(
        "--threshold",
        type=float,
        help="return for 'steps to threshold', every env (default: the study spec's)",
    )
    parser.set_defaults(func=run)
