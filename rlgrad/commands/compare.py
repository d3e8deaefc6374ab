"""``rlgrad compare SPEC.yaml [KEY=VALUE ...] [--workers N] [--backend local|ray] [--out DIR]``."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

EXIT_FAILED_RUNS = 1
EXIT_INTERRUPTED = 130


def run(args: argparse.Namespace) -> int:
    from rlgrad.report import write_report
    from rlgrad.study import run_study, summarize
    from rlgrad.study_spec import load_spec

    spec = load_spec(args.spec)
    out_dir = Path(args.out) if args.out else Path("studies") / spec.name
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: runs checkpoint
    try:
        outcomes = run_study(
            spec,
            out_dir,
            backend=args.backend,
            workers=args.workers,
            ray_address=args.ray_address,
            overrides=args.overrides,
            echo=lambda line: print(line, flush=True),
        )
    except KeyboardInterrupt:
        print(
            "\ninterrupted: run the same command again to finish the study "
            "(finished runs are skipped)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summarize(outcomes))
    if any(o.status != "failed" for o in outcomes):
        report = write_report(out_dir)
        print(f"report: {report.path}")
    return EXIT_FAILED_RUNS if any(o.status == "failed" for o in outcomes) else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare",
        help="run an estimator-stability study (a grid of runs) and write its report",
        description="Run every run of a study spec in parallel, skip finished ones, then write "
        "the report (rlgrad report). Exits 1 if a run failed.",
    )
    parser.add_argument("spec", help="study spec, e.g. configs/compare/pendulum.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="KEY=VALUE overrides for every run, e.g. total_steps=2000"
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        help="runs at a time (local: default the number of cores; ray: CPUs of a local Ray)",
    )
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument(
        "--ray-address", help="Ray cluster to join (default $RAY_ADDRESS, else a local Ray)"
    )
    parser.add_argument("--out", help="study folder (default studies/<study name>)")
    parser.set_defaults(func=run)
