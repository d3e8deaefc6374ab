"""Proximal Policy Optimization (Schulman et al. 2017) with the clipped surrogate objective.

Defaults are Stable-Baselines3's PPO, so the two can be compared on the same work: separate
64-64 tanh policy and value networks with orthogonal initialisation (gains √2, 0.01 for the
policy mean, 1 for the value), a diagonal Gaussian policy with a state-independent log σ
(initialised at 0), one Adam optimiser (eps 1e-5) over both networks.

Every ``n_steps`` vector steps the rollout of ``n_steps × n_envs`` transitions is turned into
GAE(λ) advantages Â and TD(λ) returns R (truncations and the rollout boundary bootstrap from
V of the true next observation, terminations do not: see ``rlgrad.rollout``); log π_old and
V_old are recomputed in one batched call (the policy has not changed since it acted). Then
``n_epochs`` epochs of minibatches of ``batch_size``, each one step on

    loss = L_clip + vf_coef · L_V − ent_coef · mean H[π]
    L_clip = −mean min(ρ Â, clip(ρ, 1 − ε, 1 + ε) Â),   ρ = π(a|s) / π_old(a|s)
    L_V = mean (R − V̂)²,  V̂ = V(s), or V_old + clip(V(s) − V_old, ±clip_range_vf) (SB3's form)

with Â standardised per minibatch and the gradient norm clipped at ``max_grad_norm``. Logged:
the losses ``losses/policy`` and ``losses/value``, and what is not a loss under ``train/``:
``train/entropy``, ``train/approx_kl`` (the estimator mean((ρ − 1) − log ρ), as SB3),
``train/clip_fraction`` (share of |ρ − 1| > ε), all averaged over the update's minibatches,
``train/explained_variance`` and ``train/policy_std``.

The minibatch loss is :func:`ppo_loss` below. It is registered with a fused stand-in
(``rlgrad.kernels.ppo``: the same loss and gradients to float rounding, one autograd node with a
hand-written backward pass) that ``learner.kernels=auto`` uses for tanh and ReLU networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt

from rlgrad import diagnostics, kernels
from rlgrad.config import AgentConfig, DiagnosticsConfig
from rlgrad.envs import EnvSpec
from rlgrad.kernels import ppo as fused
from rlgrad.learner import Learner
from rlgrad.networks import GaussianPolicy, ValueFunction
from rlgrad.on_policy import OnPolicyAgent


class Config(AgentConfig):
    action_spaces = ("continuous", "discrete")
    name: Literal["ppo"] = "ppo"
    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [64, 64], min_length=1)
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    learning_rate: float = Field(3e-4, gt=0)
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over ``total_steps`` (SB3's default is constant)."""
    n_steps: int = Field(2048, gt=0)
    """Vector-env steps per rollout (per env)."""
    batch_size: int = Field(64, gt=0)
    n_epochs: int = Field(10, gt=0)
    gamma: float = Field(0.99, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_range: float = Field(0.2, gt=0)
    clip_range_vf: float | None = Field(None, gt=0)
    normalize_advantage: bool = True
    ent_coef: float = Field(0.0, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float | None = Field(0.5, gt=0)
    target_kl: float | None = Field(None, gt=0)
    """Stop the update's epochs once approx-KL exceeds 1.5 × target_kl (costs a host sync)."""
    log_std_init: float = 0.0
    ortho_init: bool = True


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(−mean min(ρ Â, clip(ρ, 1 ± ε) Â), fraction of samples with |ρ − 1| > ε)."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages
    loss = -torch.min(unclipped, clipped).mean()
    clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
    return loss, clip_fraction


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_range_vf: float | None,
) -> torch.Tensor:
    """mean (R − V̂)², V̂ clipped to within ``clip_range_vf`` of V_old when it is set."""
    if clip_range_vf is not None:
        values = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
    return (returns - values).pow(2).mean()


@dataclass(frozen=True)
class PPOLossOptions:
    """The constants of :func:`ppo_loss` (from the agent's config)."""

    clip_range: float
    clip_range_vf: float | None
    vf_coef: float
    ent_coef: float
    normalize_advantage: bool


LOSS_TERMS = ("policy", "value")
"""The parts of :func:`ppo_loss`'s statistics that are loss terms (logged as ``losses/``)."""


def ppo_loss(
    policy: GaussianPolicy,
    value: ValueFunction,
    options: PPOLossOptions,
    obs: torch.Tensor,
    actions: torch.Tensor,
    old_log_prob: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO loss on one minibatch, and its detached parts for logging (the reference that
    ``rlgrad.kernels.ppo.fused_ppo_loss`` stands in for, registered below)."""
    if options.normalize_advantage and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    dist = policy(obs)
    log_ratio = dist.log_prob(actions) - old_log_prob
    ratio = log_ratio.exp()
    pg_loss, clip_fraction = clipped_surrogate(ratio, advantages, options.clip_range)
    v_loss = value_loss(value(obs), old_values, returns, options.clip_range_vf)
    entropy = dist.entropy().mean()
    loss = pg_loss + options.vf_coef * v_loss - options.ent_coef * entropy
    with torch.no_grad():
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
    return loss, {
        "policy": pg_loss.detach(),
        "value": v_loss.detach(),
        "entropy": entropy.detach(),
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }


kernels.register(
    kernels.Kernel(
        name="ppo_loss",
        reference=ppo_loss,
        fused=fused.fused_ppo_loss,
        supports=fused.supports,
        example=fused.example,
    )
)


class Agent(OnPolicyAgent):
    """PPO on :class:`rlgrad.on_policy.OnPolicyAgent`: GAE(λ), epochs of clipped minibatch
    steps, and the diagnostics of its policy loss at θ_old."""

    value: ValueFunction

    def __init__(
        self, cfg: Config, spec: EnvSpec, learner: Learner, n_envs: int, total_steps: int = 0
    ):
        super().__init__(cfg, spec, learner, n_envs, total_steps, value=True)
        self.cfg: Config = cfg
        params = [*self.policy.parameters(), *self.value.parameters()]
        self.add_optimizer("ppo", params, cfg.learning_rate, eps=1e-5)
        self.loss_options = PPOLossOptions(
            clip_range=cfg.clip_range,
            clip_range_vf=cfg.clip_range_vf,
            vf_coef=cfg.vf_coef,
            ent_coef=cfg.ent_coef,
            normalize_advantage=cfg.normalize_advantage,
        )
        # ppo_loss, or for tanh/ReLU MLPs its fused stand-in (one node with a hand-written
        # backward; experiments/README.md), as learner.kernels selects; the reference
        # through torch.compile when learner.compile is set.
        bound = learner.kernel(ppo_loss, self.policy, self.value, self.loss_options)
        self.minibatch_loss = learner.compile(bound) if bound.kind == "reference" else bound

    # ---- learning -----------------------------------------------------------------------
    def learn(self, global_step: int, measure: bool) -> dict[str, torch.Tensor]:
        cfg, buf = self.cfg, self.buffer
        obs, actions = buf.flat("obs"), buf.flat("actions")
        with torch.no_grad():
            old_log_prob = self.policy(obs).log_prob(actions)
            old_values = self.value(obs)
            next_values = self.value(buf.flat("next_obs"))
        advantages, returns = buf.compute_gae(old_values, next_values, cfg.gamma, cfg.gae_lambda)
        if measure:
            self.snapshot(old_log_prob=old_log_prob, advantages=advantages)

        sums: torch.Tensor | None = None  # the minibatches' stats, stacked, summed
        n_minibatches, stop = 0, False
        for _ in range(cfg.n_epochs):
            batches = buf.minibatches(
                cfg.batch_size, obs, actions, old_log_prob, old_values, advantages, returns
            )
            for minibatch in batches:
                self.learner.mark_step()
                loss, stats = self.minibatch_loss(*minibatch)
                # As SB3: stop before a step that would move the policy too far from π_old.
                if cfg.target_kl is not None and float(stats["approx_kl"]) > 1.5 * cfg.target_kl:
                    stop = True
                    break
                self.learner.step("ppo", loss, max_grad_norm=cfg.max_grad_norm)
                stacked = torch.stack(list(stats.values()))
                sums = stacked if sums is None else sums.add_(stacked)
                n_minibatches += 1
            if stop:
                break

        residual_var = (returns - old_values).var()
        names = tuple(stats)  # the last minibatch's: every one returns the same keys
        means = sums / n_minibatches if sums is not None else obs.new_zeros(len(names))
        metrics = {
            f"{'losses' if k in LOSS_TERMS else 'train'}/{k}": v
            for k, v in zip(names, means, strict=True)
        }
        metrics["train/explained_variance"] = 1.0 - residual_var / returns.var().clamp_min(1e-8)
        metrics.update(self.policy_metrics())
        metrics["charts/learning_rate"] = torch.tensor(
            self.learner.optimizers["ppo"].param_groups[0]["lr"]
        )
        return metrics

    # ---- diagnostics --------------------------------------------------------------------
    def diagnose_snapshot(
        self, r: dict[str, Any], cfg: DiagnosticsConfig
    ) -> dict[str, torch.Tensor]:
        """Per-sample gradients of PPO's policy loss at the start of the measured update
        (θ = θ_old, ρ = 1) on its whole rollout (``diagnose`` calls this on the snapshot).

        Per step, g_t = ∇θ [−min(ρ_t Â_t, clip(ρ_t, 1 ± ε) Â_t) − ent_coef · H(πθ(·|s_t))],
        ρ_t = πθ(a_t|s_t)/π_old(a_t|s_t), with Â standardised over the rollout (the update
        standardises per minibatch). At ρ = 1 the clip is inactive, so g_t = −Â_t ∇θ log π(a_t|s_t)
        (+ the entropy term): the score-function estimate with GAE(λ) advantages. Logged as
        ``grad/score/<stat>_per_step`` and ``grad/score/<stat>_per_episode`` (see
        :func:`rlgrad.diagnostics.step_and_episode_statistics`).
        """
        if r["obs"].shape[0] < 2:
            return {}
        advantages = r["advantages"]
        if self.cfg.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        grads = self.policy_loss_per_sample(
            r["params"], r["obs"], r["actions"], r["old_log_prob"], advantages
        )
        episode, n_episodes = diagnostics.episode_index(r["terminated"], r["truncated"])
        stats = diagnostics.step_and_episode_statistics(grads, episode, n_episodes, cfg.per_layer)
        return diagnostics.prefixed("grad/score", stats)

    def policy_loss_per_sample(
        self,
        params: dict[str, torch.Tensor],
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantages: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """∇θ of each step's term of L_clip − ent_coef · H at θ = ``params``."""
        clip_range, ent_coef = self.cfg.clip_range, self.cfg.ent_coef

        def loss(policy, obs_t, action_t, old_log_prob_t, adv_t):
            dist = policy(obs_t)
            ratio = (dist.log_prob(action_t) - old_log_prob_t).exp()
            surrogate, _ = clipped_surrogate(ratio, adv_t, clip_range)
            return surrogate - ent_coef * dist.entropy().sum()

        return diagnostics.per_sample_grads(
            self.policy, loss, obs, actions, old_log_prob, advantages, params=params
        )
