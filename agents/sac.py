"""Soft Actor-Critic (Haarnoja et al. 2018) with a choice of actor gradient estimator.

Networks: a tanh-Gaussian actor π(a|s) with state-dependent log-std, twin Q-critics evaluated
in one batched call, Polyak-averaged target critics, automatic entropy tuning with target
entropy −dim(A). Defaults are Stable-Baselines3's, so the two can be compared on the same work.

Losses on a replay batch (s, a, r, s', d) with d = terminated:

    critic:  ½ Σ_i (Q_i(s, a) − y)²,   y = r + γ (1 − d) [min_i Q̄_i(s', a') − α log π(a'|s')],
             a' ~ π(·|s')
    actor:   J(θ) = E_s E_{a~πθ}[α log πθ(a|s) − min_i Q_i(s, a)]
    alpha:   −log α · (log π(a|s) + H_target)   (α = exp(log α))

The actor's gradient ∇θ J is estimated by an estimator object from ``rlgrad.estimators``
(``agent.actor_estimator``), the plug-in point for new estimators. With h(s, a) = α log π(a|s)
− min_i Q_i(s, a) and the critics' weights fixed (:meth:`Agent.actor_objective`), each
estimator turns noise ε into one surrogate row per state whose θ-gradient is that state's
estimate, and the actor steps on their mean (:meth:`Agent.update_once`):

* ``pathwise`` (SAC as published): a = tanh(μθ(s) + σθ(s) ε), one per state, the same draw as
  α's loss; row ℓ = α log πθ(a|s) + g · a(θ), g = −∂ min Q/∂a at the draw (the same θ-gradient
  as α log π(a(θ)|s) − min Q(s, a(θ)));
* ``score``: K actions per state drawn without gradient, ℓ = mean_k (h_k − b_k + α) log πθ(a_k|s)
  with h − b held fixed and b the leave-one-out mean of h over the K actions
  (``score_baseline=loo``), 0 (``none``), or b(s) = −V_ψ(s) (``value``).
  Both are unbiased for ∇θ J: b never depends on the actions it multiplies.

``diagnose`` measures both estimators on the same states from the same row losses.

The formulas are the code of this file and of ``rlgrad.distributions`` (tanh-Gaussian
density, :func:`~rlgrad.distributions.squashed_gaussian_sample`) and ``rlgrad.networks``
(``mlp_heads``, ``EnsembleMLP``). ``learner.kernels`` may run the actor's heads, the sample
and the critics through fused stand-ins registered against exactly those functions
(``rlgrad.kernels``, checked by tests/test_kernels.py); ``learner.kernels=reference`` trains
through the references alone.

``score_baseline=value`` learns V_ψ(s) ≈ V_soft(s) = E_{a~π}[min_i Q_i(s, a) − α log π(a|s)],
the soft state value (SAC v1's V network), so that −V_ψ(s) ≈ E_a[h(a)] and h − b = h + V_ψ(s) is
minus a soft advantage. After every actor step it takes one Adam step (optimiser
``score_value``) on ½ (V_ψ(s) − (min_i Q_i(s, a) − α log π(a|s)))², a ~ π fresh, critics fixed,
whichever estimator trains the actor (the score estimator is measured by ``diagnose`` in
pathwise runs too). V_ψ at an update has been fitted on earlier batches only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from rlgrad import diagnostics
from rlgrad.buffers import ReplayBuffer, Transitions
from rlgrad.config import AgentConfig, DiagnosticsConfig
from rlgrad.distributions import TanhGaussian, squashed_gaussian_sample
from rlgrad.envs import EnvSpec
from rlgrad.estimators import (
    ActionObjective,
    Mixed,
    Pathwise,
    PolicyGradientEstimator,
    ScoreFunction,
    SquashedGaussianPolicy,
)
from rlgrad.learner import Learner
from rlgrad.networks import EnsembleMLP, mlp, mlp_heads
from rlgrad.off_policy import polyak_update, replay_updates


class Config(AgentConfig):
    name: Literal["sac"] = "sac"
    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [256, 256], min_length=1)
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
    actor_estimator: Literal["pathwise", "score", "mixed"] = "pathwise"
    """The actor's gradient estimator (``rlgrad.estimators``): ``mixed`` weights the pathwise
    and score-function estimates per actor layer by inverse variance (see ``mix_interval``)."""
    score_baseline: Literal["none", "loo", "value", "optimal"] = "loo"
    """Baseline of the score-function estimator: none, leave-one-out mean of h over the K
    actions, a learned soft state value, or the optimal constant per parameter of π(·|s)
    (leave-one-out over the K actions; see the module docstring)."""
    score_samples: int = Field(8, gt=0)
    """K: actions drawn per state by the score-function estimator."""
    mix_interval: int = Field(1000, gt=0)
    """``actor_estimator=mixed``: updates between two refreshes of the per-layer weights, each
    from a measurement of both estimators on states and draws of its own (the first before the
    first update; until then pathwise alone)."""

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.log_std_min >= self.log_std_max:
            raise ValueError("log_std_min must be below log_std_max")
        if self.score_baseline in ("loo", "optimal") and self.score_samples < 2:
            raise ValueError(f"score_baseline={self.score_baseline} needs score_samples >= 2")
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
        """The reference: what acting, ``torch.func`` and the diagnostics evaluate."""
        mean, raw_log_std = mlp_heads(self.trunk, (self.mean, self.log_std), obs)
        log_std = raw_log_std.clamp(self.log_std_min, self.log_std_max)
        return TanhGaussian.from_log_std(mean, log_std)


class TwinCritic(nn.Module):
    """n Q-functions Q_i(s, a) in one batched call: (B, ·) ↦ (n, B).

    ``ensemble_forward`` evaluates the ensemble: ``EnsembleMLP.forward`` (the module) unless
    the agent binds a kernel in its place (see ``Agent.__init__``)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config):
        super().__init__()
        self.ensemble = EnsembleMLP(cfg.n_critics, [obs_dim + act_dim, *cfg.hidden_sizes, 1])
        self.ensemble_forward: Callable[..., torch.Tensor] | None = None

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, params: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        forward = self.ensemble_forward or self.ensemble
        return forward(torch.cat([obs, actions], -1), params).squeeze(-1)


def _layer_of(parameter: str) -> str:
    """``trunk.0.weight`` → ``trunk.0``: the layer a parameter tensor belongs to."""
    return parameter.rsplit(".", 1)[0]


_ACTOR_HEADS = ("mean", "log_std")
"""The actor's output layers (:class:`Actor`): its loss depends on θ only through them."""

Drawn = tuple[torch.Tensor, dict[str, torch.Tensor]]
"""One estimator's draws for a measurement: its noise and its prepared draw losses."""


@dataclass
class ActorMeasurement:
    """One measurement of the actor's estimators (:meth:`Agent.measure`)."""

    moments: dict[str, diagnostics.GradientMoments] = field(default_factory=dict)
    deltas: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    cross: dict[str, torch.Tensor] = field(default_factory=dict)
    tail_share: dict[str, torch.Tensor] = field(default_factory=dict)


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

        # The training path's networks and sample: the references above, or the fused
        # stand-ins rlgrad.kernels registers for them, as learner.kernels selects.
        self.actor_heads = learner.kernel(
            mlp_heads, self.actor.trunk, (self.actor.mean, self.actor.log_std)
        )
        self.squashed_sample = learner.kernel(squashed_gaussian_sample)
        for critic in (self.critic, self.critic_target):
            critic.ensemble_forward = learner.kernel(EnsembleMLP.forward, critic.ensemble)

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
        self.score_value: nn.Sequential | None = None  # V_ψ(s) for score_baseline=value
        if cfg.score_baseline == "value":
            self.score_value = mlp([spec.obs_dim, *cfg.hidden_sizes, 1]).to(device)
            learner.add_optimizer("score_value", self.score_value.parameters(), cfg.learning_rate)

        # The actor's gradient estimators (rlgrad.estimators): ``estimator`` trains the actor,
        # and ``diagnose`` measures both on the same states.
        pathwise = Pathwise()
        score = ScoreFunction(cfg.score_samples, cfg.score_baseline, self.state_value)
        self.estimators: dict[str, PolicyGradientEstimator] = {"pathwise": pathwise, "score": score}
        self.mixed: Mixed | None = None
        if cfg.actor_estimator == "mixed":
            self.mixed = Mixed(pathwise, score, dict(self.actor.named_parameters()))
        self.estimator = self.mixed or self.estimators[cfg.actor_estimator]
        # The update's loss computations, through torch.compile if learner.compile.
        self.compiled = {
            "critic_loss": learner.compile(self.critic_loss),
            "actor_loss": learner.compile(self.estimator.loss),
        }

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
    def policy(self, obs: torch.Tensor) -> SquashedGaussianPolicy:
        """π(·|s) on the training path: the actor's heads and sample through the bound kernels
        (the same values as ``self.actor(obs)``)."""
        mean, raw_log_std = self.actor_heads(obs)
        return SquashedGaussianPolicy(
            mean, raw_log_std, self.cfg.log_std_min, self.cfg.log_std_max, self.squashed_sample
        )

    def actor_objective(self, obs: torch.Tensor, alpha: torch.Tensor) -> ActionObjective:
        """h(s, a) = α log π(a|s) − min_i Q_i(s, a), the critics' weights held fixed."""
        return ActionObjective(lambda actions: -self.frozen_q(obs, actions), alpha, obs)

    def update(self, global_step: int, measure: bool = False) -> dict[str, torch.Tensor]:
        """The updates due at this vector step (:func:`rlgrad.off_policy.replay_updates`)."""
        return replay_updates(self, global_step)

    def update_once(self, batch: Transitions) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        alpha = self.log_alpha.detach().exp()

        # π(·|s) on the batch states and one reparameterized action per state, for α's loss
        # (and the pathwise estimator's draw, as in SB3).
        policy = self.policy(batch.obs)
        eps = torch.randn(policy.mean.shape, dtype=policy.mean.dtype, device=policy.mean.device)
        sample = policy.rsample(eps)  # (a(θ), log π(a(θ)|s)), its graph kept for pathwise
        log_prob_pi = sample[1].detach()

        metrics: dict[str, torch.Tensor] = {"charts/alpha": alpha}
        if self.autotune:
            alpha_loss = -(self.log_alpha * (log_prob_pi + self.target_entropy)).mean()
            self.learner.step("alpha", alpha_loss)
            metrics["losses/alpha"] = alpha_loss.detach()

        critic_loss, q_mean = self.compiled["critic_loss"](batch, alpha)
        self.learner.step("critic", critic_loss)
        if self.mixed is not None and self.updates % cfg.mix_interval == 0:
            self.refresh_mixing_weights(alpha)

        # The actor: the configured estimator of ∇θ E_s E_a[α log π(a|s) − min Q(s, a)].
        noise = self.estimator.draw(policy, reuse=eps)
        objective = self.actor_objective(batch.obs, alpha)
        actor_loss, objective_value = self.compiled["actor_loss"](policy, noise, objective, sample)
        self.learner.step("actor", actor_loss)
        if self.score_value is not None:
            metrics["losses/score_value"] = self.fit_score_value(batch.obs, policy, alpha)

        self.updates += 1
        if self.updates % cfg.target_update_interval == 0:
            polyak_update(self.critic_target, self.critic, cfg.tau)
        metrics.update(
            {
                "losses/critic": critic_loss.detach(),
                "losses/actor": objective_value.detach(),
                "train/q_mean": q_mean,
                "train/entropy": -log_prob_pi.mean(),
            }
        )
        return metrics

    def critic_loss(
        self, batch: Transitions, alpha: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """½ Σ_i mean (Q_i(s, a) − y)², y the soft Bellman target from the target critics."""
        with torch.no_grad():
            next_policy = self.policy(batch.next_obs)
            eps = torch.randn(
                next_policy.mean.shape, dtype=next_policy.mean.dtype, device=next_policy.mean.device
            )
            next_actions, next_log_prob = next_policy.rsample(eps)
            next_q = self.critic_target(batch.next_obs, next_actions).min(0).values
            soft_next_v = next_q - alpha * next_log_prob
            target = batch.rewards + self.cfg.gamma * (~batch.terminated) * soft_next_v
        q = self.critic(batch.obs, batch.actions)
        loss = 0.5 * (q - target).pow(2).mean(-1).sum()
        return loss, q.detach().mean()

    def frozen_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """min_i Q_i(s, a) with the critics' weights held fixed (no weight gradients).

        ``actions`` (B, d) or (K, B, d) for K actions per state: those go through the critics
        as K·B rows, on CPU in calls of about 512 rows, so that the (n, rows, hidden)
        activations stay in cache (elsewhere in one call; experiments/README.md)."""
        params = self.critic.ensemble.detached_params()
        if actions.dim() == obs.dim():
            return self.critic(obs, actions, params).min(0).values
        k, b = actions.shape[:2]
        per_call = k if obs.device.type != "cpu" else max(1, 512 // b)
        return torch.cat(
            [
                self.critic(
                    obs.expand(len(chunk), *obs.shape).reshape(-1, obs.shape[-1]),
                    chunk.reshape(-1, actions.shape[-1]),
                    params,
                )
                .min(0)
                .values.view(len(chunk), b)
                for chunk in actions.split(per_call)
            ]
        )

    def state_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V_ψ(s), (B,): the score function's learned baseline (``score_baseline=value``)."""
        assert self.score_value is not None, "score_baseline=value is not configured"
        return self.score_value(obs).squeeze(-1)

    def fit_score_value(
        self, obs: torch.Tensor, policy: SquashedGaussianPolicy, alpha: torch.Tensor
    ) -> torch.Tensor:
        """One step on ½ mean (V_ψ(s) − (min Q(s, a) − α log π(a|s)))², a ~ π(·|s) fresh.

        ``policy`` is π(·|s) for ``obs``; nothing flows back into it or into the critics."""
        assert self.score_value is not None
        with torch.no_grad():
            u = policy.pre_tanh(torch.randn_like(policy.mean))
            target = self.frozen_q(obs, torch.tanh(u)) - alpha * policy.log_prob_pre_tanh(u)
        loss = 0.5 * (self.state_value(obs) - target).pow(2).mean()
        self.learner.step("score_value", loss)
        return loss.detach()

    # ---- diagnostics --------------------------------------------------------------------
    def default_diagnostics_interval(self) -> int:
        """Every 100 updates (a few per cent of training time at the default sizes)."""
        return 100

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
        measurement = self.measure(obs, alpha)
        moments = measurement.moments
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
        for name, share in measurement.tail_share.items():
            metrics[f"grad/{name}/tail_share"] = share
        estimators = {**self.estimators, **({"mixed": self.mixed} if self.mixed else {})}
        for name, estimator in estimators.items():
            metrics[f"grad/{name}/critic_evaluations"] = torch.tensor(
                float(estimator.critic_evaluations_per_state)
            )
        if self.mixed is not None:
            for name, w in self.mixed.weights.items():
                if name.endswith(".weight"):
                    metrics[f"grad/mixed/weight_pathwise/{_layer_of(name)}"] = torch.tensor(w)
        return metrics

    def gradient_moments(
        self, obs: torch.Tensor, alpha: torch.Tensor
    ) -> dict[str, diagnostics.GradientMoments]:
        """Per-sample gradient moments of both estimators on ``obs`` (see :meth:`measure`)."""
        return self.measure(obs, alpha).moments

    def measure(self, obs: torch.Tensor, alpha: torch.Tensor) -> ActorMeasurement:
        """Both estimators on ``obs`` from their draw losses: one actor forward (the reference
        modules) through :class:`rlgrad.diagnostics.LinearTape`, which gives the per-sample
        norms without per-sample gradients; the cross sums of the paired per-state estimates
        (for mixing weights); and each estimator's tail share over its draws (for the score
        function, the norm of each draw's own gradient). The draws are those of
        :meth:`per_state_gradients`: ε (B, d) for pathwise, then (K, B, d) for score.

        The gradients at the actor's layers come through its heads (:meth:`_through_heads`:
        2d backward passes through the actor, whatever K is) or, where 2d exceeds the K + 2
        passes of the direct way, from those (:meth:`_direct`)."""
        with torch.enable_grad():
            tape, policy, drawn = self.measurement_draws(obs, alpha)
            passes = sum(1 + (len(noise) if noise.dim() > 2 else 0) for noise, _ in drawn.values())
            if 2 * self.act_dim <= passes:
                out, draw_sq = self._through_heads(tape, drawn, alpha)
            else:
                out, draw_sq = self._direct(tape, policy, drawn, alpha)
            for name, (noise, prepared) in drawn.items():
                rows = out.moments[name].row_sq if draw_sq[name] is None else draw_sq[name]
                assert rows is not None
                unlikely = self.estimators[name].unlikeliness(noise, prepared)
                out.tail_share[name] = diagnostics.tail_share(rows, unlikely)
            if self.mixed is not None:
                weights = {name: self.mixed.weights[name] for name in out.cross}
                mixed = {
                    layer: w * out.deltas["pathwise"][layer]
                    + (1.0 - w) * out.deltas["score"][layer]
                    for layer in out.deltas["pathwise"]
                    for w in [weights[f"{layer}.weight"]]
                }
                out.moments["mixed"] = tape.moments_from(mixed)
        return out

    def measurement_draws(
        self, obs: torch.Tensor, alpha: torch.Tensor
    ) -> tuple[diagnostics.LinearTape, SquashedGaussianPolicy, dict[str, Drawn]]:
        """One taped actor forward on ``obs`` and each estimator's draws with its prepared
        losses: ``(tape, policy, {name: (noise, prepared)})``. Call under ``enable_grad``."""
        objective = self.measurement_objective(obs, alpha)
        with diagnostics.LinearTape(self.actor) as tape:
            policy = SquashedGaussianPolicy.of(self.actor(obs))
        drawn = {}
        for name, estimator in self.estimators.items():
            noise = estimator.draw(policy)
            drawn[name] = (noise, estimator.prepare(policy, noise, objective))
        return tape, policy, drawn

    def measurement_objective(self, obs: torch.Tensor, alpha: torch.Tensor) -> ActionObjective:
        """h(s, a) of :meth:`actor_objective`, the same values, with K actions per state sent
        through the critics in calls of at most ``batch_size`` rows on CPU: the size of the
        update's own critic calls, whose memory the allocator holds between updates (the
        activations of larger calls were fresh pages at every measurement, ≈ 1 ms at the
        defaults; experiments/README.md)."""
        if obs.device.type != "cpu":
            return self.actor_objective(obs, alpha)
        b = obs.shape[0]
        per_call = max(1, self.cfg.batch_size // b)
        params = self.critic.ensemble.detached_params()
        repeated = obs.repeat(per_call, 1)  # the states of per_call draws, draw-major

        def f(actions: torch.Tensor) -> torch.Tensor:
            if actions.dim() == obs.dim():
                return -self.critic(obs, actions, params).min(0).values
            values = [
                self.critic(repeated[: len(chunk) * b], chunk.reshape(-1, chunk.shape[-1]), params)
                .min(0)
                .values.view(len(chunk), b)
                for chunk in actions.split(per_call)
            ]
            return -torch.cat(values)

        return ActionObjective(f, alpha, obs)

    def _through_heads(
        self,
        tape: diagnostics.LinearTape,
        drawn: dict[str, Drawn],
        alpha: torch.Tensor,
    ) -> tuple[ActorMeasurement, dict[str, torch.Tensor | None]]:
        """Both estimators' moments, deltas and cross sums, and for K draws per state ‖g‖² of
        each draw's own gradient ((K, B); None for one draw per state, whose row norms are the
        moments' ``row_sq``).

        The actor's loss depends on θ only through its heads' outputs (μ and raw log σ, the
        :class:`Actor`'s ``mean`` and ``log_std`` layers), so the per-row Jacobians of the heads
        (:class:`rlgrad.diagnostics.HeadJacobians`, 2d backward passes of B rows) turn each
        draw's head cotangent c = ∂ℓ/∂(μ, raw log σ) into its gradients at every layer. The draw
        losses are taken on copies of the heads' outputs, one per draw ((K, B, d) for K draws),
        through ``Actor.forward``'s arithmetic (clamp, then :class:`TanhGaussian`): one backward
        of that small graph gives every draw's c."""
        heads = tape.heads(_ACTOR_HEADS)
        mean, raw_log_std = (z.detach() for z in heads.outputs)
        leaves, total = [], None
        for name, (noise, prepared) in drawn.items():
            shape = (*noise.shape[:-1], mean.shape[-1])
            pair = (
                mean.expand(shape).clone().requires_grad_(),
                raw_log_std.expand(shape).clone().requires_grad_(),
            )
            log_std = pair[1].clamp(self.cfg.log_std_min, self.cfg.log_std_max)
            policy = SquashedGaussianPolicy.of(TanhGaussian.from_log_std(pair[0], log_std))
            loss = self.estimators[name].draw_losses(policy, noise, prepared, alpha).sum()
            total = loss if total is None else total + loss
            leaves.append(pair)
        assert total is not None
        grads = torch.autograd.grad(total, [t for pair in leaves for t in pair])
        per_state, draw_sq = [], {}
        for i, (name, (noise, _)) in enumerate(drawn.items()):
            c = torch.cat(grads[2 * i : 2 * i + 2], dim=-1)  # (B, 2d) or (K, B, 2d)
            several = noise.dim() > 2
            per_state.append(c.mean(0) if several else c)
            draw_sq[name] = heads.row_norms_sq(c.transpose(0, 1)).T if several else None
        return self._paired(tape, drawn, heads.deltas(torch.stack(per_state, dim=1))), draw_sq

    def _paired(
        self,
        tape: diagnostics.LinearTape,
        drawn: dict[str, Drawn],
        deltas: dict[str, torch.Tensor],
    ) -> ActorMeasurement:
        """The estimators' moments and cross sums from their stacked deltas (B, E, out), in the
        order of ``drawn`` (:meth:`rlgrad.diagnostics.LinearTape.paired_moments`)."""
        paired = tape.paired_moments(deltas)
        out = ActorMeasurement()
        for e, name in enumerate(drawn):
            out.moments[name] = paired.moments[e]
            out.deltas[name] = {layer: d[:, e] for layer, d in deltas.items()}
        first, second = (list(drawn).index(n) for n in ("pathwise", "score"))
        out.cross = {k: v[first, second] for k, v in paired.cross.items()}
        return out

    def _direct(
        self,
        tape: diagnostics.LinearTape,
        policy: SquashedGaussianPolicy,
        drawn: dict[str, Drawn],
        alpha: torch.Tensor,
    ) -> tuple[ActorMeasurement, dict[str, torch.Tensor | None]]:
        """As :meth:`_through_heads`, by backward passes through the actor from the draw losses
        on the taped ``policy``: one per estimator, and one batched over the K draws."""
        per_state, draw_sq = [], {}
        for name, (noise, prepared) in drawn.items():
            losses = self.estimators[name].draw_losses(policy, noise, prepared, alpha)
            several = losses.dim() > 1
            per_state.append(tape.deltas(losses.mean(0) if several else losses, retain_graph=True))
            draw_sq[name] = (
                tape.row_norms_sq(tape.deltas(losses, retain_graph=True)) if several else None
            )
        stacked = {layer: torch.stack([d[layer] for d in per_state], 1) for layer in per_state[0]}
        return self._paired(tape, drawn, stacked), draw_sq

    def refresh_mixing_weights(self, alpha: torch.Tensor) -> None:
        """Per actor layer, the inverse-variance weight of the pathwise estimate, from a
        measurement on ``measurement_batch`` states sampled for it (independent of the training
        batches the weights will multiply, so the mixed estimate stays unbiased)."""
        assert self.mixed is not None
        obs = self.buffer.sample(self.measurement_batch).obs
        m = self.measure(obs, alpha)
        per_layer = diagnostics.mixing_weights_from(
            m.moments["pathwise"], m.moments["score"], m.cross, group=_layer_of
        )
        self.mixed.weights = {
            name: float(per_layer[_layer_of(name)]) for name in self.mixed.weights
        }

    def reference_gradient(self, obs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """∇θ J by the pathwise estimator on ``obs``, flat in ``named_parameters`` order (one
        batched backward, through the training path's kernels)."""
        pathwise = self.estimators["pathwise"]
        with torch.enable_grad():
            policy = self.policy(obs)
            loss, _ = pathwise.loss(policy, pathwise.draw(policy), self.actor_objective(obs, alpha))
            return diagnostics.batch_gradient(self.actor, loss)

    def per_state_gradients(
        self, name: str, obs: torch.Tensor, alpha: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The definition of the per-sample estimates: ∇θ ℓ_i of estimator ``name``'s row
        losses for every state, by ``vmap(grad(·))`` over the reference actor (the critic enters
        only through what ``prepare`` computed outside, so it is not vmapped)."""
        estimator = self.estimators[name]
        with torch.no_grad():
            policy = SquashedGaussianPolicy.of(self.actor(obs))
            noise = estimator.draw(policy)
            prepared = estimator.prepare(policy, noise, self.actor_objective(obs, alpha))
        inputs, row_loss = estimator.per_state(noise, prepared, alpha)

        def loss(actor, obs_i, *inputs_i):
            return row_loss(SquashedGaussianPolicy.of(actor(obs_i)), *inputs_i)

        return diagnostics.per_sample_grads(self.actor, loss, obs, *inputs)

    def pathwise_per_sample(self, obs: torch.Tensor, alpha: torch.Tensor) -> dict:
        """∇θ [α log π(a_i|s_i) − min Q(s_i, a_i)], a_i = tanh(μ(s_i) + σ(s_i) ε_i), per row."""
        return self.per_state_gradients("pathwise", obs, alpha)

    def score_per_sample(self, obs: torch.Tensor, alpha: torch.Tensor) -> dict:
        """Per state: mean_k [(h_k − b_k + α) ∇θ log π(a_k|s)] over its K sampled actions."""
        return self.per_state_gradients("score", obs, alpha)

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
            "score_value": self.score_value.state_dict() if self.score_value is not None else None,
            "mix_weights": dict(self.mixed.weights) if self.mixed is not None else None,
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
        if self.mixed is not None:
            self.mixed.weights = {k: float(v) for k, v in state["mix_weights"].items()}
