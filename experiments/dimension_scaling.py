"""How the actor-gradient estimators scale with the action dimension, against the true gradient.

Task: ``rlgrad/QuadraticBandit-v0`` (rlgrad/toy_envs.py), a one-step bandit with states
s ~ U[−1, 1]^m (m = 4), actions a ∈ (−1, 1)^d and reward r(s, a) = −‖a − tanh(W s)‖², so that
Q(s, a) = r(s, a) exactly. The policy is a fixed SAC actor (agents/sac.py ``Actor``, hidden
[64, 64], tanh-Gaussian, PyTorch's default initialisation under ``--seed``); the objective is
SAC's actor objective with the TRUE critic and α = 0 by default (``--alpha``):

    J(θ) = E_s E_{a~πθ(·|s)}[h(s, a)],   h = α log πθ(a|s) − Q(s, a) = α log π + ‖a − a*(s)‖².

For every d in ``--dims`` it measures, on ``--states`` fresh states (one forward of the actor,
per-sample moments from :class:`rlgrad.diagnostics.LinearTape` as ``Agent.measure`` does):

* pathwise (one draw per state);
* for each K in ``--ks``: the score function with K draws per state (baseline ``none`` for
  K = 1, ``loo`` and ``optimal`` for K ≥ 2), and the mix of pathwise with the first of these
  (none or loo), its per-layer weights the inverse-variance ones of an independent pilot
  measurement on other states and draws (:func:`rlgrad.diagnostics.mixing_weights_from`).

and reports for each: the per-state variance tr Σ̂ of one state's estimate, the variance per
critic evaluation (tr Σ̂ × ``critic_evaluations_per_state``: 1 for pathwise, K for the score
function, 1 + K for the mix), and the cosine to the true gradient of a batch-256 estimate
(mean and standard deviation over the ``--states``/256 disjoint batches of the measurement).

The true gradient ∇θ J is the average of the pathwise estimate over ``--truth-samples`` fresh
(state, ε) pairs (10⁶ by default), in chunks (one batched backward each); its standard error
per coordinate is the chunks' standard deviation / √chunks, reported as ‖se‖/‖∇J‖.

Usage: python experiments/dimension_scaling.py [--docs] [--out DIR] [--dims 1 2 4 ...]
    [--ks 1 8] [--truth-samples N] [--states N] [--alpha A] [--seed S] [--threads T]
Writes dimension_scaling.png and dimension_scaling.csv to --out (experiments/out/), and with
--docs the figure to docs/dimension_scaling.png as well.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import gymnasium as gym  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rlgrad.envs  # noqa: E402, F401  (registers rlgrad/QuadraticBandit-v0)
from agents.sac import Actor, Config  # noqa: E402
from rlgrad import diagnostics  # noqa: E402
from rlgrad.estimators import (  # noqa: E402
    ActionObjective,
    Mixed,
    Pathwise,
    PolicyGradientEstimator,
    ScoreFunction,
    SquashedGaussianPolicy,
)

ROOT = Path(__file__).resolve().parents[1]
DIMS = (1, 2, 4, 8, 16, 32, 64)
BATCH = 256


@dataclass
class Problem:
    """The bandit of action dimension d with its true Q and a fixed actor."""

    actor: Actor
    weight: Tensor  # W (d, m)
    scale: float = 1.0

    @property
    def obs_dim(self) -> int:
        return self.weight.shape[1]

    def q(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Q(s, a) = r(s, a) = −scale ‖a − tanh(W s)‖², actions (..., B, d) → (..., B)."""
        diff = actions - torch.tanh(obs @ self.weight.T)
        return -self.scale * (diff * diff).sum(-1)

    def objective(self, obs: Tensor, alpha: float) -> ActionObjective:
        """h = α log π − Q, as SAC's ``Agent.actor_objective`` with the true critic."""
        return ActionObjective(lambda actions: -self.q(obs, actions), alpha, obs)

    def sample_obs(self, n: int, generator: torch.Generator) -> Tensor:
        """s ~ U[−1, 1]^m, the bandit's state distribution."""
        return torch.rand(n, self.obs_dim, generator=generator) * 2.0 - 1.0

    def policy(self, obs: Tensor) -> SquashedGaussianPolicy:
        return SquashedGaussianPolicy.of(self.actor(obs))


def make_problem(
    action_dim: int,
    obs_dim: int = 4,
    env_seed: int = 0,
    actor_seed: int = 0,
    hidden: tuple[int, ...] = (64, 64),
) -> Problem:
    """The bandit ``rlgrad/QuadraticBandit-v0`` (its W) and a SAC actor initialised under
    ``actor_seed``."""
    env = gym.make(
        "rlgrad/QuadraticBandit-v0", action_dim=action_dim, obs_dim=obs_dim, seed=env_seed
    )
    bandit = env.unwrapped
    weight = torch.as_tensor(bandit.weight, dtype=torch.float32)
    scale = bandit.scale
    env.close()
    torch.manual_seed(actor_seed)
    actor = Actor(obs_dim, action_dim, Config(hidden_sizes=list(hidden)))
    return Problem(actor, weight, scale)


def true_gradient(
    problem: Problem,
    samples: int = 1_000_000,
    alpha: float = 0.0,
    seed: int = 1,
    chunk: int = 32_768,
) -> tuple[Tensor, Tensor]:
    """(∇θ J, its standard error per coordinate), flat in ``named_parameters`` order (float64):
    the mean of the pathwise estimate over ``samples`` fresh (s, ε), in at least 16 chunks of
    one batched backward each; se = the chunks' standard deviation / √chunks."""
    generator = torch.Generator().manual_seed(seed)
    chunk = max(2, min(chunk, samples // 16))
    n_chunks = max(2, math.ceil(samples / chunk))
    pathwise = Pathwise()
    grads = []
    for _ in range(n_chunks):
        obs = problem.sample_obs(chunk, generator)
        with torch.enable_grad():
            policy = problem.policy(obs)
            noise = pathwise.draw(policy, generator=generator)
            loss, _ = pathwise.loss(policy, noise, problem.objective(obs, alpha))
            grads.append(diagnostics.batch_gradient(problem.actor, loss).double())
    stacked = torch.stack(grads)
    return stacked.mean(0), stacked.std(0) / math.sqrt(n_chunks)


@dataclass
class Measurement:
    moments: dict[str, diagnostics.GradientMoments]
    batch_grads: dict[str, Tensor]  # name → (batches, P) flat batch-mean gradients (float64)
    cross: dict[str, Tensor] | None  # Σ_i ⟨g_a,i, g_b,i⟩ per parameter for the ``pair``


def measure(
    problem: Problem,
    obs: Tensor,
    alpha: float,
    estimators: dict[str, PolicyGradientEstimator],
    generator: torch.Generator,
    batch: int | None = None,
    pair: tuple[str, str] | None = None,
    mix_weights: dict[str, float] | None = None,
) -> Measurement:
    """Each estimator on the states ``obs`` from one actor forward, as ``Agent.measure`` does:
    per-state moments from :class:`rlgrad.diagnostics.LinearTape`; with ``batch``, the flat
    gradients of the means over disjoint batches of ``batch`` states (one batched backward);
    with ``pair`` = (pathwise name, score name), their cross sums and, given ``mix_weights``
    (per layer, of pathwise), the mixed estimate under the key ``"mixed"``."""
    params = [p for _, p in problem.actor.named_parameters()]
    names = [n for n, _ in problem.actor.named_parameters()]
    objective = problem.objective(obs, alpha)
    moments, deltas, grads = {}, {}, {}
    with torch.enable_grad():
        with diagnostics.LinearTape(problem.actor) as tape:
            policy = problem.policy(obs)
        for name, estimator in estimators.items():
            noise = estimator.draw(policy, generator=generator)
            prepared = estimator.prepare(policy, noise, objective)
            rows = estimator.row_losses(policy, noise, prepared, torch.as_tensor(alpha))
            deltas[name] = tape.deltas(rows, retain_graph=True)
            moments[name] = tape.moments_from(deltas[name])
            if batch is not None:
                means = rows.view(-1, batch).mean(1)
                grads[name] = torch.autograd.grad(
                    means, params, torch.eye(len(means)), retain_graph=True, is_grads_batched=True
                )
        cross = None
        if pair is not None:
            pw, sf = pair
            cross = tape.cross_sums(deltas[pw], deltas[sf])
            if mix_weights is not None:
                w = mix_weights
                mixed = {k: w[k] * deltas[pw][k] + (1 - w[k]) * deltas[sf][k] for k in deltas[pw]}
                moments["mixed"] = tape.moments_from(mixed)
                if batch is not None:
                    grads["mixed"] = tuple(
                        w[_layer_of(n)] * a + (1 - w[_layer_of(n)]) * b
                        for n, a, b in zip(names, grads[pw], grads[sf], strict=True)
                    )
    flat = {
        name: torch.cat([g.reshape(g.shape[0], -1) for g in gs], 1).double()
        for name, gs in grads.items()
    }
    return Measurement(moments, flat, cross)


def _layer_of(parameter: str) -> str:
    """``trunk.0.weight`` → ``trunk.0``."""
    return parameter.rsplit(".", 1)[0]


def mixing_weights(
    problem: Problem, score: ScoreFunction, alpha: float, states: int, generator: torch.Generator
) -> dict[str, float]:
    """Per actor layer, the inverse-variance weight of pathwise in its mix with ``score``, from
    a pilot measurement on ``states`` states and draws of its own (so the mix stays unbiased)."""
    obs = problem.sample_obs(states, generator)
    m = measure(problem, obs, alpha, {"pw": Pathwise(), "sf": score}, generator, pair=("pw", "sf"))
    assert m.cross is not None
    weights = diagnostics.mixing_weights_from(
        m.moments["pw"], m.moments["sf"], m.cross, group=_layer_of
    )
    return {layer: float(w) for layer, w in weights.items()}


def label(estimator: str, k: int, baseline: str) -> str:
    if estimator == "pathwise":
        return "pathwise"
    if estimator == "score":
        return f"score/{baseline} K={k}"
    return f"mixed (pathwise + score/{baseline}) K={k}"


def run_dimension(
    action_dim: int,
    ks: tuple[int, ...] = (1, 8),
    truth_samples: int = 1_000_000,
    states: int = 4096,
    pilot_states: int = 1024,
    alpha: float = 0.0,
    seed: int = 0,
    hidden: tuple[int, ...] = (64, 64),
    truth: tuple[Tensor, Tensor] | None = None,
) -> list[dict]:
    """The rows of the table for one action dimension (see the module docstring).

    ``states`` must be a multiple of 256 (the batch whose cosine to the truth is reported);
    ``truth``: a precomputed (∇J, se) to reuse."""
    if states % BATCH:
        raise ValueError(f"states must be a multiple of {BATCH}, got {states}")
    problem = make_problem(action_dim, env_seed=seed, actor_seed=seed, hidden=hidden)
    if truth is None:
        truth = true_gradient(problem, truth_samples, alpha, seed=seed + 1)
    g_true, se = truth
    rel_se = float(se.norm() / g_true.norm())
    generator = torch.Generator().manual_seed(seed + 2)
    rows = []
    pathwise = Pathwise()
    params = dict(problem.actor.named_parameters())
    for i, k in enumerate(ks):
        baselines = ["none"] if k == 1 else ["loo", "optimal"]
        scores = {f"score/{b}": ScoreFunction(k, b) for b in baselines}  # type: ignore[arg-type]
        first = f"score/{baselines[0]}"
        weights = mixing_weights(problem, scores[first], alpha, pilot_states, generator)
        obs = problem.sample_obs(states, generator)
        estimators: dict[str, PolicyGradientEstimator] = {"pathwise": pathwise, **scores}
        m = measure(problem, obs, alpha, estimators, generator, BATCH, ("pathwise", first), weights)
        mixed = Mixed(pathwise, scores[first], params)
        entries = [("pathwise", 1, "", "pathwise", pathwise)] if i == 0 else []
        entries += [("score", k, b, f"score/{b}", scores[f"score/{b}"]) for b in baselines]
        entries += [("mixed", k, baselines[0], "mixed", mixed)]
        for estimator, kk, baseline, key, obj in entries:
            stats = diagnostics.moment_statistics(m.moments[key])
            variance = float(stats["variance"])
            evals = obj.critic_evaluations_per_state
            cosines = torch.stack([diagnostics.cosine(g, g_true) for g in m.batch_grads[key]])
            rows.append(
                {
                    "d": action_dim,
                    "K": kk,
                    "estimator": estimator,
                    "baseline": baseline,
                    "critic_evaluations": evals,
                    "variance": variance,
                    "variance_per_evaluation": variance * evals,
                    "cosine_batch256_mean": float(cosines.mean()),
                    "cosine_batch256_std": float(cosines.std()),
                    "true_grad_norm": float(g_true.norm()),
                    "truth_relative_se": rel_se,
                    "mix_weight_pathwise_mean": (
                        sum(weights.values()) / len(weights) if estimator == "mixed" else ""
                    ),
                }
            )
    return rows


COLUMNS = [
    "d",
    "K",
    "estimator",
    "baseline",
    "critic_evaluations",
    "variance",
    "variance_per_evaluation",
    "cosine_batch256_mean",
    "cosine_batch256_std",
    "true_grad_norm",
    "truth_relative_se",
    "mix_weight_pathwise_mean",
]
STYLE = {  # (color, marker, linestyle) by (estimator, baseline, K)
    ("pathwise", "", 1): ("tab:blue", "o", "-"),
    ("score", "none", 1): ("tab:red", "s", "--"),
    ("mixed", "none", 1): ("tab:green", "D", "--"),
    ("score", "loo", 8): ("tab:orange", "^", "-"),
    ("score", "optimal", 8): ("tab:purple", "v", "-"),
    ("mixed", "loo", 8): ("tab:green", "D", "-"),
}


def plot(rows: list[dict], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    lines: dict[tuple, list[dict]] = {}
    for row in rows:
        lines.setdefault((row["estimator"], row["baseline"], row["K"]), []).append(row)
    dims = sorted({row["d"] for row in rows})
    for key, pts in lines.items():
        color, marker, ls = STYLE.get(key, ("tab:gray", "x", ":"))
        pts = sorted(pts, key=lambda r: r["d"])
        d = [r["d"] for r in pts]
        kw = dict(color=color, marker=marker, linestyle=ls, label=label(key[0], key[2], key[1]))
        axes[0].plot(d, [r["variance"] for r in pts], **kw)
        axes[1].plot(d, [r["variance_per_evaluation"] for r in pts], **kw)
        mean = [r["cosine_batch256_mean"] for r in pts]
        std = [r["cosine_batch256_std"] for r in pts]
        axes[2].errorbar(d, mean, yerr=std, capsize=3, **kw)
    titles = (
        "variance of one state's estimate, tr Σ",
        "variance × critic evaluations per state",
        "cosine of a batch-256 estimate to ∇J",
    )
    for ax, t in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.minorticks_off()
        ax.set_xlabel("action dimension d")
        ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].set_ylim(-0.05, 1.02)
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "out")
    parser.add_argument("--docs", action="store_true", help="also write docs/dimension_scaling.png")
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--truth-samples", type=int, default=1_000_000)
    parser.add_argument("--states", type=int, default=4096)
    parser.add_argument("--pilot-states", type=int, default=1024)
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for d in args.dims:
        t = time.perf_counter()
        new = run_dimension(
            d,
            tuple(args.ks),
            args.truth_samples,
            args.states,
            args.pilot_states,
            args.alpha,
            args.seed,
        )
        rows += new
        print(
            f"d={d:3d}  ‖∇J‖={new[0]['true_grad_norm']:.4g}  "
            f"‖se‖/‖∇J‖={new[0]['truth_relative_se']:.2e}  ({time.perf_counter() - t:.1f} s)"
        )
        for r in new:
            print(
                f"    {label(r['estimator'], r['K'], r['baseline']):38s} "
                f"var={r['variance']:10.4g}  var×evals={r['variance_per_evaluation']:10.4g}  "
                f"cos={r['cosine_batch256_mean']:.3f}±{r['cosine_batch256_std']:.3f}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "dimension_scaling.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    title = (
        f"rlgrad/QuadraticBandit-v0, r = −‖a − tanh(Ws)‖² (Q = r), SAC actor [64, 64] at init, "
        f"α = {args.alpha:g}; {args.states} states, truth from {args.truth_samples:.0e} "
        "pathwise samples"
    )
    paths = [args.out / "dimension_scaling.png"]
    if args.docs:
        paths.append(ROOT / "docs" / "dimension_scaling.png")
    for path in paths:
        plot(rows, path, title)
    print(f"wrote {', '.join(str(p) for p in paths)} and {args.out / 'dimension_scaling.csv'}")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
