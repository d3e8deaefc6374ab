"""Cost benchmark of rlgrad's gradient diagnostics (not a test; numbers depend on the machine).

    python experiments/bench_diagnostics.py [--batch 256] [--repeats 5] [--train-steps 1500]
        [--train-repeats 5] [--variants 10 10:10 10:0 20 100] [--clock cpu|wall]
        [--skip-per-sample] [--skip-stages] [--skip-sb3] [--skip-train]

Four sections, each measured side by side in one process (medians of ``--repeats`` runs,
interleaved so that a change in machine load hits every variant alike), single-threaded torch.
Times are this process's CPU time (``--clock cpu``, the default): on a machine shared with other
jobs, wall time also counts the time slices they take (``--clock wall`` measures it anyway).

1. **Per-sample gradients** at batch ``--batch`` on a default-size SAC agent (hidden [256, 256],
   Pendulum's dims, obs 3 / act 1): ``Agent.pathwise_per_sample`` and ``Agent.score_per_sample``
   (torch.func vmap over the samples, the definition) against a Python loop of ``--batch``
   ordinary reverse-mode calls (``torch.autograd.grad``, what ``backward()`` computes) producing
   the same rows; the rows are checked to agree. Target: vmap ≥ 5× faster. Then the fast path
   ``diagnose`` uses, ``Agent.gradient_moments`` (both estimators' per-sample moments from
   ``LinearTape``, no per-sample matrix), against both vmaps and both loops, checked against
   the vmap rows.
2. **Where one measurement's time goes**: ``Agent.diagnose`` split into its stages (replay
   sampling, both estimators' moments and within them each estimator's critic evaluations, K·B
   rows for the score function, the pathwise reference gradient on ``reference_batch`` states,
   statistics), each timed on its own, next to the whole call with and without a reference and
   one ``update_once``; then ``diagnose`` without a reference as training at interval 10 meets
   it, after 10 updates each time; plus cProfile's cumulative times of the functions
   ``diagnose`` calls.
3. **The SB3 callback**: one ``GradientDiagnosticsCallback.measure()`` on SB3's SAC (default
   nets, batch 256, reference 2048) against one SB3 gradient step (``--skip-sb3`` skips it).
4. **Training slowdown**: ``rlgrad.runner.train`` on ``configs/sac_pendulum.yaml`` with
   ``total_steps=--train-steps``, ``agent.learning_starts=100``, ``eval.episodes=1``, no W&B or
   TensorBoard, with ``diagnostics.interval=0`` against each of ``--variants``
   ``INTERVAL[:REFERENCE_INTERVAL]`` (updates between two measurements; updates between two
   reference gradients, default ``DiagnosticsConfig``'s 500; the rest of it default: 128
   states measured, half the agent's batch, reference batch 1024). Target: ≤ 10 % slower at
   interval 10.

Writes everything as JSON to ``experiments/out/bench_diagnostics.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "sac_pendulum.yaml"
OUT = REPO / "experiments" / "out" / "bench_diagnostics.json"
# Measure the checkout this file lives in, not whatever copy of rlgrad is installed.
sys.path.insert(0, str(REPO))


def _import_from_this_checkout() -> None:
    """``rlgrad.agents`` and ``rlgrad.configs`` from REPO's ``agents/`` and ``configs/``: an
    editable install maps these two (``package-dir`` entries, not under ``rlgrad/``) to the
    tree it was installed from, whatever ``sys.path`` says, so a benchmark run beside an
    editable install of another checkout would time that checkout's agents."""
    import importlib.util

    for name, folder in (("rlgrad.agents", "agents"), ("rlgrad.configs", "configs")):
        path = REPO / folder
        spec = importlib.util.spec_from_file_location(
            name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


_import_from_this_checkout()


# The clock every figure is measured with: this process's CPU time by default (``--clock cpu``),
# which time slices lost to other processes on a shared machine do not inflate; torch runs on
# one thread and the envs in-process, so it is the wall time of an unloaded machine.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median time of each function, run round-robin ``repeats`` times after a warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
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


def score_prepared(agent, obs: torch.Tensor, alpha: torch.Tensor) -> dict:
    """The score estimator's draws and weights h − b + α (its K·B critic rows)."""
    from rlgrad.estimators import SquashedGaussianPolicy

    estimator = agent.estimators["score"]
    policy = SquashedGaussianPolicy.of(agent.actor(obs))
    noise = estimator.draw(policy)
    return estimator.prepare(policy, noise, agent.actor_objective(obs, alpha))


def score_loop(agent, obs: torch.Tensor, alpha: torch.Tensor, seed: int) -> list[tuple]:
    """The rows of ``score_per_sample`` (same draws): batched advantages, then one state each."""
    torch.manual_seed(seed)
    with torch.no_grad():
        prepared = score_prepared(agent, obs, alpha)
    u, weights = prepared["u"], prepared["weights"]  # (K, B, d), h − b + α: (K, B)

    def loss(i: int) -> torch.Tensor:
        log_prob = agent.actor(obs[i : i + 1]).log_prob_pre_tanh(u[:, i : i + 1])
        return (weights[:, i : i + 1] * log_prob).mean()

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

    # The fast path: both estimators' moments (LinearTape) against their vmap rows.
    from rlgrad import diagnostics

    def fast() -> dict:
        torch.manual_seed(1)
        return agent.gradient_moments(obs, alpha)

    def both_vmap() -> dict:
        torch.manual_seed(1)
        return {
            "pathwise": agent.pathwise_per_sample(obs, alpha),
            "score": agent.score_per_sample(obs, alpha),
        }

    got, rows = fast(), both_vmap()
    err = 0.0
    for name, grads in rows.items():
        want = diagnostics.GradientMoments.from_per_sample(grads)
        for key in want.sums:
            rel = (got[name].sums[key] - want.sums[key]).norm() / want.sums[key].norm()
            sq = (got[name].sq_sums[key] - want.sq_sums[key]).abs() / want.sq_sums[key]
            err = max(err, rel.item(), sq.item())
    times = median_times(
        {
            "fast": fast,
            "vmap": both_vmap,
            "loop": lambda: (pathwise_loop(agent, obs, alpha, 1), score_loop(agent, obs, alpha, 1)),
        },
        repeats,
    )
    out["moments_both"] = {
        "fast_s": times["fast"],
        "vmap_s": times["vmap"],
        "loop_s": times["loop"],
        "speedup_over_loop": times["loop"] / times["fast"],
        "speedup_over_vmap": times["vmap"] / times["fast"],
        "max_rel_error_vs_vmap": err,
    }
    return out


# ----------------------------------------------------------------------------- 4. training


def parse_variant(text: str) -> tuple[int, int, int | None]:
    """``"10"`` → (interval 10, the default reference interval, the agent's batch); ``"10:5"``
    → reference every 5 updates, ``"10:0"`` → never; ``"10:100:128"`` → 128 states measured."""
    from rlgrad.config import DiagnosticsConfig

    interval, every, batch = ([*text.split(":"), "", ""])[:3]
    default = DiagnosticsConfig.model_fields["reference_interval"].default
    return int(interval), int(every) if every else default, int(batch) if batch else None


@contextlib.contextmanager
def timed_diagnose() -> Iterator[list[float]]:
    """Accumulate the time spent inside SAC's ``Agent.diagnose`` while the context is open."""
    from rlgrad.agents.sac import Agent

    spent: list[float] = []
    original = Agent.diagnose

    def diagnose(self, cfg):
        start = clock()
        try:
            return original(self, cfg)
        finally:
            spent.append(clock() - start)

    Agent.diagnose = diagnose  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        Agent.diagnose = original  # type: ignore[method-assign]


def train_once(variant: str, steps: int, seed: int, root: Path) -> tuple[float, float]:
    """(time of the whole run, time spent in diagnose) for one training run."""
    from rlgrad.config import load_config
    from rlgrad.runner import train

    interval, reference_interval, batch = parse_variant(variant)
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
            f"diagnostics.reference_interval={reference_interval}",
            *([f"diagnostics.batch={batch}"] if batch else []),
        ],
    )
    with timed_diagnose() as spent:
        start = clock()
        train(cfg, root / f"run-{variant.replace(':', '-')}", quiet=True)
        total = clock() - start
    return total, sum(spent)


def bench_training(steps: int, variants: list[str], repeats: int, seed: int) -> dict:
    """Each variant's run against the interval-0 run of the same round (A/B), and, within each
    diagnosing run, total / (total − time in diagnose): the slowdown from that run alone, which
    load drifts between runs do not blur (it leaves out diagnose's after-effects on caches)."""
    variants = ["0", *variants]
    times: dict[str, list[float]] = {v: [] for v in variants}
    inside: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # round-robin: load drifts hit every variant alike
            for variant in variants if r % 2 == 0 else reversed(variants):
                total, diagnosing = train_once(variant, steps, seed, Path(tmp))
                times[variant].append(total)
                inside[variant].append(diagnosing)
    base = statistics.median(times["0"])
    rows = {}
    updates = steps - 100
    for variant in variants:
        interval, reference_interval, batch = parse_variant(variant)
        med = statistics.median(times[variant])
        measurements = updates // interval if interval else 0
        in_run = [t / (t - d) for t, d in zip(times[variant], inside[variant], strict=True)]
        rows[variant] = {
            "interval": interval,
            "reference_interval": reference_interval,
            "batch": batch,
            "median_s": med,
            "all_s": times[variant],
            "slowdown": med / base,
            # Per-run ratios against the baseline run of the same round: the spread of the ratio.
            "round_ratios": [t / b for t, b in zip(times[variant], times["0"], strict=True)],
            "measurements": measurements,
            "diagnose_s": inside[variant],
            "ms_per_measurement": 1e3 * statistics.median(inside[variant]) / measurements
            if measurements
            else 0.0,
            "in_run_slowdown": statistics.median(in_run),
            "in_run_slowdowns": in_run,
        }
    return {
        "steps": steps,
        "updates": updates,
        "repeats": repeats,
        "baseline_ms_per_step": 1e3 * base / steps,
        "runs": rows,
    }


# ----------------------------------------------------------------------------- 2. profile


def bench_stages(repeats: int) -> dict:
    from rlgrad import diagnostics
    from rlgrad.config import DiagnosticsConfig

    cfg = DiagnosticsConfig(interval=1, reference_interval=1)  # a reference every time
    no_reference = DiagnosticsConfig(interval=1, reference_interval=0)
    agent = make_agent(buffer_rows=10_000)
    alpha = agent.log_alpha.detach().exp()
    batch = cfg.batch or agent.measurement_batch  # what diagnose() measures
    obs = agent.buffer.sample(batch).obs
    ref_obs = agent.buffer.sample(cfg.reference_batch).obs
    moments = agent.gradient_moments(obs, alpha)
    reference = agent.reference_gradient(ref_obs, alpha)

    from rlgrad.estimators import SquashedGaussianPolicy

    with torch.no_grad():
        policy = SquashedGaussianPolicy.of(agent.actor(obs))

    def critic_rows(name: str) -> Callable[[], dict]:
        """An estimator's critic evaluations in a measurement (``prepare`` on its draws, through
        ``measurement_objective``): K·B rows for score, B rows and ∂Q/∂a for pathwise."""
        estimator, objective = agent.estimators[name], agent.measurement_objective(obs, alpha)
        return lambda: estimator.prepare(policy, estimator.draw(policy), objective)

    def stats() -> None:  # what diagnose does once it has the moments
        for m in moments.values():
            diagnostics.moment_statistics(m, reference)
        diagnostics.cosine(moments["score"].mean(), moments["pathwise"].mean())

    stages = {
        "replay_sampling": lambda: (
            agent.buffer.sample(batch),
            agent.buffer.sample(cfg.reference_batch),
        ),
        "moments_both": lambda: agent.gradient_moments(obs, alpha),
        "  of which score_critic": critic_rows("score"),
        "  of which pathwise_critic": critic_rows("pathwise"),
        "reference_pathwise": lambda: agent.reference_gradient(ref_obs, alpha),
        "statistics": stats,
        "diagnose_total": lambda: agent.diagnose(cfg),
        "diagnose_no_reference": lambda: agent.diagnose(no_reference),
        "update_once": lambda: agent.update_once(agent.buffer.sample(agent.cfg.batch_size)),
    }
    times = median_times(stages, repeats)
    update = times["update_once"]
    parts = ["replay_sampling", "moments_both", "reference_pathwise", "statistics"]
    out = {
        "batch": batch,
        "reference_batch": cfg.reference_batch,
        "score_samples": agent.cfg.score_samples,
        "seconds": times,
        "in_updates": {k: v / update for k, v in times.items()},
        "share_of_stage_sum": {k: times[k] / sum(times[p] for p in parts) for k in parts},
    }

    # As in training at diagnostics.interval=10: each measurement after 10 updates, which leave
    # caches and the allocator as training does (a measurement that reuses no memory of the
    # update's pays for fresh pages each time; the stages above run back to back).
    after_updates: list[float] = []
    updates: list[float] = []
    for _ in range(repeats + 1):
        start = clock()
        for _ in range(10):
            agent.update_once(agent.buffer.sample(agent.cfg.batch_size))
        middle = clock()
        agent.diagnose(no_reference)
        after_updates.append(clock() - middle)
        updates.append((middle - start) / 10)
    after, update_between = statistics.median(after_updates[1:]), statistics.median(updates[1:])
    out["after_10_updates"] = {
        "diagnose_no_reference_s": after,
        "update_s": update_between,
        "diagnose_over_10_updates": after / (10 * update_between),
    }

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeats):
        agent.diagnose(cfg)
    profiler.disable()
    wanted = {
        "gradient_moments",
        "measure",
        "reference_gradient",
        "batch_gradient",
        "prepare",
        "draw_losses",
        "_through_heads",
        "heads",
        "row_norms_sq",
        "paired_moments",
        "tail_share",
        "moment_statistics",
        "frozen_q",
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


def report_per_sample(result: dict, args: argparse.Namespace) -> None:
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
    m = per["moments_both"]
    print(
        f"   both estimators' moments (LinearTape, what diagnose uses): "
        f"{1e3 * m['fast_s']:.1f} ms, vs vmap {1e3 * m['vmap_s']:.1f} ms "
        f"({m['speedup_over_vmap']:.1f}×), vs loop {1e3 * m['loop_s']:.1f} ms "
        f"({m['speedup_over_loop']:.1f}×); max rel. error vs vmap {m['max_rel_error_vs_vmap']:.1e}"
    )


def report_stages(result: dict, args: argparse.Namespace) -> None:
    stages = bench_stages(args.repeats)
    result["stages"] = stages
    print(
        f"\n2. one diagnose() (batch {stages['batch']}, reference {stages['reference_batch']}, "
        f"K={stages['score_samples']}), median of {args.repeats}"
    )
    print(f"   {'stage':<26} {'ms':>8} {'updates':>8} {'share':>7}")
    for name, seconds in stages["seconds"].items():
        share = stages["share_of_stage_sum"].get(name)
        share_s = f"{100 * share:>6.1f}%" if share is not None else ""
        print(f"   {name:<26} {1e3 * seconds:>8.1f} {stages['in_updates'][name]:>8.2f} {share_s}")
    after = stages["after_10_updates"]
    print(
        f"   diagnose_no_reference after 10 updates {1e3 * after['diagnose_no_reference_s']:.1f} ms"
        f" = {after['diagnose_over_10_updates']:.3f} of those 10 updates"
        f" ({1e3 * after['update_s']:.1f} ms each)"
    )
    print("   cProfile, cumulative ms per diagnose():")
    for name, seconds in stages["cprofile_cumulative_s_per_diagnose"].items():
        print(f"     {name:<22} {1e3 * seconds:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--train-repeats", type=int, default=5)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["10", "10:10", "10:0", "20", "100"],
        help="diagnostics.interval[:reference_interval[:batch]] values to train with, besides 0",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-per-sample", action="store_true")
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    global clock
    clock = CLOCKS[args.clock]

    result: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
    }
    if not args.skip_per_sample:
        report_per_sample(result, args)
    if not args.skip_stages:
        report_stages(result, args)
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
        training = bench_training(args.train_steps, args.variants, args.train_repeats, args.seed)
        result["training"] = training
        print(
            f"\n4. SAC training, {training['steps']} env steps ({training['updates']} updates, "
            f"{training['baseline_ms_per_step']:.1f} ms per step without diagnostics), "
            f"median of {training['repeats']}"
        )
        print(
            f"   {'interval':>8} {'ref. every':>10} {'batch':>5} {'measurements':>12} "
            f"{'seconds':>8} "
            f"{'A/B':>7} {'A/B per round':>29} {'in-run':>7} {'ms/measurement':>15}  "
            f"(target ≤ 1.10 at 10)"
        )
        for row in training["runs"].values():
            ratios = " ".join(f"{x:.2f}" for x in row["round_ratios"])
            print(
                f"   {row['interval']:>8} {row['reference_interval']:>10} "
                f"{row['batch'] or 'agent':>5} "
                f"{row['measurements']:>12} {row['median_s']:>8.2f} {row['slowdown']:>6.3f}× "
                f"{ratios:>29} {row['in_run_slowdown']:>6.3f}× {row['ms_per_measurement']:>15.1f}"
            )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
