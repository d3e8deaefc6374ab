"""Learning benchmark of the on-policy agents (PPO, REINFORCE) with the shipped configs.

    python experiments/bench_onpolicy.py --config configs/ppo_pendulum.yaml --seeds 0 1 2
    python experiments/bench_onpolicy.py --config configs/reinforce_invpendulum.yaml \\
        --baselines none mean value gae --steps 300000
    python experiments/bench_onpolicy.py --agent ppo   # the agent's shipped configs, in turn

Trains each (config, baseline, seed) with ``logging.wandb=disabled`` and prints the final
evaluation return (the config's eval episodes, deterministic) per seed and the mean, against the
config's target. For REINFORCE, ``--baselines`` trains one table per ``agent.baseline`` at the
same budget. Runs go to ``experiments/out/bench_onpolicy/<config>/<tag>/<baseline>/seed<N>``;
the tables are written as JSON to
``experiments/out/bench_onpolicy_<config>[_baselines][_<tag>].json``. ``--workers`` runs seeds
in parallel processes (each single-threaded); ``-o KEY=VALUE`` overrides apply to every run,
e.g. ``-o agent.advantage_normalization=scale`` to compare REINFORCE's baselines without the batch
centring that standardised advantages add.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
OUT = REPO / "experiments" / "out"

# The shipped configs per agent, with the benchmark's target (mean final eval return ≥ target).
SHIPPED: dict[str, dict[str, float]] = {
    "ppo": {"ppo_pendulum": -300.0, "ppo_invpendulum": 950.0},
    "reinforce": {"reinforce_invpendulum": 900.0},
}


def eval_curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(global_step, eval/return_mean, eval/return_std) of every evaluation of a run."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        (r["global_step"], r["eval/return_mean"], r["eval/return_std"])
        for r in rows
        if "eval/return_mean" in r
    ]


def run_one(
    config: Path, seed: int, steps: int | None, overrides: list[str], out: Path, reuse: bool
) -> dict:
    """Train one run into ``out`` (or, with ``reuse``, read the finished run already there)."""
    from rlgrad.config import load_config
    from rlgrad.runner import train

    cfg = load_config(
        config,
        [
            f"seed={seed}",
            "logging.wandb=disabled",
            "logging.tensorboard=false",
            "learner.torch_threads=1",
            *([f"total_steps={steps}"] if steps else []),
            *overrides,
        ],
    )
    timing = out / "bench_timing.json"
    finished = (out / "checkpoints" / "latest.pt").exists() and (out / "metrics.jsonl").exists()
    if reuse and finished and eval_curve(out) and eval_curve(out)[-1][0] >= cfg.total_steps:
        seconds = json.loads(timing.read_text())["seconds"] if timing.exists() else None
    else:
        if out.exists():
            shutil.rmtree(out)
        start = time.perf_counter()
        train(cfg, out, quiet=True)
        seconds = time.perf_counter() - start
        timing.write_text(json.dumps({"seconds": seconds}))
    curve = eval_curve(out)
    step, mean, std = curve[-1]
    return {
        "seed": seed,
        "steps": step,
        "eval_return_mean": mean,
        "eval_return_std": std,
        "eval_curve": [[s, m] for s, m, _ in curve],
        "seconds": None if seconds is None else round(seconds, 1),
        "steps_per_second": None if seconds is None else round(step / seconds, 1),
    }


def first_at(curve: list[list[float]], target: float | None) -> str:
    """The first evaluation step whose mean return reached ``target`` ('-' if none)."""
    if target is None:
        return "-"
    return next((f"{int(s)}" for s, m in curve if m >= target), "never")


def print_table(title: str, rows: list[dict], target: float | None) -> float:
    print(title)
    print(
        f"{'seed':>6}  {'final eval return':>17}  {'mean of evals':>13}  {'first ≥ target':>14}"
        f"  {'seconds':>8}  {'steps/s':>8}"
    )
    for row in rows:
        mean, std = row["eval_return_mean"], row["eval_return_std"]
        auc = statistics.mean(m for _, m in row["eval_curve"])
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
        sps = "-" if row["steps_per_second"] is None else f"{row['steps_per_second']:.0f}"
        print(
            f"{row['seed']:>6}  {mean:>9.1f} ± {std:<6.1f} {auc:>13.1f}"
            f"  {first_at(row['eval_curve'], target):>14}  {seconds:>8}  {sps:>8}"
        )
    overall = statistics.mean(r["eval_return_mean"] for r in rows)
    overall_auc = statistics.mean(statistics.mean(m for _, m in r["eval_curve"]) for r in rows)
    passed = sum(r["eval_return_mean"] >= target for r in rows) if target is not None else None
    suffix = f"   (target ≥ {target:g}: {passed}/{len(rows)} seeds)" if target is not None else ""
    print(f"{'mean':>6}  {overall:>9.1f}{'':9} {overall_auc:>13.1f}{suffix}\n")
    return overall


def bench_config(args: argparse.Namespace, config: Path, target: float | None) -> dict:
    from rlgrad.config import load_config

    cfg = load_config(config, args.overrides)
    agent = cfg.agent.name
    steps = args.steps or cfg.total_steps
    # For REINFORCE: one table per baseline; None = the config's own choice.
    baselines: list[str | None] = (
        list(args.baselines) if (agent == "reinforce" and args.baselines) else [None]
    )
    jobs = [(baseline, seed) for baseline in baselines for seed in args.seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {}
        for baseline, seed in jobs:
            overrides = [*args.overrides, *([f"agent.baseline={baseline}"] if baseline else [])]
            out = args.out / config.stem / (args.tag or "default") / (baseline or "config")
            futures[(baseline, seed)] = pool.submit(
                run_one, config, seed, steps, overrides, out / f"seed{seed}", args.reuse
            )
        results = {job: f.result() for job, f in futures.items()}

    report: dict = {"config": str(config.relative_to(REPO)), "steps": steps, "tables": {}}
    for baseline in baselines:
        rows = [results[(baseline, seed)] for seed in args.seeds]
        label = baseline or getattr(cfg.agent, "baseline", None) or "config"
        title = f"{agent} {cfg.env.id}, {steps} steps, {config.name}"
        if baseline is not None:
            title += f", agent.baseline={baseline}"
        if args.overrides:
            title += f" [{' '.join(args.overrides)}]"
        mean = print_table(title, rows, target)
        report["tables"][label] = {"runs": rows, "mean_eval_return": mean, "target": target}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--agent", choices=sorted(SHIPPED), help="every shipped config of it")
    which.add_argument("--config", type=Path, help="one YAML config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="total_steps (default: the config's)")
    parser.add_argument(
        "--baselines",
        nargs="*",
        choices=["none", "mean", "value", "gae"],
        help="REINFORCE: also train with each of these agent.baseline values",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel training processes")
    parser.add_argument("--out", type=Path, default=OUT / "bench_onpolicy")
    parser.add_argument("--tag", default="", help="suffix of the JSON file's name")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read runs already finished in the output directory instead of training them again",
    )
    parser.add_argument(
        "-o",
        "--override",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run (repeatable)",
    )
    args = parser.parse_args()

    if args.config:
        configs = [(args.config.resolve(), _target(args.config.stem))]
    else:
        configs = [(CONFIGS / f"{stem}.yaml", t) for stem, t in SHIPPED[args.agent].items()]
    for config, target in configs:
        report = bench_config(args, config, target)
        OUT.mkdir(parents=True, exist_ok=True)
        suffix = ("_baselines" if args.baselines else "") + (f"_{args.tag}" if args.tag else "")
        path = OUT / f"bench_onpolicy_{config.stem}{suffix}.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path.relative_to(REPO)}")


def _target(stem: str) -> float | None:
    for targets in SHIPPED.values():
        if stem in targets:
            return targets[stem]
    return None


if __name__ == "__main__":
    main()
