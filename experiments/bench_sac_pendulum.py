"""Learning benchmark: SAC on Pendulum-v1 with the shipped config, several seeds.

    python experiments/bench_sac_pendulum.py [--seeds 0 1 2] [--steps 20000] [--workers 2]

Prints the final evaluation return (10 deterministic episodes) per seed and the mean; the
target for ``configs/sac_pendulum.yaml`` is a mean of at least −200 after 20k steps.
Writes the table as JSON to ``experiments/out/bench_sac_pendulum.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sac_pendulum.yaml"


def run_seed(seed: int, steps: int, out: Path) -> dict:
    from rlgrad.config import load_config
    from rlgrad.runner import train

    overrides = [
        f"seed={seed}",
        f"total_steps={steps}",
        "logging.wandb=disabled",
        "logging.tensorboard=false",
        "learner.torch_threads=1",
    ]
    cfg = load_config(CONFIG, overrides)
    start = time.perf_counter()
    result = train(cfg, out / f"seed{seed}", quiet=True)
    seconds = time.perf_counter() - start
    return {
        "seed": seed,
        "eval_return_mean": result.eval_return_mean,
        "eval_return_std": result.eval_return_std,
        "seconds": seconds,
        "steps_per_second": steps / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("experiments/out/bench_sac_pendulum"))
    args = parser.parse_args()

    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_seed, s, args.steps, args.out) for s in args.seeds]
        rows = [f.result() for f in futures]

    print(f"SAC Pendulum-v1, {args.steps} steps, configs/sac_pendulum.yaml")
    print(f"{'seed':>4}  {'eval return':>16}  {'steps/s':>8}")
    for row in rows:
        mean, std = row["eval_return_mean"], row["eval_return_std"]
        print(f"{row['seed']:>4}  {mean:>9.1f} ± {std:<5.1f}  {row['steps_per_second']:>8.1f}")
    overall = statistics.mean(r["eval_return_mean"] for r in rows)
    print(f"mean  {overall:>9.1f}   (target ≥ −200)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out.parent / "bench_sac_pendulum.json").write_text(
        json.dumps({"steps": args.steps, "runs": rows, "mean_eval_return": overall}, indent=2)
    )


if __name__ == "__main__":
    main()
