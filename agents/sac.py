"""Soft Actor-Critic (Haarnoja et al. 2018) with a choice of actor gradient estimator.

Networks: a tanh-Gaussian actor π(a|s) with state-dependent log-std, twin Q-critics evaluated
in one batched call, Polyak-averaged target critics, automatic entropy tuning with target
entropy −dim(A). Defaults are Stable-Baselines3's, so the two can be compared on the same work.

Losses on a replay batch (s, a, r, s', d) with d = terminated:

    critic:  ½ Σ_i (Q_i(s, a) − y)²,   y = r + γ (1 − d) [min_i Q̄_i(s', a') − α log π(a'|s')],
             a' ~ π(·|s')
    actor:   J(θ) = E_s E_{a~πθ}[α log πθ(a|s) − min_i Q_i(s, a)]
    alpha:   −log α · (log π(a|s) + H_target)   (α = exp(log α))

The actor's gradient ∇θ J is estimated either

* ``pathwise`` (SAC as published): a = tanh(μθ(s) + σθ(s) ε), back-propagated through Q and
  log π; or
* ``score``: K actions per state drawn without gradient, h(a) = α log π(a|s) − Q(s, a) and
  ĝ = mean[(h(a) − b) ∇θ log πθ(a|s) + α ∇θ log πθ(a|s)], with b the leave-one-out mean of h
  over the K actions (``score_baseline=loo``), 0 (``none``), or b(s) = −V_ψ(s) (``value``).
  Both are unbiased for ∇θ J: b never depends on the actions it multiplies.

``score_baseline=value`` learns V_ψ(s) ≈ V_soft(s) = E_{a~π}[min_i Q_i(s, a) − α log π(a|s)],
the soft state value (SAC v1's V network), so that −V_ψ(s) ≈ E_a[h(a)] and h − b = h + V_ψ(s) is
minus a soft advantage. After every actor step it takes one Adam step (optimiser
``score_value``) on ½ (V_ψ(s) − (min_i Q_i(s, a) − α log π(a|s)))², a ~ π fresh, critics fixed,
whichever estimator trains the actor (the score estimator is measured by ``diagnose`` in
pathwise runs too). V_ψ at an update has been fitted on earlier batches only.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from rlgrad import diagnostics
from rlgrad.buffers import ReplayBuffer, Transitions
from rlgrad.config import AgentConfig, DiagnosticsConfig
from rlgrad.distributions import TanhGaussian
from rlgrad.envs import EnvSpec
from rlgrad.fused import ensemble_mlp, relu_mlp_heads, relu_trunk, tanh_gaussian_rsample
from rlgrad.learner import Learner
from rlgrad.networks import EnsembleMLP, mlp


class Config(AgentConfig):
    name: Literal["sac"] = "sac"
    hidden_sizes: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    learning_rate: float = Field(3e-4, gt=0)
    buffer_size: int = Field(1_000_000, gt=0)
    batch_size: int = Field(256, gt=0)
    tau: float = Field(0.005, gt=0, le=1)
    gamma: float = Field(0.99, ge=0, le=1)
    train_freq: int = Field(1, gt=0)
    """Vector-env steps between two rounds of updates."""
    gradient_steps: int = Field(1, ge=-1)
    """Updates per round; −1 does as many as env steps were taken."""
    learning_starts: int = Field(100, ge=0)
    """Env steps of uniform random actions before learning begins."""
    ent_coef: float | Literal["auto"] = "auto"
    ent_coef_init: float = Field(1.0, gt=0)
    target_entropy: float | Literal["auto"] = "auto"
    target_update_interval: int = Field(1, gt=0)
    n_critics: int = Field(2, gt=0)
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    actor_estimator: Literal["pathwise", "score"] = "pathwise"
    score_baseline: Literal["none", "loo", "value"] = "loo"
    """Baseline of the score-function estimator: none, leave-one-out mean of h over the K
    actions, or a learned soft state value (see the module docstring)."""
    score_samples: int = Field(8, gt=0)
    """K: actions drawn per state by the score-function estimator."""

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.log_std_min >= self.log_std_max:
            raise ValueError("log_std_min must be below log_std_max")
        if self.score_baseline == "loo" and self.score_samples < 2:
            raise ValueError("score_baseline=loo needs score_samples >= 2")
        return self


class Actor(nn.Module):
    """s ↦ TanhGaussian(μ(s), exp(clamp(log σ(s)))) over actions in (−1, 1)^d."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config):
        super().__init__()
        self.trunk = mlp([obs_dim, *cfg.hidden_sizes], output_activation=True)
        self.mean = nn.Linear(cfg.hidden_sizes[-1], act_dim)
        self.log_std = nn.Linear(cfg.hidden_sizes[-1], act_dim)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def forward(self, obs: torch.Tensor) -> TanhGaussian:
        h = self.trunk(obs)
        log_std = self.log_std(h).clamp(self.log_std_min, self.log_std_max)
        return TanhGaussian.from_log_std(self.mean(h), log_std)

    def rsample_with_log_prob(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``self(obs).rsample_with_log_prob()``: the same values from the same random draw,
        with the hand-written backward passes of :mod:`rlgrad.fused` (ReLU trunks; others take
        the module path). Not for ``torch.func`` transforms: use ``forward`` there."""
        trunk = relu_trunk(self.trunk)
        if trunk is None:
            return self(obs).rsample_with_log_prob()
        mean, raw_log_std = relu_mlp_heads(obs, trunk, (self.mean, self.log_std))
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
        return tanh_gaussian_rsample(mean, raw_log_std, eps, self.log_std_min, self.log_std_max)


class TwinCritic(nn.Module):
    """n Q-functions Q_i(s, a) in one batched call: (B, ·) ↦ (n, B)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config):
        super().__init__()
        self.ensemble = EnsembleMLP(cfg.n_critics, [obs_dim + act_dim, *cfg.hidden_sizes, 1])

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, params: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = torch.cat([obs, actions], -1)
        if type(self.ensemble.activation) is not nn.ReLU:
            return self.ensemble(x, params).squeeze(-1)
        # The ensemble's maths with a hand-written backward (rlgrad.fused; see its docstring).
        if params is None:
            params = [*self.ensemble.weights, *self.ensemble.biases]
        return ensemble_mlp(x, params).squeeze(-1)


class Agent:
    def __init__(
        self, cfg: Config, spec: EnvSpec, learner: Learner, n_envs: int, total_steps: int = 0
    ):
        self.cfg, self.learner, self.n_envs = cfg, learner, n_envs
        self.act_dim = spec.act_dim
        device = learner.device
        self.actor = Actor(spec.obs_dim, spec.act_dim, cfg).to(device)
        self.critic = TwinCritic(spec.obs_dim, spec.act_dim, cfg).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.buffer = ReplayBuffer(cfg.buffer_size, spec.obs_dim, spec.act_dim, device)

        learner.add_optimizer("critic", self.critic.parameters(), cfg.learning_rate)
        learner.add_optimizer("actor", self.actor.parameters(), cfg.learning_rate)
        self.autotune = cfg.ent_coef == "auto"
        init = cfg.ent_coef_init if self.autotune else float(cfg.ent_coef)
        self.log_alpha = torch.tensor(init, device=device).log().requires_grad_(self.autotune)
        if self.autotune:
            learner.add_optimizer("alpha", [self.log_alpha], cfg.learning_rate)
        self.target_entropy = (
            -float(spec.act_dim) if cfg.target_entropy == "auto" else float(cfg.target_entropy)
        )
        self.vector_steps = 0
        self.updates = 0
        # The pathwise update's loss computations, through torch.compile if learner.compile.
        self.compiled = {
            "critic_loss": learner.compile(self.critic_loss),
            "actor_sample": learner.compile(self.actor.rsample_with_log_prob),
            "pathwise_actor_loss": learner.compile(self.pathwise_actor_loss),
        }
        self.score_value: nn.Sequential | None = None  # V_ψ(s) for score_baseline=value
        if cfg.score_baseline == "value":
            self.score_value = mlp([spec.obs_dim, *cfg.hidden_sizes, 1]).to(device)
            learner.add_optimizer("score_value", self.score_value.parameters(), cfg.learning_rate)

    # ---- acting -------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, global_step: int) -> torch.Tensor:
        if global_step < self.cfg.learning_starts:
            return torch.rand(obs.shape[0], self.act_dim, device=obs.device) * 2.0 - 1.0
        return self.actor(obs).sample()

    @torch.no_grad()
    def act_deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs).mode

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        self.buffer.add(obs, actions, rewards, next_obs, terminated, truncated)

    # ---- learning -----------------------------------------------------------------------
    def update(self, global_step: int) -> dict[str, torch.Tensor]:
        self.vector_steps += 1
        if global_step <= self.cfg.learning_starts or self.vector_steps % self.cfg.train_freq:
            return {}
        n_updates = self.cfg.gradient_steps
        if n_updates == -1:
            n_updates = self.cfg.train_freq * self.n_envs
        metrics: dict[str, torch.Tensor] = {}
        for _ in range(n_updates):
            self.learner.mark_step()
            metrics = self.update_once(self.buffer.sample(self.cfg.batch_size))
        return metrics

    def update_once(self, batch: Transitions) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        alpha = self.log_alpha.detach().exp()

        # The actor's actions on the batch states serve the alpha loss and, when pathwise,
        # the actor loss (one forward pass, as in SB3).
        policy = None
        if cfg.actor_estimator == "pathwise":
            actions_pi, log_prob_pi = self.compiled["actor_sample"](batch.obs)
        else:
            policy = self.actor(batch.obs)
            actions_pi, log_prob_pi = policy.rsample_with_log_prob()
        if policy is None and self.score_value is not None:
            policy = self.actor(batch.obs)  # θ before this update's actor step

        metrics: dict[str, torch.Tensor] = {"charts/alpha": alpha}
        if self.autotune:
            alpha_loss = -(self.log_alpha * (log_prob_pi.detach() + self.target_entropy)).mean()
            self.learner.step("alpha", alpha_loss)
            metrics["losses/alpha"] = alpha_loss.detach()

        critic_loss, q_mean = self.compiled["critic_loss"](batch, alpha)
        self.learner.step("critic", critic_loss)

        if cfg.actor_estimator == "pathwise":
            actor_loss = self.compiled["pathwise_actor_loss"](
                batch.obs, actions_pi, log_prob_pi, alpha
            )
        else:
            assert policy is not None
            actor_loss = self.score_actor_loss(batch.obs, policy, alpha)
        self.learner.step("actor", actor_loss)
        if self.score_value is not None:
            metrics["losses/score_value"] = self.fit_score_value(batch.obs, policy, alpha)

        self.updates += 1
        if self.updates % cfg.target_update_interval == 0:
            online = list(self.critic.parameters())
            torch._foreach_lerp_(list(self.critic_target.parameters()), online, cfg.tau)
        metrics.update(
            {
                "losses/critic": critic_loss.detach(),
                "losses/actor": actor_loss.detach(),
                "losses/q_mean": q_mean,
                "losses/entropy": -log_prob_pi.detach().mean(),
            }
        )
        return metrics

    def critic_loss(
        self, batch: Transitions, alpha: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """½ Σ_i mean (Q_i(s, a) − y)², y the soft Bellman target from the target critics."""
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.rsample_with_log_prob(batch.next_obs)
            next_q = self.critic_target(batch.next_obs, next_actions).min(0).values
            soft_next_v = next_q - alpha * next_log_prob
            target = batch.rewards + self.cfg.gamma * (~batch.terminated) * soft_next_v
        q = self.critic(batch.obs, batch.actions)
        loss = 0.5 * (q - target).pow(2).mean(-1).sum()
        return loss, q.detach().mean()

    def frozen_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """min_i Q_i(s, a) with the critics' weights held fixed (no weight gradients)."""
        return self.critic(obs, actions, self.critic.ensemble.detached_params()).min(0).values

    def pathwise_actor_loss(
        self, obs: torch.Tensor, actions: torch.Tensor, log_prob: torch.Tensor, alpha: torch.Tensor
    ) -> torch.Tensor:
        """mean[α log π(a|s) − min_i Q_i(s, a)], a reparameterized."""
        return (alpha * log_prob - self.frozen_q(obs, actions)).mean()

    def score_actor_loss(
        self, obs: torch.Tensor, policy: TanhGaussian, alpha: torch.Tensor
    ) -> torch.Tensor:
        """A surrogate whose gradient is the score-function estimate of ∇θ J (see module doc)."""
        with torch.no_grad():
            u = policy.rsample_pre_tanh((self.cfg.score_samples,))  # (K, B, d), no gradient
            advantage = self._score_advantage(obs, policy, u, alpha)
        log_prob = policy.log_prob_pre_tanh(u)  # (K, B), differentiable in θ
        return ((advantage + alpha) * log_prob).mean()

    def _score_advantage(
        self, obs: torch.Tensor, policy: TanhGaussian, u: torch.Tensor, alpha: torch.Tensor
    ) -> torch.Tensor:
        """h(a) − b for K pre-tanh draws u (K, B, d): h = α log π(a|s) − min Q(s, a).

        On CPU the K·B critic rows go in calls of about 512 rows: the (n, rows, hidden)
        activations then stay in cache, about twice as fast as one call (elsewhere: one call).
        """
        k, b = u.shape[:2]
        actions = torch.tanh(u)
        per_call = k if obs.device.type != "cpu" else max(1, 512 // b)
        q = torch.cat(
            [
                self.frozen_q(
                    obs.expand(len(chunk), *obs.shape).reshape(-1, obs.shape[-1]),
                    chunk.reshape(-1, self.act_dim),
                ).view(len(chunk), b)
                for chunk in actions.split(per_call)
            ]
        )
        h = alpha * policy.log_prob_pre_tanh(u) - q
        if self.cfg.score_baseline == "loo":
            h = h - (h.sum(0, keepdim=True) - h) / (k - 1)
        elif self.cfg.score_baseline == "value":  # b(s) = −V_ψ(s)
            assert self.score_value is not None
            h = h + self.score_value(obs).squeeze(-1)
        return h

    def fit_score_value(
        self, obs: torch.Tensor, policy: TanhGaussian, alpha: torch.Tensor
    ) -> torch.Tensor:
        """One step on ½ mean (V_ψ(s) − (min Q(s, a) − α log π(a|s)))², a ~ π(·|s) fresh.

        ``policy`` is π(·|s) for ``obs``; nothing flows back into it or into the critics."""
        assert self.score_value is not None
        with torch.no_grad():
            u = policy.rsample_pre_tanh()
            target = self.frozen_q(obs, torch.tanh(u)) - alpha * policy.log_prob_pre_tanh(u)
        loss = 0.5 * (self.score_value(obs).squeeze(-1) - target).pow(2).mean()
        self.learner.step("score_value", loss)
        return loss.detach()

    # ---- diagnostics --------------------------------------------------------------------
    @property
    def measurement_batch(self) -> int:
        """States per measurement when ``diagnostics.batch`` is unset: half the training batch.

        The score half costs K critic evaluations per state (K·B = 2048 rows at the defaults,
        about the arithmetic of a whole update), so half the states keep a measurement every 10
        updates within 10 % of training time; ``batch_variance`` and ``snr`` still describe the
        training batch (see :func:`rlgrad.diagnostics.moment_statistics`)."""
        return max(2, self.cfg.batch_size // 2)

    def diagnose(self, cfg: DiagnosticsConfig) -> dict[str, torch.Tensor]:
        """Both actor-gradient estimators measured on the same states, critic and policy.

        Pathwise: one estimate per (state, ε) draw. Score: one estimate per state, from its K
        actions with the configured baseline (what one state contributes to the training loss).
        ``batch_variance`` and ``snr`` are those of the training batch's estimate (tr Σ̂ / B with
        B = ``agent.batch_size``), whatever ``cfg.batch`` the moments were measured on.
        Their moments come from :meth:`gradient_moments` (no per-sample gradient matrix). Both
        estimate the same ∇θ J, so one reference g_ref serves both ``cosine_reference`` values:
        the pathwise gradient on ``cfg.reference_batch`` other states (one batched backward),
        taken when the ``cfg.interval`` updates up to this measurement cross a multiple of
        ``cfg.reference_interval`` (a rule of the update count alone: a resumed run takes its
        references where the uninterrupted one does).
        """
        alpha = self.log_alpha.detach().exp()
        obs = self.buffer.sample(cfg.batch or self.measurement_batch).obs
        moments = self.gradient_moments(obs, alpha)
        reference = None
        every, since = cfg.reference_interval, max(cfg.interval or 1, 1)
        if every and (self.updates - since) // every != self.updates // every:
            ref_obs = self.buffer.sample(cfg.reference_batch).obs
            reference = self.reference_gradient(ref_obs, alpha)
        metrics: dict[str, torch.Tensor] = {}
        for name, m in moments.items():
            stats = diagnostics.moment_statistics(m, reference, batch_size=self.cfg.batch_size)
            metrics.update(diagnostics.prefixed(f"grad/{name}", stats))
            if cfg.per_layer:
                layers = diagnostics.layer_statistics(m, batch_size=self.cfg.batch_size)
                metrics.update(diagnostics.prefixed(f"grad/{name}", layers))
        metrics["grad/cosine_score_pathwise"] = diagnostics.cosine(
            moments["score"].mean(), moments["pathwise"].mean()
        )
        metrics["grad/variance_ratio_score_over_pathwise"] = (
            metrics["grad/score/variance"] / metrics["grad/pathwise/variance"]
        )
        return metrics

    def gradient_moments(
        self, obs: torch.Tensor, alpha: torch.Tensor
    ) -> dict[str, diagnostics.GradientMoments]:
        """Per-sample gradient moments of both estimators on ``obs``: one actor forward, one
        backward per estimator, per-sample norms from :class:`rlgrad.diagnostics.LinearTape`.

        Per-sample losses (θ-gradients of these are the rows of :meth:`pathwise_per_sample` and
        :meth:`score_per_sample`, whose draws these repeat: ε (B, d), then u (K, B, d)):

            pathwise: ℓ_i = α log π(a_i|s_i) − min Q(s_i, a_i),  a_i = tanh(μ(s_i) + σ(s_i) ε_i)
            score:    ℓ_i = (1/K) Σ_k (h_ik − b_ik + α) log πθ(a_ik|s_i),  h − b held fixed

        with the critics' weights fixed (only the actions carry θ into Q).
        """
        with torch.enable_grad():
            with diagnostics.LinearTape(self.actor) as tape:
                policy = self.actor(obs)
            eps = torch.randn(obs.shape[0], self.act_dim, device=obs.device)
            u_pathwise = policy.mean + policy.std * eps
            pathwise = alpha * policy.log_prob_pre_tanh(u_pathwise) - self.frozen_q(
                obs, torch.tanh(u_pathwise)
            )
            with torch.no_grad():
                u = policy.rsample_pre_tanh((self.cfg.score_samples,))  # (K, B, d)
                advantage = self._score_advantage(obs, policy, u, alpha)  # (K, B)
            score = ((advantage + alpha) * policy.log_prob_pre_tanh(u)).mean(0)
            return {
                "pathwise": tape.moments(pathwise, retain_graph=True),
                "score": tape.moments(score),
            }

    def reference_gradient(self, obs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """∇θ J by the pathwise estimator on ``obs``, flat in ``named_parameters`` order (one
        batched backward, through the update's own fast sampler)."""
        with torch.enable_grad():
            actions, log_prob = self.actor.rsample_with_log_prob(obs)
            loss = self.pathwise_actor_loss(obs, actions, log_prob, alpha)
            return diagnostics.batch_gradient(self.actor, loss)

    def pathwise_per_sample(self, obs: torch.Tensor, alpha: torch.Tensor) -> dict:
        """∇θ [α log π(a_i|s_i) − min Q(s_i, a_i)], a_i = tanh(μ(s_i) + σ(s_i) ε_i), per row.

        The critic's weights are fixed here, so ∇θ Q(s_i, a_i(θ)) = (∂Q/∂a)_i · ∂a_i/∂θ: one
        batched backward gives every row's ∂Q/∂a, and the per-sample loss uses the linear term
        −(∂Q/∂a)_i · a_i(θ), whose θ-gradient is the same, instead of vmapping the critic.
        """
        eps = torch.randn(obs.shape[0], self.act_dim, device=obs.device)
        with torch.enable_grad():
            policy = self.actor(obs)
            action = torch.tanh(policy.mean + policy.std * eps).detach().requires_grad_(True)
            (dq_da,) = torch.autograd.grad(self.frozen_q(obs, action).sum(), action)

        def loss(actor, obs_i, eps_i, dq_da_i):
            policy = actor(obs_i)
            u = policy.mean + policy.std * eps_i
            return (alpha * policy.log_prob_pre_tanh(u) - (dq_da_i * torch.tanh(u)).sum(-1)).sum()

        return diagnostics.per_sample_grads(self.actor, loss, obs, eps, dq_da)

    def score_per_sample(self, obs: torch.Tensor, alpha: torch.Tensor) -> dict:
        """Per state: mean_k [(h_k − b_k + α) ∇θ log π(a_k|s)] over its K sampled actions."""
        k = self.cfg.score_samples
        with torch.no_grad():
            policy = self.actor(obs)
            u = policy.rsample_pre_tanh((k,))  # (K, B, d)
            advantage = self._score_advantage(obs, policy, u, alpha)  # (K, B)

        def loss(actor, obs_i, u_i, adv_i):  # (1, obs), (1, K, d), (1, K)
            log_prob = actor(obs_i).log_prob_pre_tanh(u_i.transpose(0, 1))  # (K, 1)
            return ((adv_i.transpose(0, 1) + alpha) * log_prob).mean()

        return diagnostics.per_sample_grads(
            self.actor, loss, obs, u.transpose(0, 1), advantage.transpose(0, 1)
        )

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "buffer": self.buffer.state_dict(),
            "vector_steps": self.vector_steps,
            "updates": self.updates,
            "score_value": self.score_value.state_dict() if self.score_value is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.buffer.load_state_dict(state["buffer"])
        self.vector_steps, self.updates = int(state["vector_steps"]), int(state["updates"])
        if self.score_value is not None:
            self.score_value.load_state_dict(state["score_value"])
