"""``rlgrad eval RUN_DIR [--episodes N] [--deterministic|--stochastic] [--checkpoint PATH]
[--seed S] [--video DIR]``: the return of a trained agent over fresh episodes."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from rlgrad.errors import UsageError
    from rlgrad.evaluation import evaluate_run

    if args.episodes <= 0:
        raise UsageError(f"--episodes must be positive, got {args.episodes}")
    result = evaluate_run(
        Path(args.run_dir),
        args.episodes,
        deterministic=args.deterministic,
        checkpoint_path=Path(args.checkpoint) if args.checkpoint else None,
        seed=args.seed,
        video_dir=Path(args.video) if args.video else None,
        device=args.device,
    )
    mode = "deterministic" if args.deterministic else "stochastic"
    print(
        f"eval: return {result.returns.mean():.2f} ± {result.returns.std():.2f} over "
        f"{len(result.returns)} episodes ({mode}; checkpoint {result.checkpoint} at step "
        f"{result.global_step}; seed {result.seed})"
    )
    if args.video:
        print(f"videos in {args.video}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="evaluate a trained run on fresh episodes",
        description="Rebuild a trained run's policy from its config and checkpoint (observation "
        "normalisation included) and print its return, mean and standard deviation, over "
        "fresh episodes.",
        epilog="example: rlgrad eval runs/RUN_DIR --episodes 20 --seed 1",
    )
    parser.add_argument("run_dir", help="a run directory written by rlgrad train")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to play (default 10)")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument(
        "--deterministic",
        dest="deterministic",
        action="store_true",
        default=True,
        help="act with the policy's mean action (default)",
    )
    policy.add_argument(
        "--stochastic", dest="deterministic", action="store_false", help="sample actions"
    )
    parser.add_argument(
        "--checkpoint", help="checkpoint file (default RUN_DIR/checkpoints/latest.pt)"
    )
    parser.add_argument("--seed", type=int, help="seed of the episodes (default: fresh entropy)")
    parser.add_argument("--video", metavar="DIR", help="record the episodes as videos into DIR")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.set_defaults(func=run)
