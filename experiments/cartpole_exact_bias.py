"""The discrete estimators against the exact gradient at the end of training, bias resolved.

During a run, ``sac_discrete`` measures every estimator on ``diagnostics.batch`` replay states
(256 in configs/compare/cartpole.yaml): enough to see the variance, but a bias below the noise
floor √(tr Σ̂ / n) / ‖g‖ reads as that floor. This script takes the final checkpoint of each run
of a study's ``exact`` label (actor, critics, α and replay buffer as training left them), draws
``--states`` replay states (16384 by default: a noise floor 8× lower) and measures, on those
states and that policy, each estimator of ``ESTIMATORS`` against the exact per-state gradient
(``Agent.exact_per_state``, the closed form) with :func:`rlgrad.estimators.categorical_statistics`:
relative bias ‖ḡ − g‖/‖g‖, its standard error, the noise floor, the per-state variance
tr Σ̂ of ĝ_i − g_i and cos(ḡ, g). Per estimator the table gives the median over the runs and
the range.

Usage: python experiments/cartpole_exact_bias.py [STUDY_DIR] [--label exact] [--states N]
    [--seed S]
STUDY_DIR defaults to studies/cartpole (``rlgrad compare configs/compare/cartpole.yaml``).
Writes the table to stdout and a CSV to experiments/out/cartpole_exact_bias.csv.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import gymnasium as gym
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from rlgrad.agents import agent_spec  # noqa: E402
from rlgrad.envs import EnvSpec  # noqa: E402
from rlgrad.estimators import categorical_statistics, make_categorical_estimator  # noqa: E402
from rlgrad.evaluation import load_run_agent  # noqa: E402
from rlgrad.learner import Learner  # noqa: E402

ESTIMATORS: list[tuple[str, str, float]] = [
    ("score K=8 loo", "score", 1.0),
    ("gumbel_softmax τ=1.0", "gumbel_softmax", 1.0),
    ("gumbel_softmax τ=0.5", "gumbel_softmax", 0.5),
    ("gumbel_softmax τ=0.1", "gumbel_softmax", 0.1),
    ("straight_through τ=1.0", "straight_through", 1.0),
    ("straight_through τ=0.5", "straight_through", 0.5),
    ("straight_through τ=0.1", "straight_through", 0.1),
]
"""(row name, ``actor_estimator``, temperature) of every estimator measured."""
COLUMNS = ("bias", "bias_stderr", "noise_floor", "variance", "cosine")


def trained_agent(run_dir: Path):
    """The run's agent with its final checkpoint loaded (buffers included)."""
    cfg, checkpoint, _ = load_run_agent(run_dir)
    env = gym.make(cfg.env.id, **cfg.env.kwargs)
    spec = EnvSpec.of(env.observation_space, env.action_space)
    agent = agent_spec(cfg.agent.name).agent(cfg.agent, spec, Learner(cfg.learner), 1)
    agent.load_state_dict(checkpoint["agent"])
    return cfg, agent


def measure(run_dir: Path, states: int, seed: int) -> dict[str, dict[str, float]]:
    """Each estimator's statistics against the exact gradient on ``states`` replay states."""
    cfg, agent = trained_agent(run_dir)
    torch.manual_seed(seed)
    alpha = agent.log_alpha.detach().exp()
    obs = agent.buffer.sample(states).obs
    q = agent.frozen_q(obs)
    exact = agent.exact_per_state(obs, q, alpha)
    out = {}
    for row, name, temperature in ESTIMATORS:
        agent.estimators[name] = make_categorical_estimator(
            name, cfg.agent.score_samples, cfg.agent.score_baseline, temperature
        )
        grads = agent.per_state_gradients(name, obs, q, alpha)
        stats = categorical_statistics(tuple(grads.values()), tuple(exact.values()))
        out[row] = {column: float(getattr(stats, column)) for column in COLUMNS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", default="studies/cartpole")
    parser.add_argument("--label", default="exact", help="the study label whose runs to load")
    parser.add_argument("--states", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "experiments" / "out"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = sorted(Path(args.study).glob(f"runs/*/{args.label}/*/checkpoints/latest.pt"))
    if not runs:
        sys.exit(f"no checkpoints under {args.study}/runs/*/{args.label}/")
    results = {}
    for path in runs:
        run_dir = path.parents[1]
        results[run_dir.name] = measure(run_dir, args.states, args.seed)
        print(f"measured {run_dir}", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cartpole_exact_bias.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "estimator", *COLUMNS])
        for run, rows in results.items():
            for row, stats in rows.items():
                writer.writerow([run, row, *(f"{stats[c]:.6g}" for c in COLUMNS)])

    print(f"{len(results)} runs of '{args.label}', {args.states} replay states each")
    print("| estimator | bias (median, range) | bias SE | noise floor | variance | cosine |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row, _, _ in ESTIMATORS:
        cells = []
        for column in COLUMNS:
            values = [rows[row][column] for rows in results.values()]
            median = statistics.median(values)
            cells.append(f"{median:.3g} ({min(values):.3g}–{max(values):.3g})")
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
