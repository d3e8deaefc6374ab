"""Speed against Stable-Baselines3 on the same work, measured side by side in one script run.

    python experiments/bench_vs_sb3.py                      # SAC, PPO, REINFORCE/A2C on CPU
    python experiments/bench_vs_sb3.py --agents sac --steps 3000 --pairs 5
    python experiments/bench_vs_sb3.py --device cuda        # learners on the GPU
    python experiments/bench_vs_sb3.py --quick              # a smoke run of a minute or two

Each agent is trained ``--pairs`` times by rlgrad and by SB3 at identical hyperparameters (SB3's
defaults) on Pendulum-v1, for the same number of environment steps, one torch thread each. The
two runs of a pair follow each other (their order alternates from pair to pair) and each runs in
a fresh process, so that both pay the same start-up and the peak resident memory of a process
is that run's. rlgrad runs are built as users run them: ``load_config`` + ``runner.train``
(quiet, W&B and TensorBoard off; the runner's final evaluation and checkpoint are inside the
timing). SB3's time is its model's construction plus ``learn``. Imports, ``torch._dynamo``'s
included (torch's optimisers import it on first use, ~2 s), come before either clock starts.
Both final policies are then evaluated alike: 10 deterministic episodes on the eval seeds
rlgrad uses. The table per agent gives steps/s of both, their ratio per pair (per wall-clock
second, and per CPU-second of the process, which a busy machine disturbs less) and the medians,
peak memory and the eval returns; ``--json`` writes it all. A last section checks the memory
of a 1M-transition replay buffer for HalfCheetah-v5 against the raw bytes of its tensors.

Agents and the SB3 algorithm each is measured against:

* ``sac``: SB3 ``SAC`` (defaults: 256-256, lr 3e-4, batch 256, buffer 1e6, learning_starts 100,
  train_freq 1, gradient_steps 1, auto entropy); rlgrad's SAC defaults are the same.
* ``ppo``: SB3 ``PPO`` (defaults: 2048 steps × 1 env, batch 64, 10 epochs, lr 3e-4, GAE 0.95,
  clip 0.2, vf 0.5, max_grad_norm 0.5, 64-64 tanh, no normalisation); rlgrad's PPO defaults
  with ``env.rescale_actions=false`` (SB3 clips the Gaussian's actions to the env's bounds).
* ``reinforce``: SB3 ``A2C``, its nearest relative, at the same rollout size (``--rollout``,
  default A2C's 5 steps × 1 env) and one gradient step per rollout for policy and value.

SB3 is an optional extra (``pip install 'rlgrad[sb3]'``). Timings are wall-clock: run this on a
quiet machine, and compare ratios rather than absolute rates across machines.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "experiments" / "out"
ENV_ID = "Pendulum-v1"
EVAL_EPISODES = 10

# Default environment steps per run (full run: under 8 minutes on one fast core; --quick: tiny).
STEPS = {"sac": 3000, "ppo": 8192, "reinforce": 3000}
QUICK_STEPS = {"sac": 400, "ppo": 4096, "reinforce": 1000}

# rlgrad's config per agent, as overrides on the agent's defaults; the matching SB3 algorithm.
RLGRAD: dict[str, list[str]] = {
    "sac": [],
    "ppo": ["env.rescale_actions=false"],
    # A2C's update: GAE(λ=1) advantages, no normalisation, one full-rollout step on the policy
    # and one on the value, lr 7e-4 (A2C uses RMSprop on both at once, rlgrad Adam on each).
    "reinforce": [
        "agent.baseline=gae",
        "agent.gae_lambda=1.0",
        "agent.advantage_normalization=none",
        "agent.learning_rate=0.0007",
        "agent.value_learning_rate=0.0007",
        "agent.value_epochs=1",
        "agent.max_grad_norm=0.5",
        "env.rescale_actions=false",
    ],
}
SB3_ALGO = {"sac": "SAC", "ppo": "PPO", "reinforce": "A2C"}
# Learner options per device for rlgrad (the ones that pay there; see experiments/README.md).
# On a GPU the learner's non-finite guard reads its flags back every 100 steps instead of
# syncing at every step; learner.compile is for -o to try (see experiments/README.md).
DEVICE_OVERRIDES: dict[str, list[str]] = {
    "cpu": [],
    "cuda": ["learner.nonfinite_check_interval=100"],
}


def require_sb3() -> None:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        sys.exit(
            "bench_vs_sb3: Stable-Baselines3 is not installed; it is an optional extra: "
            "pip install 'rlgrad[sb3]'  (or pip install 'stable-baselines3>=2.3')"
        )


# ---- one run, in its own process ----------------------------------------------------------


def _warm_imports() -> None:
    """Imports both sides pay once per process before training, outside the timing: torch's
    optimisers import ``torch._dynamo`` on first use (about 2 s here, the same for both)."""
    import gymnasium  # noqa: F401
    import torch._dynamo  # noqa: F401


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _gpu_peak_mb(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def rlgrad_overrides(agent: str, steps: int, seed: int, device: str, rollout: int) -> list[str]:
    overrides = [
        *RLGRAD[agent],
        f"env.id={ENV_ID}",
        f"total_steps={steps}",
        f"seed={seed}",
        f"eval.episodes={EVAL_EPISODES}",
        "eval.interval=0",
        "checkpoint.interval=0",
        "diagnostics.interval=0",  # the same work as SB3, which measures no gradient variance
        "logging.wandb=disabled",
        "logging.tensorboard=false",
        f"logging.interval={max(steps // 4, 1)}",
        f"learner.device={device}",
        "learner.torch_threads=1",
        *DEVICE_OVERRIDES[device],
    ]
    if agent == "reinforce":
        overrides += [f"agent.n_steps={rollout}", f"agent.value_batch_size={rollout}"]
    return overrides


def run_rlgrad(
    agent: str, steps: int, seed: int, device: str, rollout: int, extra: list[str]
) -> dict[str, Any]:
    """Train with rlgrad in this process; its time, steps/s, eval return and peak memory."""
    from rlgrad.config import load_config
    from rlgrad.runner import train

    _warm_imports()
    overrides = rlgrad_overrides(agent, steps, seed, device, rollout) + extra
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.yaml"  # the agent's defaults: SB3's hyperparameters
        base.write_text(f"agent:\n  name: {agent}\ntotal_steps: {steps}\n")
        cfg = load_config(base, overrides)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = train(cfg, Path(tmp) / "run", quiet=True)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "seconds": seconds,
        "steps_per_second": steps / seconds,
        "steps_per_cpu_second": steps / cpu_seconds,
        "eval_return_mean": result.eval_return_mean,
        "eval_return_std": result.eval_return_std,
        "peak_rss_mb": _peak_rss_mb(),
        "gpu_peak_mb": _gpu_peak_mb(device),
        "overrides": overrides,
    }


def sb3_model(agent: str, seed: int, device: str, rollout: int):
    import gymnasium as gym
    import stable_baselines3 as sb3

    kwargs: dict[str, Any] = {"seed": seed, "device": device, "verbose": 0}
    if agent == "reinforce":
        kwargs["n_steps"] = rollout
    return getattr(sb3, SB3_ALGO[agent])("MlpPolicy", gym.make(ENV_ID), **kwargs)


class SB3Policy:
    """rlgrad's ``act_deterministic`` interface over an SB3 model (actions in env units)."""

    def __init__(self, model):
        self.model = model

    def act_deterministic(self, obs):
        import torch

        actions, _ = self.model.predict(obs.cpu().numpy(), deterministic=True)
        return torch.as_tensor(actions)


def evaluate_sb3(model, seed: int) -> tuple[float, float]:
    """10 deterministic episodes on the seeds of rlgrad's final evaluation of seed ``seed``."""
    import torch

    from rlgrad.config import EnvConfig
    from rlgrad.envs import make_env
    from rlgrad.runner import EVAL_SEED_OFFSET, eval_seed, evaluate

    envs = make_env(
        EnvConfig(id=ENV_ID, rescale_actions=False),
        seed + EVAL_SEED_OFFSET,
        n_envs=EVAL_EPISODES,
        training=False,
    )
    try:
        returns = evaluate(SB3Policy(model), envs, torch.device("cpu"), eval_seed(seed, 0), True, 0)
    finally:
        envs.close()
    return float(returns.mean()), float(returns.std())


def run_sb3(agent: str, steps: int, seed: int, device: str, rollout: int) -> dict[str, Any]:
    """Train with SB3 in this process (construction + learn timed), then evaluate."""
    import stable_baselines3  # noqa: F401
    import torch

    _warm_imports()
    torch.set_num_threads(1)
    start, cpu_start = time.perf_counter(), time.process_time()
    model = sb3_model(agent, seed, device, rollout)
    model.learn(steps)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    mean, std = evaluate_sb3(model, seed)
    return {
        "seconds": seconds,
        "steps_per_second": steps / seconds,
        "steps_per_cpu_second": steps / cpu_seconds,
        "eval_return_mean": mean,
        "eval_return_std": std,
        "peak_rss_mb": _peak_rss_mb(),
        "gpu_peak_mb": _gpu_peak_mb(device),
    }


def in_fresh_process(fn, *args) -> dict[str, Any]:
    """``fn(*args)`` in a new spawned interpreter (its own start-up and its own peak RSS)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


# ---- replay-buffer memory --------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def replay_memory(capacity: int) -> dict[str, Any]:
    """Resident memory of an rlgrad and an SB3 replay buffer of ``capacity`` HalfCheetah-v5
    transitions, filled (every page touched), against the raw bytes of their arrays."""
    import gymnasium as gym
    import numpy as np
    import torch

    from rlgrad.buffers import ReplayBuffer

    env = gym.make("HalfCheetah-v5")
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    chunk = min(10_000, capacity)
    rows = (
        torch.ones(chunk, obs_dim),
        torch.ones(chunk, act_dim),
        torch.ones(chunk),
        torch.ones(chunk, obs_dim),
        torch.zeros(chunk, dtype=torch.bool),
        torch.zeros(chunk, dtype=torch.bool),
    )
    ReplayBuffer(chunk, obs_dim, act_dim).add(*rows)  # one-time allocations before measuring
    before = _rss_mb()
    buffer = ReplayBuffer(capacity, obs_dim, act_dim)
    for _ in range(capacity // chunk):
        buffer.add(*rows)
    rlgrad_rss = _rss_mb() - before
    rlgrad_bytes = buffer.nbytes / 2**20
    del buffer
    report: dict[str, Any] = {
        "capacity": capacity,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "rlgrad": {
            "raw_mb": rlgrad_bytes,
            "resident_mb": rlgrad_rss,
            "ratio": rlgrad_rss / rlgrad_bytes,
        },
    }
    try:
        from stable_baselines3.common.buffers import ReplayBuffer as SB3ReplayBuffer
    except ImportError:
        return report
    before = _rss_mb()
    sb3_buffer = SB3ReplayBuffer(capacity, env.observation_space, env.action_space, device="cpu")
    arrays = [v for v in vars(sb3_buffer).values() if isinstance(v, np.ndarray)]
    for array in arrays:
        array.fill(1)
    sb3_rss = _rss_mb() - before
    sb3_bytes = sum(a.nbytes for a in arrays) / 2**20
    report["sb3"] = {"raw_mb": sb3_bytes, "resident_mb": sb3_rss, "ratio": sb3_rss / sb3_bytes}
    return report


# ---- the benchmark ---------------------------------------------------------------------------


def bench_agent(agent: str, args: argparse.Namespace, steps: int) -> dict[str, Any]:
    pairs = []
    extra = list(args.rlgrad_override)
    for i in range(args.pairs):
        seed = args.seeds[i % len(args.seeds)]
        jobs = {
            "rlgrad": (run_rlgrad, agent, steps, seed, args.device, args.rollout, extra),
            "sb3": (run_sb3, agent, steps, seed, args.device, args.rollout),
        }
        order = ["rlgrad", "sb3"] if i % 2 == 0 else ["sb3", "rlgrad"]
        result: dict[str, Any] = {"seed": seed, "first": order[0]}
        for name in order:
            fn, *fn_args = jobs[name]
            result[name] = in_fresh_process(fn, *fn_args)
        r, s = result["rlgrad"], result["sb3"]
        result["ratio"] = r["steps_per_second"] / s["steps_per_second"]
        result["cpu_ratio"] = r["steps_per_cpu_second"] / s["steps_per_cpu_second"]
        pairs.append(result)
        print(
            f"  {agent} pair {i}: seed {seed}, ratio {result['ratio']:.2f} "
            f"(CPU time: {result['cpu_ratio']:.2f})",
            flush=True,
        )

    def median(side: str, key: str) -> float | None:
        values = [p[side][key] for p in pairs if p[side][key] is not None]
        return statistics.median(values) if values else None

    return {
        "env": ENV_ID,
        "steps": steps,
        "sb3_algorithm": SB3_ALGO[agent],
        "rollout": args.rollout if agent == "reinforce" else None,
        "pairs": pairs,
        "median_ratio": statistics.median(p["ratio"] for p in pairs),
        "median_cpu_ratio": statistics.median(p["cpu_ratio"] for p in pairs),
        "median": {
            side: {
                key: median(side, key)
                for key in (
                    "steps_per_second",
                    "steps_per_cpu_second",
                    "eval_return_mean",
                    "peak_rss_mb",
                    "gpu_peak_mb",
                )
            }
            for side in ("rlgrad", "sb3")
        },
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(agent: str, report: dict[str, Any], device: str) -> None:
    title = f"{agent} vs SB3 {report['sb3_algorithm']}, {report['env']}, {report['steps']} steps"
    if report["rollout"]:
        title += f", rollout {report['rollout']}"
    print(f"\n{title}, SB3 defaults, 1 torch thread, learner on {device}")
    print("(sps: steps per wall-clock second; cpu ratio: the same per CPU-second of the process)")
    gpu = device == "cuda"
    header = (
        f"{'pair':>6} {'seed':>4}  {'rlgrad sps':>10} {'SB3 sps':>8} {'ratio':>6} {'cpu ratio':>9}"
        f"  {'rlgrad eval':>16} {'SB3 eval':>16}  {'rlgrad MB':>9} {'SB3 MB':>7}"
    )
    print(header + (f"  {'rlgrad GPU MB':>13} {'SB3 GPU MB':>10}" if gpu else ""))
    for i, pair in enumerate(report["pairs"]):
        r, s = pair["rlgrad"], pair["sb3"]
        line = (
            f"{i:>6} {pair['seed']:>4}  {r['steps_per_second']:>10.1f}"
            f" {s['steps_per_second']:>8.1f} {pair['ratio']:>6.2f} {pair['cpu_ratio']:>9.2f}"
            f"  {r['eval_return_mean']:>8.1f} ± {r['eval_return_std']:<5.1f}"
            f" {s['eval_return_mean']:>8.1f} ± {s['eval_return_std']:<5.1f}"
            f"  {r['peak_rss_mb']:>9.0f} {s['peak_rss_mb']:>7.0f}"
        )
        if gpu:
            line += f"  {_fmt(r['gpu_peak_mb'], '>13.0f')} {_fmt(s['gpu_peak_mb'], '>10.0f')}"
        print(line)
    r, s = report["median"]["rlgrad"], report["median"]["sb3"]
    line = (
        f"{'median':>11}  {r['steps_per_second']:>10.1f} {s['steps_per_second']:>8.1f}"
        f" {report['median_ratio']:>6.2f} {report['median_cpu_ratio']:>9.2f}"
        f"  {r['eval_return_mean']:>16.1f} {s['eval_return_mean']:>16.1f}"
        f"  {r['peak_rss_mb']:>9.0f} {s['peak_rss_mb']:>7.0f}"
    )
    if gpu:
        line += f"  {_fmt(r['gpu_peak_mb'], '>13.0f')} {_fmt(s['gpu_peak_mb'], '>10.0f')}"
    print(line)


def print_memory(report: dict[str, Any]) -> None:
    print(
        f"\nreplay buffer, {report['capacity']:,} HalfCheetah-v5 transitions "
        f"(obs {report['obs_dim']}, act {report['act_dim']}), filled"
    )
    print(f"{'':>7} {'raw MB':>8} {'resident MB':>12} {'ratio':>6}")
    for side in ("rlgrad", "sb3"):
        if side in report:
            m = report[side]
            print(f"{side:>7} {m['raw_mb']:>8.1f} {m['resident_mb']:>12.1f} {m['ratio']:>6.2f}")


def machine_info(device: str) -> dict[str, Any]:
    import stable_baselines3
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "device": device,
        "torch_threads": 1,
        "load_average": os.getloadavg(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_steps(text: str | None, quick: bool) -> dict[str, int]:
    """``--steps 3000`` (every agent) or ``--steps sac=3000,ppo=20480``."""
    steps = dict(QUICK_STEPS if quick else STEPS)
    if not text:
        return steps
    if "=" not in text:
        return {agent: int(text) for agent in steps}
    for item in text.split(","):
        agent, value = item.split("=", 1)
        if agent not in steps:
            raise SystemExit(f"bench_vs_sb3: unknown agent {agent!r} in --steps")
        steps[agent] = int(value)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", default="sac,ppo,reinforce", help="comma-separated")
    parser.add_argument("--steps", help="env steps per run: N, or sac=N,ppo=N,reinforce=N")
    parser.add_argument("--pairs", type=int, help="rlgrad/SB3 pairs per agent (default 3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rollout", type=int, default=5, help="REINFORCE/A2C steps per update")
    parser.add_argument("--json", type=Path, default=OUT / "bench_vs_sb3.json")
    parser.add_argument(
        "--memory-capacity",
        type=int,
        default=1_000_000,
        help="transitions of the replay-buffer memory check (0: skip it)",
    )
    parser.add_argument(
        "-o",
        "--rlgrad-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra config override for every rlgrad run (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny runs, one pair: a smoke test")
    args = parser.parse_args()
    require_sb3()
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    for agent in agents:
        if agent not in RLGRAD:
            parser.error(f"unknown agent {agent!r}; choose from {', '.join(RLGRAD)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
    steps = parse_steps(args.steps, args.quick)
    args.pairs = args.pairs or (1 if args.quick else 3)
    if args.quick and args.memory_capacity == 1_000_000:
        args.memory_capacity = 100_000

    report: dict[str, Any] = {"machine": machine_info(args.device), "agents": {}}
    for agent in agents:
        print(f"{agent}: {args.pairs} pairs of {steps[agent]} steps", flush=True)
        report["agents"][agent] = bench_agent(agent, args, steps[agent])
    for agent in agents:
        print_table(agent, report["agents"][agent], args.device)
    if args.memory_capacity:
        report["replay_memory"] = in_fresh_process(replay_memory, args.memory_capacity)
        print_memory(report["replay_memory"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
