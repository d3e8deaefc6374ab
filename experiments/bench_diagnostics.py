"""Cost benchmark of rlgrad's gradient diagnostics (not a test; numbers depend on the machine).

    python experiments/bench_diagnostics.py [--batch 256] [--repeats 5] [--train-steps 1500]
        [--train-repeats 5] [--intervals 10 100] [--skip-train] [--skip-sb3]

Four sections, each measured side by side in one process (medians of ``--repeats`` runs,
interleaved so that a change in machine load hits every variant alike), single-threaded torch:

1. **Per-sample gradients** at batch ``--batch`` on a default-size SAC agent (hidden [256, 256],
   Pendulum's dims, obs 3 / act 1): ``Agent.pathwise_per_sample`` and ``Agent.score_per_sample``
   (torch.func vmap over the samples) against a Python loop of ``--batch`` ordinary reverse-mode
   calls (``torch.autograd.grad``, what ``backward()`` computes) producing the same rows; the
   rows are checked to agree. Target: vmap ≥ 5× faster.
2. **Where one measurement's time goes**: ``Agent.diagnose`` split into its stages (replay
   sampling, per-sample pathwise, per-sample score, the two reference gradients, statistics),
   each timed on its own, next to the whole call and one ``update_once``; plus cProfile's
   cumulative times of the functions ``diagnose`` calls.
3. **The SB3 callback**: one ``GradientDiagnosticsCallback.measure()`` on SB3's SAC (default
   nets, batch 256, reference 2048) against one SB3 gradient step (``--skip-sb3`` skips it).
4. **Training slowdown**: ``rlgrad.runner.train`` on ``configs/sac_pendulum.yaml`` with
   ``total_steps=--train-steps``, ``agent.learning_starts=100``, ``eval.episodes=1``, no W&B or
   TensorBoard, ``diagnostics.interval`` ∈ {0, ``--intervals``…} (updates between two
   measurements; the default ``DiagnosticsConfig``: batch = the agent's 256, reference 4096).
   Target: ≤ 10 % slower at interval 10.

The (B, P) per-sample matrices and the K × reference critic activations are tens of MB each;
glibc serves such blocks with fresh mmap'd pages every time, so page faults (system time) are
a large part of the cost. ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000`` in the
environment keeps them in the heap and shows how large.

Writes everything as JSON to ``experiments/out/bench_diagnostics.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "sac_pendulum.yaml"
OUT = REPO / "experiments" / "out" / "bench_diagnostics.json"
# Measure the checkout this file lives in, not whatever copy of rlgrad is installed.
sys.path.insert(0, str(REPO))


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, run round-robin ``repeats`` times after a warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def make_agent(buffer_rows: int = 0, seed: int = 0):
    """A default-size SAC agent with Pendulum's dims, its buffer filled with random rows."""
    from rlgrad.agents.sac import Agent, Config
    from rlgrad.envs import EnvSpec
    from rlgrad.learner import Learner

    torch.manual_seed(seed)
    agent = Agent(Config(), EnvSpec(obs_dim=3, act_dim=1), Learner(), n_envs=1)
    if buffer_rows:
        agent.observe(
            torch.randn(buffer_rows, 3),
            torch.rand(buffer_rows, 1) * 2 - 1,
            torch.randn(buffer_rows),
            torch.randn(buffer_rows, 3),
            torch.zeros(buffer_rows, dtype=torch.bool),
            torch.zeros(buffer_rows, dtype=torch.bool),
        )
    return agent


# ----------------------------------------------------------------------------- 1. per-sample


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)


def loop_rows(agent, losses: Callable[[int], torch.Tensor], n: int) -> list[tuple]:
    """One ``torch.autograd.grad`` call (what ``backward()`` computes) per sample."""
    params = list(agent.actor.parameters())
    return [torch.autograd.grad(losses(i), params) for i in range(n)]


def pathwise_loop(agent, obs: torch.Tensor, alpha: torch.Tensor, seed: int) -> list[tuple]:
    """The rows of ``pathwise_per_sample`` (same ε), one state at a time through actor+critic."""
    torch.manual_seed(seed)
    eps = torch.randn(obs.shape[0], agent.act_dim)

    def loss(i: int) -> torch.Tensor:
        policy = agent.actor(obs[i : i + 1])
        u = policy.mean + policy.std * eps[i : i + 1]
        q = agent.frozen_q(obs[i : i + 1], torch.tanh(u))
        return (alpha * policy.log_prob_pre_tanh(u) - q).sum()

    return loop_rows(agent, loss, obs.shape[0])


def score_loop(agent, obs: torch.Tensor, alpha: torch.Tensor, seed: int) -> list[tuple]:
    """The rows of ``score_per_sample`` (same draws): batched advantages, then one state each."""
    torch.manual_seed(seed)
    with torch.no_grad():
        policy = agent.actor(obs)
        u = policy.rsample_pre_tanh((agent.cfg.score_samples,))
        advantage = agent._score_advantage(obs, policy, u, alpha)

    def loss(i: int) -> torch.Tensor:
        log_prob = agent.actor(obs[i : i + 1]).log_prob_pre_tanh(u[:, i : i + 1])
        return ((advantage[:, i : i + 1] + alpha) * log_prob).mean()

    return loop_rows(agent, loss, obs.shape[0])


def bench_per_sample(batch: int, repeats: int) -> dict:
    """vmap against the loop; each returns its natural output ({name: (B, …)} / B tuples)."""
    agent = make_agent()
    alpha = torch.tensor(0.2)
    obs = torch.randn(batch, 3)

    def vmapped(name: str) -> Callable[[], dict]:
        method = getattr(agent, f"{name}_per_sample")

        def run() -> dict:
            torch.manual_seed(1)
            return method(obs, alpha)

        return run

    loops = {"pathwise": pathwise_loop, "score": score_loop}
    out: dict = {"batch": batch, "repeats": repeats, "parameters": 0}
    for name, loop in loops.items():
        got = flat(vmapped(name)())
        want = torch.stack(
            [torch.cat([g.flatten() for g in row]) for row in loop(agent, obs, alpha, 1)]
        )
        out["parameters"] = got.shape[1]
        err = ((got - want).norm(dim=1) / want.norm(dim=1).clamp_min(1e-12)).max().item()
        times = median_times(
            {"vmap": vmapped(name), "loop": lambda loop=loop: loop(agent, obs, alpha, 1)},
            repeats,
        )
        out[name] = {
            "vmap_s": times["vmap"],
            "loop_s": times["loop"],
            "speedup": times["loop"] / times["vmap"],
            "max_row_rel_error": err,
        }
    return out


# ----------------------------------------------------------------------------- 4. training


def train_once(interval: int, steps: int, seed: int, root: Path) -> float:
    from rlgrad.config import load_config
    from rlgrad.runner import train

    cfg = load_config(
        CONFIG,
        [
            f"seed={seed}",
            f"total_steps={steps}",
            "agent.learning_starts=100",
            "logging.wandb=disabled",
            "logging.tensorboard=false",
            "learner.torch_threads=1",
            "eval.episodes=1",
            "eval.interval=0",
            f"diagnostics.interval={interval}",
        ],
    )
    start = time.perf_counter()
    train(cfg, root / f"interval{interval}", quiet=True)
    return time.perf_counter() - start


def bench_training(steps: int, intervals: list[int], repeats: int, seed: int) -> dict:
    variants = [0, *intervals]
    times: dict[int, list[float]] = {i: [] for i in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # round-robin: load drifts hit every variant alike
            for interval in variants if r % 2 == 0 else reversed(variants):
                times[interval].append(train_once(interval, steps, seed, Path(tmp)))
    base = statistics.median(times[0])
    rows = {}
    for interval in variants:
        med = statistics.median(times[interval])
        updates = steps - 100
        rows[str(interval)] = {
            "median_s": med,
            "all_s": times[interval],
            "slowdown": med / base,
            "measurements": updates // interval if interval else 0,
        }
    return {"steps": steps, "updates": steps - 100, "repeats": repeats, "runs": rows}


# ----------------------------------------------------------------------------- 2. profile


def bench_stages(repeats: int) -> dict:
    from rlgrad import diagnostics
    from rlgrad.config import DiagnosticsConfig

    cfg = DiagnosticsConfig(interval=1)
    agent = make_agent(buffer_rows=10_000)
    alpha = agent.log_alpha.detach().exp()
    batch = cfg.batch or agent.cfg.batch_size
    obs = agent.buffer.sample(batch).obs
    ref_obs = agent.buffer.sample(cfg.reference_batch).obs
    grads = {"pathwise": agent.pathwise_per_sample(obs, alpha)}
    grads["score"] = agent.score_per_sample(obs, alpha)
    ref = torch.zeros(flat(grads["pathwise"]).shape[1])

    def ref_pathwise() -> torch.Tensor:
        policy = agent.actor(ref_obs)
        actions, log_prob = policy.rsample_with_log_prob()
        loss = agent.pathwise_actor_loss(ref_obs, actions, log_prob, alpha)
        return diagnostics.batch_gradient(agent.actor, loss)

    def ref_score() -> torch.Tensor:
        loss = agent.score_actor_loss(ref_obs, agent.actor(ref_obs), alpha)
        return diagnostics.batch_gradient(agent.actor, loss)

    def stats() -> None:  # what diagnose does once it has the per-sample rows
        means = []
        for g in grads.values():
            f = diagnostics.flatten(g)
            diagnostics.gradient_statistics(f, ref)
            means.append(f.double().mean(0))
        diagnostics.cosine(*means)

    stages = {
        "replay_sampling": lambda: (
            agent.buffer.sample(batch),
            agent.buffer.sample(cfg.reference_batch),
        ),
        "per_sample_pathwise": lambda: agent.pathwise_per_sample(obs, alpha),
        "per_sample_score": lambda: agent.score_per_sample(obs, alpha),
        "reference_pathwise": ref_pathwise,
        "reference_score": ref_score,
        "statistics": stats,
        "diagnose_total": lambda: agent.diagnose(cfg),
        "update_once": lambda: agent.update_once(agent.buffer.sample(agent.cfg.batch_size)),
    }
    times = median_times(stages, repeats)
    update = times["update_once"]
    parts = [k for k in stages if k not in ("diagnose_total", "update_once")]
    out = {
        "batch": batch,
        "reference_batch": cfg.reference_batch,
        "score_samples": agent.cfg.score_samples,
        "seconds": times,
        "in_updates": {k: v / update for k, v in times.items()},
        "share_of_stage_sum": {k: times[k] / sum(times[p] for p in parts) for k in parts},
    }

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeats):
        agent.diagnose(cfg)
    profiler.disable()
    wanted = {
        "pathwise_per_sample",
        "score_per_sample",
        "batch_gradient",
        "score_actor_loss",
        "pathwise_actor_loss",
        "_score_advantage",
        "gradient_statistics",
        "flatten",
        "cosine",
        "sample",
        "diagnose",
    }
    found: dict[str, float] = {}
    for (file, _, name), row in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        if name in wanted and ("rlgrad" in file or "agents" in file):
            found[name] = found.get(name, 0.0) + row[3] / repeats  # cumulative time per call
    out["cprofile_cumulative_s_per_diagnose"] = dict(sorted(found.items(), key=lambda kv: -kv[1]))
    return out


# ----------------------------------------------------------------------------- 3. SB3


def bench_sb3(repeats: int, seed: int) -> dict:
    """One ``GradientDiagnosticsCallback`` measurement on SB3's SAC (default nets) against one
    SB3 gradient step (``SAC.train(gradient_steps=1)``), after 300 env steps of training."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    from rlgrad.integrations.sb3 import GradientDiagnosticsCallback

    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=100, device="cpu", seed=seed)
    model.set_logger(configure(None, [""]))
    model.learn(300)
    callback = GradientDiagnosticsCallback()  # batch 256, reference 2048, K = 8
    callback.init_callback(model)
    times = median_times(
        {
            "measure": callback.measure,
            "sb3_update": lambda: model.train(gradient_steps=1, batch_size=model.batch_size),
        },
        repeats,
    )
    return {
        "batch": callback.batch,
        "reference_batch": callback.reference_batch,
        "seconds": times,
        "measure_in_updates": times["measure"] / times["sb3_update"],
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--train-repeats", type=int, default=5)
    parser.add_argument("--intervals", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)

    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    per = bench_per_sample(args.batch, args.repeats)
    result["per_sample"] = per
    print(
        f"1. per-sample gradients, SAC actor [256, 256] ({per['parameters']} parameters), "
        f"batch {args.batch}, median of {args.repeats}"
    )
    print(
        f"   {'estimator':<10} {'vmap (ms)':>10} {'loop (ms)':>10} {'speedup':>8} "
        f"{'max row err':>12}  (target ≥ 5×)"
    )
    for name in ("pathwise", "score"):
        r = per[name]
        print(
            f"   {name:<10} {1e3 * r['vmap_s']:>10.1f} {1e3 * r['loop_s']:>10.1f} "
            f"{r['speedup']:>7.1f}× {r['max_row_rel_error']:>12.1e}"
        )

    stages = bench_stages(args.repeats)
    result["stages"] = stages
    print(
        f"\n2. one diagnose() (batch {stages['batch']}, reference {stages['reference_batch']}, "
        f"K={stages['score_samples']}), median of {args.repeats}"
    )
    print(f"   {'stage':<22} {'ms':>8} {'updates':>8} {'share':>7}")
    for name, seconds in stages["seconds"].items():
        share = stages["share_of_stage_sum"].get(name)
        share_s = f"{100 * share:>6.1f}%" if share is not None else ""
        print(f"   {name:<22} {1e3 * seconds:>8.1f} {stages['in_updates'][name]:>8.1f} {share_s}")
    print("   cProfile, cumulative ms per diagnose():")
    for name, seconds in stages["cprofile_cumulative_s_per_diagnose"].items():
        print(f"     {name:<22} {1e3 * seconds:>8.1f}")

    if not args.skip_sb3:
        sb3 = bench_sb3(args.repeats, args.seed)
        result["sb3_callback"] = sb3
        print(
            f"\n3. SB3 SAC (default nets): GradientDiagnosticsCallback.measure() "
            f"(batch {sb3['batch']}, reference {sb3['reference_batch']}) "
            f"{1e3 * sb3['seconds']['measure']:.1f} ms = {sb3['measure_in_updates']:.1f} SB3 "
            f"updates of {1e3 * sb3['seconds']['sb3_update']:.1f} ms"
        )

    if not args.skip_train:
        training = bench_training(args.train_steps, args.intervals, args.train_repeats, args.seed)
        result["training"] = training
        print(
            f"\n4. SAC training, {training['steps']} env steps ({training['updates']} updates), "
            f"median of {training['repeats']}"
        )
        print(
            f"   {'interval':>8} {'measurements':>12} {'seconds':>8} {'slowdown':>9}  "
            f"(target ≤ 1.10 at 10)"
        )
        for interval, row in training["runs"].items():
            print(
                f"   {interval:>8} {row['measurements']:>12} {row['median_s']:>8.2f} "
                f"{row['slowdown']:>8.2f}×"
            )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
