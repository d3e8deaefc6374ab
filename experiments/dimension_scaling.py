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

Learned critic (``--critic learned`` or ``both``). For every d, SAC (rlgrad's own, through
``rlgrad.api.train`` with ``configs/sac_bandit.yaml``: actor and twin critics [64, 64], batch
256, learning rate 3·10⁻⁴, automatic α) trains on the same bandit (the same W) for
``--critic-steps`` environment steps (5000 by default: 500 uniform random actions, then 4500
updates; one-step episodes, so the critic regresses the reward). Its final critic
Q̂ = min_i Q_i (weights fixed, as ``Agent.frozen_q``) then replaces the true Q, for the SAME
fixed actor, states and draws as the true-Q run (only the critic differs): pathwise
differentiates ∂Q̂/∂a, the score function weighs ∇ log π by values of Q̂. Per estimator:

* the bias of its expectation under Q̂, E ĝ_Q̂ − ∇J_true, as ``bias_relative_error``
  ‖E ĝ_Q̂ − ∇J‖/‖∇J‖ (with ``bias_relative_se``, the norm of its standard error / ‖∇J‖: the
  noise floor) and ``bias_cosine`` cos(E ĝ_Q̂, ∇J) (jackknife standard error). It is measured
  with common random numbers (:func:`critic_bias`): on ``--bias-states`` fresh states (2¹⁷), in
  chunks of 4096, the mean of ĝ_Q̂ − ĝ_Q, both estimates from the same states and draws. Each
  estimator is linear in h and unbiased with the true Q, so that mean estimates the bias
  exactly, with the variance of the critic-error term alone (averaging ĝ_Q̂ itself to a 5 %
  noise floor would need ~10⁷ states for score/none at d = 64). ``bias_vs_pathwise`` is
  ‖b − b_pathwise‖/‖∇J‖ on the same states, with its own noise floor;
* the per-state variance, variance per critic evaluation and batch-256 cosine to the TRUE
  gradient under Q̂ (as the true-Q run, the mixing weights from a pilot with Q̂);
* the critic's errors where the fixed actor acts (:func:`critic_error`: relative RMS of the
  values, of the values centred per state, of the slopes ∂Q̂/∂a) and the SAC run's budget and
  its own actor's return.

A caution on reading the bias: pathwise and the score function are both unbiased estimators of
∇θ E_s E_{a~πθ}[α log π − Q̂], the gradient of the objective with the critic Q̂ (Stein's
identity, E[∂Q̂/∂a · ∂a/∂θ] = E[Q̂ ∇θ log π], for a Lipschitz Q̂ such as a ReLU network), and
so are the baselines and the mix: in expectation every estimator inherits the SAME bias
∇J_Q̂ − ∇J_true, whether it reads Q̂'s slopes or its values. What differs between them under
Q̂ is the noise, not the expectation; ``bias_vs_pathwise`` checks this.

Usage: python experiments/dimension_scaling.py [--docs] [--out DIR] [--dims 1 2 4 ...]
    [--ks 1 8] [--truth-samples N] [--states N] [--alpha A] [--seed S] [--threads T]
    [--critic true|learned|both] [--critic-steps N] [--bias-states N] [--quick]
Writes dimension_scaling.png and dimension_scaling.csv (true Q) and
dimension_scaling_learned.png and dimension_scaling_learned.csv (learned critic) to --out
(experiments/out/), and with --docs the figures to docs/ as well. ``--quick``: d ∈ {1, 8},
10⁵ truth samples, 1024 states, SAC for 1500 steps, bias from 2¹⁴ states (about 30 s).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import gymnasium as gym  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rlgrad.envs  # noqa: E402, F401  (registers rlgrad/QuadraticBandit-v0)
from agents.sac import Actor, Config, TwinCritic  # noqa: E402
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
SAC_CONFIG = ROOT / "configs" / "sac_bandit.yaml"


@dataclass
class Problem:
    """The bandit of action dimension d with its true Q and a fixed actor."""

    actor: Actor
    weight: Tensor  # W (d, m)
    scale: float = 1.0
    critic: Callable[[Tensor, Tensor], Tensor] | None = None
    """The Q the estimators see, (obs (B, m), actions (..., B, d)) → (..., B); None: the true
    Q (:meth:`q`). :meth:`with_critic` sets it (e.g. a :class:`LearnedCritic`)."""

    @property
    def obs_dim(self) -> int:
        return self.weight.shape[1]

    def q(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Q(s, a) = r(s, a) = −scale ‖a − tanh(W s)‖², actions (..., B, d) → (..., B)."""
        diff = actions - torch.tanh(obs @ self.weight.T)
        return -self.scale * (diff * diff).sum(-1)

    def critic_q(self, obs: Tensor, actions: Tensor) -> Tensor:
        """The critic's Q(s, a): ``critic`` if set, else the true :meth:`q`."""
        return self.q(obs, actions) if self.critic is None else self.critic(obs, actions)

    def with_critic(self, critic: Callable[[Tensor, Tensor], Tensor] | None) -> Problem:
        """The same bandit and actor (the same module), differentiated against ``critic``."""
        return replace(self, critic=critic)

    def objective(self, obs: Tensor, alpha: float) -> ActionObjective:
        """h = α log π − Q, as SAC's ``Agent.actor_objective``, Q the :meth:`critic_q`."""
        return ActionObjective(lambda actions: -self.critic_q(obs, actions), alpha, obs)

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


class LearnedCritic:
    """min_i Q_i(s, a) of a SAC :class:`agents.sac.TwinCritic` with its weights fixed, as
    ``Agent.frozen_q`` evaluates it: (obs (B, m), actions (..., B, d)) → (..., B),
    differentiable in the actions."""

    def __init__(self, critic: TwinCritic):
        self.module = critic.requires_grad_(False).eval()

    def __call__(self, obs: Tensor, actions: Tensor) -> Tensor:
        rows = obs.expand(*actions.shape[:-2], *obs.shape).reshape(-1, obs.shape[-1])
        q = self.module(rows, actions.reshape(-1, actions.shape[-1]))
        return q.min(0).values.view(actions.shape[:-1])


@dataclass
class CriticRun:
    """A critic learned by SAC on the bandit (:func:`train_critic`)."""

    critic: LearnedCritic
    steps: int  # environment steps (= transitions, one-step episodes)
    updates: int  # SAC updates (critic, actor and α steps), steps − learning_starts
    eval_return: float  # the trained SAC actor's deterministic return, mean of 50 episodes
    seconds: float


def train_critic(
    action_dim: int,
    steps: int = 5000,
    seed: int = 0,
    obs_dim: int = 4,
    hidden: tuple[int, ...] = (64, 64),
    learning_starts: int | None = None,
    config: Path | str = SAC_CONFIG,
) -> CriticRun:
    """Train SAC (``rlgrad.api.train``, the config ``configs/sac_bandit.yaml``) for ``steps``
    environment steps on the bandit of :func:`make_problem` (the same W: ``env.kwargs.seed`` =
    ``seed``), in a temporary run directory, and return its final critic. ``learning_starts``
    overrides the config's (500 uniform random actions before the first update)."""
    from rlgrad import api
    from rlgrad.checkpoint import load_checkpoint
    from rlgrad.runner import CHECKPOINT_FILE

    overrides = {
        "env.kwargs.action_dim": action_dim,
        "env.kwargs.obs_dim": obs_dim,
        "env.kwargs.seed": seed,
        "seed": seed,
        "total_steps": steps,
        "agent.hidden_sizes": list(hidden),
        "logging.wandb": "disabled",
        "logging.tensorboard": False,
        "eval.interval": 0,
        "checkpoint.interval": 0,
        "learner.device": "cpu",
    }
    if learning_starts is not None:
        overrides["agent.learning_starts"] = learning_starts
    start = time.perf_counter()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="dimension_scaling_sac_") as tmp:
        run_dir = Path(tmp) / "run"
        result = api.train(config, run_dir=run_dir, **overrides)
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    torch.set_num_threads(threads)
    cfg = Config(**checkpoint["config"]["agent"])
    critic = TwinCritic(obs_dim, action_dim, cfg)
    critic.load_state_dict(checkpoint["agent"]["critic"])
    return CriticRun(
        LearnedCritic(critic),
        steps=result.global_step,
        updates=int(checkpoint["agent"]["updates"]),
        eval_return=float(result.eval_return_mean),
        seconds=time.perf_counter() - start,
    )


def critic_error(
    problem: Problem, states: int, generator: torch.Generator, draws: int = 8
) -> dict[str, float]:
    """How far ``problem.critic`` is from the true Q where the fixed actor acts: ``draws``
    actions a ~ π(·|s) on each of ``states`` states, e = Q̂ − Q. Relative RMS errors of the
    values (‖e‖/‖Q‖), of the values centred per state (e − mean_a e against Q − mean_a Q: a
    per-state constant error moves no estimator's expectation) and of the slopes
    (‖∂e/∂a‖/‖∂Q/∂a‖, what pathwise differentiates)."""
    assert problem.critic is not None
    obs = problem.sample_obs(states, generator)
    with torch.no_grad():
        policy = problem.policy(obs)
        noise = torch.randn((draws, *policy.mean.shape), generator=generator)
        actions = policy.rsample(noise)[0]
    actions = actions.requires_grad_()
    with torch.enable_grad():
        q = problem.q(obs, actions)
        q_hat = problem.critic(obs, actions)
        (slope,) = torch.autograd.grad(q.sum(), actions)
        (slope_hat,) = torch.autograd.grad(q_hat.sum(), actions)
    q, q_hat = q.detach().double(), q_hat.detach().double()
    e = q_hat - q

    def rms(x: Tensor) -> float:
        return float(x.pow(2).mean().sqrt())

    return {
        "critic_value_rel_rmse": rms(e) / rms(q),
        "critic_value_centred_rel_rmse": rms(e - e.mean(0)) / rms(q - q.mean(0)),
        "critic_slope_rel_rmse": rms((slope_hat - slope).double().norm(dim=-1))
        / rms(slope.double().norm(dim=-1)),
    }


def critic_bias(
    problem: Problem,
    critic: Callable[[Tensor, Tensor], Tensor],
    estimators: dict[str, PolicyGradientEstimator],
    alpha: float,
    states: int,
    generator: torch.Generator,
    chunk: int = 4096,
) -> dict[str, Tensor]:
    """Per estimator, (chunks, P) float64: the means over chunks of ``chunk`` fresh states of
    ĝ_critic − ĝ_true, the estimate with ``critic`` minus the estimate with the true Q from the
    SAME states and draws (common random numbers), flat in ``named_parameters`` order.

    Every estimator here is linear in h = α log π − Q (the baselines — leave-one-out mean,
    optimal per-component constant — are linear in h too), so ĝ_critic − ĝ_true is the
    estimator applied to the critic's error alone; and with the true Q each estimator is
    unbiased, so E[ĝ_critic − ĝ_true] = E ĝ_critic − ∇J_true, the bias, exactly. Its variance
    is that of the error term, not of ĝ_critic: far fewer states pin the bias down than
    averaging ĝ_critic itself would need. The estimators share each chunk's states (their
    draws are their own), so differences between their biases have chunk-level errors too."""
    learned = problem.with_critic(critic)
    truth = problem.with_critic(None)
    params = [p for _, p in problem.actor.named_parameters()]
    chunk = min(chunk, states // 2)
    n_chunks = max(2, states // chunk)
    alpha_t = torch.as_tensor(alpha)
    out: dict[str, list[Tensor]] = {name: [] for name in estimators}
    for _ in range(n_chunks):
        obs = problem.sample_obs(chunk, generator)
        objectives = learned.objective(obs, alpha), truth.objective(obs, alpha)
        with torch.enable_grad():
            policy = problem.policy(obs)
            means = []
            for estimator in estimators.values():
                noise = estimator.draw(policy, generator=generator)
                rows = [
                    estimator.row_losses(
                        policy, noise, estimator.prepare(policy, noise, objective), alpha_t
                    )
                    for objective in objectives
                ]
                means.append((rows[0] - rows[1]).mean())
            grads = torch.autograd.grad(
                torch.stack(means), params, torch.eye(len(means)), is_grads_batched=True
            )
        flat = torch.cat([g.reshape(len(means), -1) for g in grads], 1).double()
        for i, name in enumerate(estimators):
            out[name].append(flat[i])
    return {name: torch.stack(chunks) for name, chunks in out.items()}


def bias_statistics(
    chunks: Tensor, g_true: Tensor, reference: Tensor | None = None
) -> dict[str, float]:
    """From the chunk means of ĝ_critic − ĝ_true (:func:`critic_bias`), b = their mean:

    * ``bias_relative_error`` ‖b‖/‖∇J‖ = ‖E ĝ_critic − ∇J‖/‖∇J‖ as measured, and
      ``bias_relative_se`` ‖se(b)‖/‖∇J‖, the noise floor under it (pure noise reads about
      this much); ``bias_relative_error_debiased`` √max(‖b‖² − ‖se‖², 0)/‖∇J‖;
    * ``bias_cosine`` cos(∇J + b, ∇J) = cos(E ĝ_critic, ∇J), ``bias_cosine_se`` its
      jackknife standard error over the chunks;
    * b split along ∇J and across it: ``bias_parallel`` ⟨b, ∇J⟩/‖∇J‖² (negative: the critic
      shortens the gradient), ``bias_orthogonal`` ‖b⊥‖/‖∇J‖, and ``expected_grad_norm_ratio``
      ‖E ĝ_critic‖/‖∇J‖;
    * with ``reference`` (another estimator's chunks on the same states), ``bias_vs_reference``
      ‖b − b_ref‖/‖∇J‖ and ``bias_vs_reference_se`` its noise floor."""
    n = len(chunks)
    norm = float(g_true.norm())
    b, se = chunks.mean(0), chunks.std(0) / math.sqrt(n)
    loo = (chunks.sum(0, keepdim=True) - chunks) / (n - 1)
    jack = torch.stack([diagnostics.cosine(g_true + m, g_true) for m in loo])
    out = {
        "bias_relative_error": float(b.norm()) / norm,
        "bias_relative_se": float(se.norm()) / norm,
        "bias_relative_error_debiased": math.sqrt(max(float(b.norm() ** 2 - se.norm() ** 2), 0.0))
        / norm,
        "bias_cosine": float(diagnostics.cosine(g_true + b, g_true)),
        "bias_cosine_se": float(jack.std(correction=0) * math.sqrt(n - 1)),
        "bias_parallel": float(b @ g_true) / norm**2,
        "bias_orthogonal": float((b - (b @ g_true) / norm**2 * g_true).norm()) / norm,
        "expected_grad_norm_ratio": float((g_true + b).norm()) / norm,
    }
    if reference is not None:
        diff = chunks - reference
        out["bias_vs_pathwise"] = float(diff.mean(0).norm()) / norm
        out["bias_vs_pathwise_se"] = float((diff.std(0) / math.sqrt(n)).norm()) / norm
    return out


def _flat_layer_weights(actor: Actor, weights: dict[str, float]) -> Tensor:
    """Per-layer weights as a flat (P,) vector in ``named_parameters`` order."""
    return torch.cat(
        [
            torch.full((p.numel(),), weights[_layer_of(n)], dtype=torch.float64)
            for n, p in actor.named_parameters()
        ]
    )


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
    critic: Callable[[Tensor, Tensor], Tensor] | None = None,
    bias_states: int = 1 << 17,
    bias_chunk: int = 4096,
) -> list[dict]:
    """The rows of the table for one action dimension (see the module docstring).

    ``states`` must be a multiple of 256 (the batch whose cosine to the truth is reported);
    ``truth``: a precomputed (∇J, se) to reuse (always of the TRUE Q).

    ``critic``: measure the estimators against this Q (e.g. a :class:`LearnedCritic`) instead
    of the true one: the same actor, states and draws as the true-Q run (the generators are
    the same), the mixing weights from a pilot with this critic, cosines to the TRUE gradient;
    each row adds the estimator's bias (:func:`critic_bias` on ``bias_states`` other states,
    :func:`bias_statistics`, against pathwise's on the same states) and every row the
    critic's errors (:func:`critic_error`)."""
    if states % BATCH:
        raise ValueError(f"states must be a multiple of {BATCH}, got {states}")
    problem = make_problem(action_dim, env_seed=seed, actor_seed=seed, hidden=hidden)
    if truth is None:
        truth = true_gradient(problem, truth_samples, alpha, seed=seed + 1)
    g_true, se = truth
    rel_se = float(se.norm() / g_true.norm())
    measured = problem.with_critic(critic)
    generator = torch.Generator().manual_seed(seed + 2)
    rows = []
    pathwise = Pathwise()
    params = dict(problem.actor.named_parameters())
    biased: dict[str, PolicyGradientEstimator] = {"pathwise": pathwise}  # for critic_bias
    mixes: dict[str, tuple[str, dict[str, float]]] = {}  # mixed key → (its score key, weights)
    row_keys: list[str] = []  # each row's key in critic_bias's result
    for i, k in enumerate(ks):
        baselines = ["none"] if k == 1 else ["loo", "optimal"]
        scores = {f"score/{b}": ScoreFunction(k, b) for b in baselines}  # type: ignore[arg-type]
        first = f"score/{baselines[0]}"
        weights = mixing_weights(measured, scores[first], alpha, pilot_states, generator)
        obs = problem.sample_obs(states, generator)
        estimators: dict[str, PolicyGradientEstimator] = {"pathwise": pathwise, **scores}
        m = measure(
            measured, obs, alpha, estimators, generator, BATCH, ("pathwise", first), weights
        )
        mixed = Mixed(pathwise, scores[first], params)
        entries = [("pathwise", 1, "", "pathwise", pathwise)] if i == 0 else []
        entries += [("score", k, b, f"score/{b}", scores[f"score/{b}"]) for b in baselines]
        entries += [("mixed", k, baselines[0], "mixed", mixed)]
        biased.update({f"{key}/K={k}": est for key, est in scores.items()})
        mixes[f"mixed/K={k}"] = (f"{first}/K={k}", weights)
        for estimator, kk, baseline, key, obj in entries:
            stats = diagnostics.moment_statistics(m.moments[key])
            variance = float(stats["variance"])
            evals = obj.critic_evaluations_per_state
            cosines = torch.stack([diagnostics.cosine(g, g_true) for g in m.batch_grads[key]])
            row_keys.append("pathwise" if key == "pathwise" else f"{key}/K={k}")
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
    if critic is None:
        return rows
    bias_generator = torch.Generator().manual_seed(seed + 3)
    chunks = critic_bias(
        problem, critic, biased, alpha, bias_states, bias_generator, chunk=bias_chunk
    )
    for key, (score_key, weights) in mixes.items():
        w = _flat_layer_weights(problem.actor, weights)
        chunks[key] = w * chunks["pathwise"] + (1.0 - w) * chunks[score_key]
    errors = critic_error(measured, 4096, torch.Generator().manual_seed(seed + 4))
    for row, key in zip(rows, row_keys, strict=True):
        row.update(bias_statistics(chunks[key], g_true, chunks["pathwise"]))
        row["bias_states"] = len(chunks[key]) * min(bias_chunk, bias_states // 2)
        row.update(errors)
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
LEARNED_COLUMNS = [
    *COLUMNS,
    "bias_relative_error",
    "bias_relative_se",
    "bias_relative_error_debiased",
    "bias_cosine",
    "bias_cosine_se",
    "bias_parallel",
    "bias_orthogonal",
    "expected_grad_norm_ratio",
    "bias_vs_pathwise",
    "bias_vs_pathwise_se",
    "bias_states",
    "critic_value_rel_rmse",
    "critic_value_centred_rel_rmse",
    "critic_slope_rel_rmse",
    "sac_steps",
    "sac_updates",
    "sac_eval_return",
    "sac_seconds",
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


def plot_learned(rows: list[dict], path: Path, title: str, true_rows: list[dict] | None) -> None:
    """The learned-critic run: bias (relative error and cosine of E ĝ to ∇J, error bars one
    standard error), per-state variance and batch-256 cosine (the true-Q run's faint, dotted,
    where ``true_rows`` has it)."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    axes = axes.flatten()
    dims = sorted({row["d"] for row in rows})

    def lines_of(table: list[dict]) -> dict[tuple, list[dict]]:
        lines: dict[tuple, list[dict]] = {}
        for row in table:
            lines.setdefault((row["estimator"], row["baseline"], row["K"]), []).append(row)
        return {key: sorted(pts, key=lambda r: r["d"]) for key, pts in lines.items()}

    truth_lines = lines_of(true_rows or [])
    for key, pts in lines_of(rows).items():
        color, marker, ls = STYLE.get(key, ("tab:gray", "x", ":"))
        d = [r["d"] for r in pts]
        kw = dict(color=color, marker=marker, linestyle=ls, label=label(key[0], key[2], key[1]))
        kw_err = dict(kw, capsize=3, alpha=0.85)
        rel = [r["bias_relative_error"] for r in pts]
        axes[0].errorbar(d, rel, yerr=[r["bias_relative_se"] for r in pts], **kw_err)
        cos = [r["bias_cosine"] for r in pts]
        axes[1].errorbar(d, cos, yerr=[r["bias_cosine_se"] for r in pts], **kw_err)
        axes[2].plot(d, [r["variance"] for r in pts], **kw)
        mean = [r["cosine_batch256_mean"] for r in pts]
        std = [r["cosine_batch256_std"] for r in pts]
        axes[3].errorbar(d, mean, yerr=std, capsize=3, **kw)
        if key in truth_lines:
            tp = truth_lines[key]
            faint = dict(color=color, marker=marker, linestyle=":", alpha=0.35, markersize=4)
            axes[2].plot([r["d"] for r in tp], [r["variance"] for r in tp], **faint)
            axes[3].plot([r["d"] for r in tp], [r["cosine_batch256_mean"] for r in tp], **faint)
    titles = (
        "bias: ‖E ĝ − ∇J‖ / ‖∇J‖ (bars: noise floor; the lines coincide)",
        "bias: cos(E ĝ, ∇J)",
        "variance of one state's estimate, tr Σ (dotted: true Q)",
        "cosine of a batch-256 estimate to ∇J (dotted: true Q)",
    )
    for ax, t in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.minorticks_off()
        ax.set_xlabel("action dimension d")
        ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[3].set_ylim(-0.05, 1.02)
    handles, labels = axes[3].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


QUICK = {
    "dims": [1, 8],
    "truth_samples": 1 << 17,
    "states": 1024,
    "pilot_states": 256,
    "critic_steps": 1500,
    "bias_states": 1 << 14,
}


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "out")
    parser.add_argument("--docs", action="store_true", help="also write the figures to docs/")
    parser.add_argument("--critic", choices=["true", "learned", "both"], default="true")
    parser.add_argument("--critic-steps", type=int, default=5000, help="SAC's env steps")
    parser.add_argument("--bias-states", type=int, default=1 << 17)
    parser.add_argument("--quick", action="store_true", help=f"smaller defaults: {QUICK}")
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--truth-samples", type=int, default=1_000_000)
    parser.add_argument("--states", type=int, default=4096)
    parser.add_argument("--pilot-states", type=int, default=1024)
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows: list[dict] = []
    learned: list[dict] = []
    for d in args.dims:
        t = time.perf_counter()
        problem = make_problem(d, env_seed=args.seed, actor_seed=args.seed)
        truth = true_gradient(problem, args.truth_samples, args.alpha, seed=args.seed + 1)
        common = dict(
            ks=tuple(args.ks),
            states=args.states,
            pilot_states=args.pilot_states,
            alpha=args.alpha,
            seed=args.seed,
            truth=truth,
        )
        g_norm, rel_se = float(truth[0].norm()), float(truth[1].norm() / truth[0].norm())
        print(f"d={d:3d}  ‖∇J‖={g_norm:.4g}  ‖se‖/‖∇J‖={rel_se:.2e}")
        if args.critic in ("true", "both"):
            new = run_dimension(d, **common)
            rows += new
            print(f"  true Q ({time.perf_counter() - t:.1f} s)")
            for r in new:
                print(
                    f"    {label(r['estimator'], r['K'], r['baseline']):38s} "
                    f"var={r['variance']:10.4g}  var×evals={r['variance_per_evaluation']:10.4g}  "
                    f"cos={r['cosine_batch256_mean']:.3f}±{r['cosine_batch256_std']:.3f}"
                )
        if args.critic in ("learned", "both"):
            run = train_critic(d, args.critic_steps, args.seed)
            t = time.perf_counter()
            new = run_dimension(d, **common, critic=run.critic, bias_states=args.bias_states)
            sac = {
                "sac_steps": run.steps,
                "sac_updates": run.updates,
                "sac_eval_return": run.eval_return,
                "sac_seconds": run.seconds,
            }
            for r in new:
                r.update(sac)
            learned += new
            e = new[0]
            print(
                f"  learned Q: SAC {run.steps} steps ({run.updates} updates, {run.seconds:.1f} s),"
                f" its actor's return {run.eval_return:.3g}; critic error under the fixed actor:"
                f" values {e['critic_value_rel_rmse']:.3f} (centred "
                f"{e['critic_value_centred_rel_rmse']:.3f}), slopes "
                f"{e['critic_slope_rel_rmse']:.3f} ({time.perf_counter() - t:.1f} s)"
            )
            for r in new:
                print(
                    f"    {label(r['estimator'], r['K'], r['baseline']):38s} "
                    f"bias {r['bias_relative_error']:.4f}±{r['bias_relative_se']:.4f}  "
                    f"cos(Eĝ,∇J)={r['bias_cosine']:.4f}±{r['bias_cosine_se']:.4f}  "
                    f"‖Eĝ‖/‖∇J‖={r['expected_grad_norm_ratio']:.3f}  "
                    f"−pathwise's {r['bias_vs_pathwise']:.4f}±{r['bias_vs_pathwise_se']:.4f}  "
                    f"var={r['variance']:10.4g}  "
                    f"cos256={r['cosine_batch256_mean']:.3f}±{r['cosine_batch256_std']:.3f}"
                )
    args.out.mkdir(parents=True, exist_ok=True)
    setup = (
        f"SAC actor [64, 64] at init, α = {args.alpha:g}; {args.states} states, truth from "
        f"{args.truth_samples:.0e} pathwise samples"
    )
    written = []
    if rows:
        write_csv(args.out / "dimension_scaling.csv", COLUMNS, rows)
        title = f"rlgrad/QuadraticBandit-v0, r = −‖a − tanh(Ws)‖² (Q = r), {setup}"
        paths = [args.out / "dimension_scaling.png"]
        if args.docs:
            paths.append(ROOT / "docs" / "dimension_scaling.png")
        for path in paths:
            plot(rows, path, title)
        written += [*paths, args.out / "dimension_scaling.csv"]
    if learned:
        write_csv(args.out / "dimension_scaling_learned.csv", LEARNED_COLUMNS, learned)
        title = (
            f"rlgrad/QuadraticBandit-v0 with the critic SAC learned in {args.critic_steps} steps "
            f"(configs/sac_bandit.yaml);\n{setup}; bias from {args.bias_states} states (common "
            "random numbers with the true Q)"
        )
        paths = [args.out / "dimension_scaling_learned.png"]
        if args.docs:
            paths.append(ROOT / "docs" / "dimension_scaling_learned.png")
        for path in paths:
            plot_learned(learned, path, title, rows or None)
        written += [*paths, args.out / "dimension_scaling_learned.csv"]
    print(f"wrote {', '.join(str(p) for p in written)}")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
