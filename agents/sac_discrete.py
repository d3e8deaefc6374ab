"""Soft Actor-Critic for discrete actions (Christodoulou 2019), with a choice of actor
gradient estimator.

Networks: a softmax actor π(·|s) = softmax(lθ(s)) over the A actions (an MLP s ↦ logits,
:class:`rlgrad.networks.SoftmaxPolicy`), twin critics Q_1, Q_2 that output Q_i(s, ·) for every
action in one batched call (an ``EnsembleMLP`` of two members), Polyak-averaged target critics
Q̄_i, and automatic entropy tuning.

With few actions every expectation over a ~ π(·|s) is a sum, so the losses on a replay batch
(s, a, r, s', d), d = terminated, are exact in the actions:

    critic:  ½ Σ_i mean (Q_i(s, a) − y)²,
             y = r + γ (1 − d) Σ_a' π(a'|s') [min_i Q̄_i(s', a') − α log π(a'|s')]
    actor:   J(θ) = E_s Σ_a πθ(a|s) [α log πθ(a|s) − min_i Q_i(s, a)]     (critics fixed)
    alpha:   −log α · Σ_a π(a|s) (log π(a|s) + H_target)                     (π detached)

with α = exp(log α) and H_target = ``target_entropy_scale`` · log A (the entropy of the
uniform policy, scaled); or α fixed (``ent_coef``). A time-limit truncation bootstraps (its s'
is the true last observation); a termination does not.

The actor's gradient ∇θ J is taken from an estimator object of
:mod:`rlgrad.estimators.categorical`, chosen by ``actor_estimator``. Each gets the function
averaged over actions, h(s, a) = α log πθ(a|s) + f(s, a) with f = −min_i Q_i(s, a) as a table
(B, A) (:meth:`CategoricalObjective.from_q`), and its ``loss`` is the surrogate the actor steps
on (this file writes no actor loss of its own):

* ``exact`` (the default, the published algorithm): ℓ_i = Σ_a π_a(θ) (α log π_a(θ) + f_a),
  the gradient of J itself;
* ``score``: K = ``score_samples`` actions per state drawn from π by Gumbel-max,
  ℓ_i = (1/K) Σ_k (h_k − b_k + α) log πθ(a_k|s_i), b the leave-one-out mean of h
  (``score_baseline=loo``) or 0; unbiased;
* ``gumbel_softmax``: the pathwise gradient of the relaxed objective at
  y = softmax((l + g)/τ), τ = ``gumbel_temperature``: biased (less as τ → 0, noisier);
* ``straight_through``: forward the hard sample one_hot(argmax y), backward through y: biased.

Diagnostics (:meth:`Agent.diagnose`). On a batch of replay states, with the critics and the
actor of the moment, every one of the four estimators (whichever trains) gives one estimate
ĝ_i per state (``vmap(grad(·))`` of its row losses), and the closed form gives the exact
per-state gradient g_i = (∂l_i/∂θ)ᵀ π_i ⊙ (h_i − Σ_a π_a h_a) (:func:`closed_form_categorical`,
independent of the estimator objects). ``categorical_statistics`` compares them: relative bias
‖ḡ − g‖/‖g‖ with its standard error and noise floor, the variance tr Σ̂ of ĝ_i − g_i (the
estimator's own noise; for ``exact`` float32 rounding alone, a bias of ~1e-5), and the cosine
to g; ``snr`` and ``batch_variance`` are those of the training batch's estimate, by
:func:`rlgrad.diagnostics.moment_statistics` (the spread between states included), as SAC
logs them.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor

from rlgrad import diagnostics
from rlgrad.buffers import ReplayBuffer, Transitions
from rlgrad.config import AgentConfig, DiagnosticsConfig
from rlgrad.envs import EnvSpec
from rlgrad.estimators import (
    CategoricalObjective,
    CategoricalPolicy,
    categorical_statistics,
    closed_form_categorical,
    make_categorical_estimator,
)
from rlgrad.learner import Learner
from rlgrad.networks import EnsembleMLP, SoftmaxPolicy
from rlgrad.off_policy import polyak_update, replay_updates

ESTIMATORS = ("exact", "score", "gumbel_softmax", "straight_through")
"""The actor-gradient estimators ``diagnose`` measures, whichever trains."""


class Config(AgentConfig):
    action_spaces = ("discrete",)
    name: Literal["sac_discrete"] = "sac_discrete"
    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [64, 64], min_length=1)
    """Hidden layers of the actor and of each critic (ReLU)."""
    actor_lr: float = Field(3e-4, gt=0)
    """Adam step size of the actor and of log α."""
    critic_lr: float = Field(1e-3, gt=0)
    """Adam step size of the twin critics."""
    buffer_size: int = Field(100_000, gt=0)
    batch_size: int = Field(256, gt=0)
    learning_starts: int = Field(1000, ge=0)
    """Env steps of uniform random actions before learning begins."""
    gamma: float = Field(0.99, ge=0, le=1)
    tau: float = Field(0.005, gt=0, le=1)
    """Polyak rate of the target critics: Q̄ ← Q̄ + τ (Q − Q̄)."""
    target_update_interval: int = Field(1, gt=0)
    """Updates between two Polyak steps."""
    train_freq: int = Field(1, gt=0)
    """Vector-env steps between two rounds of updates."""
    gradient_steps: int = Field(1, ge=-1)
    """Updates per round; −1 does as many as env steps were taken."""
    ent_coef: float | Literal["auto"] = "auto"
    """α: ``auto`` tunes it towards ``target_entropy_scale`` · log A, a number fixes it (> 0)."""
    ent_coef_init: float = Field(1.0, gt=0)
    """The first α when ``ent_coef=auto``."""
    target_entropy_scale: float = Field(0.5, gt=0, le=1)
    """H_target = scale · log A, a fraction of the uniform policy's entropy."""
    actor_estimator: Literal["exact", "score", "gumbel_softmax", "straight_through"] = "exact"
    """The actor's gradient estimator (``rlgrad.estimators.categorical``)."""
    score_samples: int = Field(8, gt=0)
    """K: actions drawn per state by the score-function estimator."""
    score_baseline: Literal["none", "loo"] = "loo"
    """Baseline of the score-function estimator: none, or the leave-one-out mean of h."""
    gumbel_temperature: float = Field(1.0, gt=0)
    """τ of the Gumbel-softmax and straight-through estimators."""

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.score_baseline == "loo" and self.score_samples < 2:
            raise ValueError("score_baseline=loo needs score_samples >= 2")
        if self.ent_coef != "auto" and not self.ent_coef > 0:
            raise ValueError("ent_coef must be auto or a positive number")
        return self


class Agent:
    def __init__(
        self, cfg: Config, spec: EnvSpec, learner: Learner, n_envs: int, total_steps: int = 0
    ):
        if not spec.discrete:
            raise ValueError("sac_discrete needs a Discrete action space")
        self.cfg, self.learner, self.n_envs = cfg, learner, n_envs
        self.n_actions = spec.n_actions
        device = learner.device
        self.actor = SoftmaxPolicy(spec.obs_dim, spec.n_actions, cfg.hidden_sizes, "relu", True)
        self.actor.to(device)
        self.critic = EnsembleMLP(2, [spec.obs_dim, *cfg.hidden_sizes, spec.n_actions]).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.buffer = ReplayBuffer(cfg.buffer_size, spec.obs_dim, spec.act_dim, device)

        learner.add_optimizer("critic", self.critic.parameters(), cfg.critic_lr)
        learner.add_optimizer("actor", self.actor.parameters(), cfg.actor_lr)
        self.autotune = cfg.ent_coef == "auto"
        init = cfg.ent_coef_init if self.autotune else float(cfg.ent_coef)
        self.log_alpha = torch.tensor(init, device=device).log().requires_grad_(self.autotune)
        if self.autotune:
            learner.add_optimizer("alpha", [self.log_alpha], cfg.actor_lr)
        self.target_entropy = cfg.target_entropy_scale * math.log(spec.n_actions)
        self.vector_steps = 0
        self.updates = 0

        # The four estimators of rlgrad.estimators.categorical: ``estimator`` trains the actor,
        # ``diagnose`` measures them all on the same states.
        self.estimators = {
            name: make_categorical_estimator(
                name, cfg.score_samples, cfg.score_baseline, cfg.gumbel_temperature
            )
            for name in ESTIMATORS
        }
        self.estimator = self.estimators[cfg.actor_estimator]
        self.compiled = {
            "critic_loss": learner.compile(self.critic_loss),
            "actor_loss": learner.compile(self.estimator.loss),
        }

    # ---- acting -------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Tensor, global_step: int) -> Tensor:
        """a ~ π(·|s) as (n_envs, 1) float indices; uniform before ``learning_starts``."""
        if global_step < self.cfg.learning_starts:
            actions = torch.randint(self.n_actions, (obs.shape[0], 1), device=obs.device)
            return actions.to(obs.dtype)
        return self.actor.sample_action(obs)

    @torch.no_grad()
    def act_deterministic(self, obs: Tensor) -> Tensor:
        """argmax_a π(a|s), (n_envs, 1) floats."""
        return self.actor.mean_action(obs)

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        self.buffer.add(obs, actions, rewards, next_obs, terminated, truncated)

    # ---- learning -----------------------------------------------------------------------
    def policy(self, obs: Tensor) -> CategoricalPolicy:
        """π(·|s) = softmax(lθ(s)), differentiable in θ."""
        return CategoricalPolicy(self.actor.logits(obs))

    @torch.no_grad()
    def frozen_q(self, obs: Tensor) -> Tensor:
        """min_i Q_i(s, ·), (B, A), the critics' weights held fixed."""
        return self.critic(obs).min(0).values

    def actor_objective(self, obs: Tensor, alpha: Tensor) -> CategoricalObjective:
        """h(s, a) = α log π(a|s) − min_i Q_i(s, a), f = −min Q as a table (B, A)."""
        return CategoricalObjective.from_q(self.frozen_q(obs), alpha, obs)

    def critic_loss(self, batch: Transitions, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """½ Σ_i mean (Q_i(s, a) − y)², y the soft Bellman target, exact over a' (module doc)."""
        with torch.no_grad():
            next_log_pi = self.policy(batch.next_obs).log_probs()
            next_q = self.critic_target(batch.next_obs).min(0).values
            soft_next_v = (next_log_pi.exp() * (next_q - alpha * next_log_pi)).sum(-1)
            target = batch.rewards + self.cfg.gamma * (~batch.terminated) * soft_next_v
        index = batch.actions.long().expand(2, -1, -1)  # (2, B, 1)
        q = self.critic(batch.obs).gather(-1, index).squeeze(-1)  # (2, B)
        loss = 0.5 * (q - target).pow(2).mean(-1).sum()
        return loss, q.detach().mean()

    def update(self, global_step: int, measure: bool = False) -> dict[str, Tensor]:
        """The updates due at this vector step (:func:`rlgrad.off_policy.replay_updates`)."""
        return replay_updates(self, global_step)

    def update_once(self, batch: Transitions) -> dict[str, Tensor]:
        cfg = self.cfg
        alpha = self.log_alpha.detach().exp()
        policy = self.policy(batch.obs)
        with torch.no_grad():
            log_pi = policy.log_probs()
            neg_entropy = (log_pi.exp() * log_pi).sum(-1)  # Σ_a π_a log π_a, (B,)

        metrics: dict[str, Tensor] = {"charts/alpha": alpha}
        if self.autotune:
            alpha_loss = -(self.log_alpha * (neg_entropy + self.target_entropy)).mean()
            self.learner.step("alpha", alpha_loss)
            metrics["losses/alpha"] = alpha_loss.detach()

        critic_loss, q_mean = self.compiled["critic_loss"](batch, alpha)
        self.learner.step("critic", critic_loss)

        # The actor: the configured estimator of ∇θ E_s Σ_a π(a|s) [α log π(a|s) − min Q(s, a)].
        noise = self.estimator.draw(policy)
        objective = self.actor_objective(batch.obs, alpha)
        actor_loss, objective_value = self.compiled["actor_loss"](policy, noise, objective)
        self.learner.step("actor", actor_loss)

        self.updates += 1
        if self.updates % cfg.target_update_interval == 0:
            polyak_update(self.critic_target, self.critic, cfg.tau)
        metrics.update(
            {
                "losses/critic": critic_loss.detach(),
                "losses/actor": objective_value.detach(),
                "train/q_mean": q_mean,
                "train/entropy": -neg_entropy.mean(),
            }
        )
        return metrics

    # ---- diagnostics --------------------------------------------------------------------
    def default_diagnostics_interval(self) -> int:
        """Every 1000 updates: a measurement (four ``vmap(grad)`` passes over 256 states and
        their float64 statistics) costs about 50 updates at the default sizes, some 5 %."""
        return 1000

    def diagnose(self, cfg: DiagnosticsConfig) -> dict[str, Tensor]:
        """The four estimators against the exact gradient on the same replay states, critics
        and actor (module docstring). ``diagnostics.batch`` states (default
        ``agent.batch_size``); ``snr`` and ``batch_variance`` describe the training batch of
        ``agent.batch_size`` states. Per estimator e, ``grad/<e>/``:

        * ``bias``, ``bias_se``, ``bias_noise_floor``, ``variance`` (tr Σ̂ of ĝ_i − g_i) and
          ``cosine_exact``: :func:`categorical_statistics` (``bias_se`` is 0 where there is no
          residual at all);
        * ``grad_norm``, ``variance_total`` (tr Σ̂ of ĝ_i, states' spread included),
          ``batch_variance``, ``snr`` and ``noise_scale``:
          :func:`rlgrad.diagnostics.moment_statistics` (its ``variance`` as
          ``variance_total``), and with ``diagnostics.per_layer`` its per-parameter ``snr`` and
          ``variance``."""
        alpha = self.log_alpha.detach().exp()
        obs = self.buffer.sample(cfg.batch or self.cfg.batch_size).obs
        q = self.frozen_q(obs)
        exact = self.exact_per_state(obs, q, alpha)
        metrics: dict[str, Tensor] = {}
        for name in ESTIMATORS:
            grads = self.per_state_gradients(name, obs, q, alpha)
            stats = estimator_statistics(grads, exact, self.cfg.batch_size, cfg.per_layer)
            metrics.update(diagnostics.prefixed(f"grad/{name}", stats))
        return metrics

    def per_state_gradients(
        self, name: str, obs: Tensor, q: Tensor, alpha: Tensor
    ) -> dict[str, Tensor]:
        """∇θ ℓ_i of estimator ``name``'s row losses for every state i, by ``vmap(grad(·))``
        over the actor's logits network (its ``per_state``): {parameter: (B, *shape)}."""
        estimator = self.estimators[name]
        with torch.no_grad():
            policy = self.policy(obs)
            noise = estimator.draw(policy)
            prepared = estimator.prepare(policy, noise, CategoricalObjective.from_q(q, alpha))
        inputs, row_loss = estimator.per_state(noise, prepared, alpha)

        def loss(logits, obs_i, *inputs_i):
            return row_loss(CategoricalPolicy(logits(obs_i)), *inputs_i)

        return diagnostics.per_sample_grads(self.actor.logits, loss, obs, *inputs)

    def exact_per_state(self, obs: Tensor, q: Tensor, alpha: Tensor) -> dict[str, Tensor]:
        """The exact ∇θ Σ_a π_a (α log π_a − Q_a) of every state, from the closed form in the
        logits (∂J/∂l = π ⊙ (h − h̄), :func:`closed_form_categorical`) pulled back through
        the network: ∇θ (l_i(θ) · c_i) with c_i = ∂J_i/∂l_i held fixed."""
        with torch.no_grad():
            _, slope = closed_form_categorical(self.actor.logits(obs), -q, alpha)

        def loss(logits, obs_i, slope_i):
            return (logits(obs_i) * slope_i).sum()

        return diagnostics.per_sample_grads(self.actor.logits, loss, obs, slope)

    # ---- state --------------------------------------------------------------------------
    def policy_state_dict(self) -> dict:
        """What acting needs: the actor (see :class:`rlgrad.agent.Agent`)."""
        return {"actor": self.actor.state_dict()}

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "buffer": self.buffer.state_dict(),
            "vector_steps": self.vector_steps,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.buffer.load_state_dict(state["buffer"])
        self.vector_steps, self.updates = int(state["vector_steps"]), int(state["updates"])


def estimator_statistics(
    grads: dict[str, Tensor], exact: dict[str, Tensor], batch_size: int, per_layer: bool = False
) -> dict[str, Tensor]:
    """The ``grad/<e>/...`` statistics of per-state estimates against the exact per-state
    gradients, both {parameter: (n, *shape)} (see :meth:`Agent.diagnose`)."""
    stats = categorical_statistics(tuple(grads.values()), tuple(exact.values()))
    bias_se = 0.0 if stats.variance == 0.0 and stats.bias == 0.0 else stats.bias_stderr
    out = {
        "bias": stats.bias,
        "bias_se": bias_se,
        "bias_noise_floor": stats.noise_floor,
        "variance": stats.variance,
        "cosine_exact": stats.cosine,
    }
    metrics = {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
    moments = diagnostics.GradientMoments.from_per_sample(grads)
    totals = diagnostics.moment_statistics(moments, batch_size=batch_size)
    metrics["variance_total"] = totals.pop("variance")
    metrics.update(totals)
    if per_layer:
        metrics.update(diagnostics.layer_statistics(moments, batch_size=batch_size))
    return metrics
