"""REINFORCE (Williams 1992): the Monte Carlo score-function policy gradient, with a baseline.

Policy: a diagonal Gaussian πθ(a|s) = N(μθ(s), diag σ²) with a state-independent log σ (a free
parameter); actions are sampled unclipped and the env clips them to [−1, 1]^d.

Every ``n_steps`` vector steps the agent makes one policy update on the rollout:

    loss(θ) = −mean_t [ log πθ(a_t|s_t) · Â_t ] − ent_coef · mean_t H[πθ(·|s_t)]

whose gradient is the score-function estimate −mean_t ∇θ log πθ(a_t|s_t) Â_t (Â_t held fixed).
The advantage Â_t depends on ``baseline``:

* ``none``:  Â_t = Ĝ_t, the discounted reward-to-go;
* ``mean``:  Â_t = Ĝ_t − b, b an exponential moving average of the mean Ĝ of earlier rollouts
  (the first rollout uses its own mean); b does not depend on the current actions, so the
  estimate stays unbiased from the second update on;
* ``value``: Â_t = Ĝ_t − V(s_t), V a learned state value (its own optimiser ``value``, fitted to
  Ĝ by ``value_epochs`` epochs of minibatch regression after each policy update);
* ``gae``:   Â_t = GAE(λ) advantages from the same V (``gae_lambda``); V is fitted to the TD(λ)
  returns Â + V;
* ``optimal``: a separate constant baseline for every parameter element j of θ, the
  variance-minimising b*_j = E[Ĝ s_j²]/E[s_j²] (s = ∇θ log π(a_t|s_t)), estimated for step t
  from the rollout's other steps (leave-one-out), so the estimate stays unbiased:
  ĝ_j = mean_t (Ĝ_t − b_tj) s_tj. This takes the per-step scores of the rollout
  (``vmap(grad(·))``, one row of P numbers per step); the loss is then the linear surrogate
  −Σ_j ĝ_j θ_j (same gradient), and advantage normalisation divides by std Ĝ without centring
  (a centring would be another baseline).

Returns and episode ends (see ``rlgrad.rollout``): a termination ends Ĝ. With a value function
(``value``, ``gae``) a time-limit truncation and an episode still running at the end of the
rollout are bootstrapped with V(s') of the true next observation. Without one (``none``,
``mean``) they are cut there: a truncated episode's return is the rewards it received, and the
unfinished tail of the rollout counts only the rewards seen so far (biased low near the
boundary) unless ``drop_incomplete`` gives those steps weight zero.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt

from rlgrad import diagnostics
from rlgrad.config import AgentConfig, DiagnosticsConfig
from rlgrad.envs import EnvSpec
from rlgrad.estimators import optimal_baseline
from rlgrad.learner import Learner
from rlgrad.on_policy import OnPolicyAgent
from rlgrad.rollout import discounted_returns, gae


class Config(AgentConfig):
    action_spaces = ("continuous", "discrete")
    name: Literal["reinforce"] = "reinforce"
    hidden_sizes: list[PositiveInt] = Field(default_factory=lambda: [64, 64], min_length=1)
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    learning_rate: float = Field(1e-3, gt=0)
    """Adam step size of the policy."""
    n_steps: int = Field(1024, gt=0)
    """Vector-env steps per rollout (per env); one policy update per rollout."""
    gamma: float = Field(0.99, ge=0, le=1)
    baseline: Literal["none", "mean", "value", "gae", "optimal"] = "value"
    gae_lambda: float = Field(0.95, ge=0, le=1)
    mean_baseline_decay: float = Field(0.9, ge=0, lt=1)
    """b ← decay · b + (1 − decay) · mean Ĝ of the rollout, for ``baseline=mean``."""
    value_learning_rate: float = Field(1e-3, gt=0)
    value_epochs: int = Field(5, gt=0)
    value_batch_size: int = Field(256, gt=0)
    advantage_normalization: Literal["standardize", "scale", "none"] = "standardize"
    """``standardize``: (Â − mean) / std over the rollout; ``scale``: Â / std only (keeps the
    baseline the only centring, for comparing baselines at one step size); ``none``."""
    ent_coef: float = Field(0.0, ge=0)
    anneal_lr: bool = False
    """Decay both learning rates linearly to 0 over ``total_steps``."""
    drop_incomplete: bool = False
    """Without a value function: give zero weight to steps of episodes unfinished at the end
    of the rollout instead of cutting their return there."""
    max_grad_norm: float | None = Field(None, gt=0)
    log_std_init: float = 0.0
    ortho_init: bool = True


def policy_gradient_loss(
    log_prob: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """−mean_t log π(a_t|s_t) Â_t (a weighted mean when ``weights`` are given); Â is detached."""
    terms = log_prob * advantages.detach()
    if weights is None:
        return -terms.mean()
    return -(terms * weights).sum() / weights.sum().clamp_min(1.0)


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(T,) values shaped to multiply per-step rows (T, *shape)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def normalize(
    x: torch.Tensor, weights: torch.Tensor | None = None, center: bool = True
) -> torch.Tensor:
    """(x − mean) / (std + 1e-8), or x / (std + 1e-8) when not ``center``; the moments are
    taken over the entries with nonzero weight."""
    if weights is None:
        mean, std = x.mean(), x.std()
    else:
        n = weights.sum().clamp_min(2.0)
        mean = (x * weights).sum() / n
        std = (((x - mean).pow(2) * weights).sum() / (n - 1)).sqrt()
    return ((x - mean) if center else x) / (std + 1e-8)


class Agent(OnPolicyAgent):
    """REINFORCE on :class:`rlgrad.on_policy.OnPolicyAgent`: its advantages, its one policy
    step per rollout, the value regression and the baselines' diagnostics."""

    def __init__(
        self, cfg: Config, spec: EnvSpec, learner: Learner, n_envs: int, total_steps: int = 0
    ):
        self.uses_value = cfg.baseline in ("value", "gae")
        super().__init__(cfg, spec, learner, n_envs, total_steps, value=self.uses_value)
        self.cfg: Config = cfg
        self.add_optimizer("policy", self.policy.parameters(), cfg.learning_rate)
        if self.value is not None:
            self.add_optimizer("value", self.value.parameters(), cfg.value_learning_rate)
        self.return_mean = torch.zeros((), device=learner.device)
        self.return_mean_ready = False

    # ---- learning -----------------------------------------------------------------------
    def learn(self, global_step: int, measure: bool) -> dict[str, torch.Tensor]:
        cfg, buf = self.cfg, self.buffer
        obs = buf.flat("obs")
        values = next_values = None
        if self.value is not None:
            with torch.no_grad():
                values, next_values = self.value(obs), self.value(buf.flat("next_obs"))
        advantages, returns, weights = self.advantages(values, next_values)

        # One policy-gradient step on the whole rollout.
        adv = advantages
        if cfg.advantage_normalization != "none":
            center = cfg.advantage_normalization == "standardize" and cfg.baseline != "optimal"
            adv = normalize(adv, weights, center=center)
        policy = self.policy(obs)
        log_prob = policy.log_prob(buf.flat("actions"))
        pg_loss = policy_gradient_loss(log_prob, adv, weights)
        entropy = policy.entropy().mean()
        if cfg.baseline == "optimal":  # the per-element baseline's gradient, as a surrogate
            grad = self.optimal_baseline_gradient(obs, buf.flat("actions"), adv, weights)
            params = dict(self.policy.named_parameters())
            pg_loss = -sum((g * params[name]).sum() for name, g in grad.items())
        loss = pg_loss - cfg.ent_coef * entropy
        if measure:
            self.snapshot(
                advantages=adv.detach(),  # Â as the loss uses it (normalised)
                weights=weights,
                values=values,
                next_values=next_values,
            )
        self.learner.step("policy", loss, max_grad_norm=cfg.max_grad_norm)

        metrics = {
            "losses/policy": pg_loss.detach(),
            "train/entropy": entropy.detach(),
            **self.policy_metrics(),
            "train/return_mean": returns.mean(),
        }
        if cfg.baseline == "mean":
            metrics["train/mean_baseline"] = self.return_mean.clone()
        if values is not None:
            metrics.update(self.fit_value(obs, returns, values))
        return metrics

    def optimal_baseline_gradient(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        returns: torch.Tensor,
        weights: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """ĝ_j = mean_t (Ĝ_t − b_tj) s_tj with the leave-one-out optimal baseline b_tj per
        parameter element (steps of weight 0 left out), {name: shape of the parameter}."""
        if weights is not None:
            keep = weights > 0
            obs, actions, returns = obs[keep], actions[keep], returns[keep]
        params = {n: p.detach() for n, p in self.policy.named_parameters()}
        scores = self.score_per_sample(params, obs, actions)
        return {
            name: ((_rows(returns, s) - optimal_baseline(returns, s)) * s).mean(0)
            for name, s in scores.items()
        }

    def advantages(
        self, values: torch.Tensor | None, next_values: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(Â, the returns V is fitted to, step weights or None), flat over the rollout.

        ``values``/``next_values``: V of the stored obs / next_obs, when there is a V."""
        cfg, buf = self.cfg, self.buffer
        if cfg.baseline == "gae":
            assert values is not None and next_values is not None
            return (*buf.compute_gae(values, next_values, cfg.gamma, cfg.gae_lambda), None)
        returns = buf.compute_returns(cfg.gamma, next_values)
        if cfg.baseline == "value":
            assert values is not None
            return returns - values, returns, None
        weights = None
        if cfg.drop_incomplete:
            weights = buf.complete_episodes().to(returns.dtype)
        if cfg.baseline == "mean":
            batch_mean = (
                returns.mean() if weights is None else (returns * weights).sum() / weights.sum()
            )
            if not self.return_mean_ready:  # the first rollout: its own mean
                self.return_mean.copy_(batch_mean)
                self.return_mean_ready = True
            adv = returns - self.return_mean
            self.return_mean.lerp_(batch_mean, 1.0 - cfg.mean_baseline_decay)
            return adv, returns, weights
        return returns, returns, weights

    def fit_value(
        self, obs: torch.Tensor, targets: torch.Tensor, old_values: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``value_epochs`` epochs of minibatch regression of V(s) on ``targets``."""
        assert self.value is not None
        cfg = self.cfg
        loss = torch.zeros((), device=obs.device)
        for _ in range(cfg.value_epochs):
            for mb_obs, mb_targets in self.buffer.minibatches(cfg.value_batch_size, obs, targets):
                loss = (self.value(mb_obs) - mb_targets).pow(2).mean()
                self.learner.step("value", loss, max_grad_norm=cfg.max_grad_norm)
        residual_var = (targets - old_values).var()
        return {
            "losses/value": loss.detach(),
            "train/explained_variance": 1.0 - residual_var / targets.var().clamp_min(1e-8),
        }

    # ---- diagnostics --------------------------------------------------------------------
    def diagnose_snapshot(
        self, r: dict[str, Any], cfg: DiagnosticsConfig
    ) -> dict[str, torch.Tensor]:
        """Per-sample gradients of the policy loss of the measured update, on its rollout, at
        the parameters θ_old it was computed at (``diagnose`` calls this on the snapshot).

        ``grad/score/<stat>_per_step`` and ``grad/score/<stat>_per_episode`` (see
        :func:`rlgrad.diagnostics.step_and_episode_statistics`; ``grad/score/episodes`` counts
        the episodes) for the gradient the update applied, from the per-step gradients
        g_t = −∇θ [log πθ(a_t|s_t) Â_t + ent_coef · H(πθ(·|s_t))] (steps of weight 0 left out).

        ``grad/score/variance_baseline_<name>_per_step`` / ``_per_episode``: tr Σ̂ of the
        score-function estimates −Â_t ∇θ log πθ(a_t|s_t) on the same steps with each baseline's
        unnormalised advantage: ``none`` Â = Ĝ, ``mean`` Â = Ĝ − mean Ĝ (over the rollout),
        ``optimal`` Ĝ − b_tj per parameter element (leave-one-out over the rollout), and with a
        value function ``value`` Â = Ĝ − V(s) and ``gae`` GAE(λ); Ĝ is the agent's
        reward-to-go (bootstrapped iff it has a V).
        """
        episode, n_episodes = diagnostics.episode_index(r["terminated"], r["truncated"])
        rows = None if r["weights"] is None else r["weights"] > 0
        if rows is not None:
            episode = torch.unique(episode[rows], return_inverse=True)[1]
            n_episodes = int(episode.max()) + 1 if episode.numel() else 0

        def kept(x: torch.Tensor) -> torch.Tensor:
            return x if rows is None else x[rows]

        obs, actions = kept(r["obs"]), kept(r["actions"])
        if obs.shape[0] < 2:
            return {}
        scores = self.score_per_sample(r["params"], obs, actions)
        grads = self.policy_loss_per_sample(r["params"], obs, actions, kept(r["advantages"]))
        if self.cfg.baseline == "optimal":  # the trained gradient's rows: per-element baselines
            returns = kept(r["advantages"])
            entropy = self.policy_loss_per_sample(r["params"], obs, actions, 0.0 * returns)
            grads = {
                k: entropy[k] - (_rows(returns, s) - optimal_baseline(returns, s)) * s
                for k, s in scores.items()
            }
        stats = diagnostics.step_and_episode_statistics(grads, episode, n_episodes, cfg.per_layer)
        metrics = diagnostics.prefixed("grad/score", stats)

        for name, adv in self.baseline_advantages(r).items():
            adv = kept(adv)
            if name == "optimal":
                estimates = {
                    k: -(_rows(adv, s) - optimal_baseline(adv, s)) * s for k, s in scores.items()
                }
            else:
                estimates = {k: -_rows(adv, s) * s for k, s in scores.items()}
            stats = diagnostics.step_and_episode_statistics(estimates, episode, n_episodes)
            for unit in ("per_step", "per_episode"):
                if f"variance_{unit}" in stats:
                    key = f"grad/score/variance_baseline_{name}_{unit}"
                    metrics[key] = stats[f"variance_{unit}"]
        return metrics

    def policy_loss_per_sample(
        self,
        params: dict[str, torch.Tensor],
        obs: torch.Tensor,
        actions: torch.Tensor,
        advantages: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """∇θ [−log πθ(a_t|s_t) Â_t − ent_coef · H(πθ(·|s_t))] at θ = ``params``, per step."""
        ent_coef = self.cfg.ent_coef

        def loss(policy, obs_t, action_t, adv_t):
            dist = policy(obs_t)
            return -(dist.log_prob(action_t) * adv_t).sum() - ent_coef * dist.entropy().sum()

        return diagnostics.per_sample_grads(
            self.policy, loss, obs, actions, advantages, params=params
        )

    def score_per_sample(
        self, params: dict[str, torch.Tensor], obs: torch.Tensor, actions: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """∇θ log πθ(a_t|s_t) at θ = ``params``, per step."""

        def loss(policy, obs_t, action_t):
            return policy(obs_t).log_prob(action_t).sum()

        return diagnostics.per_sample_grads(self.policy, loss, obs, actions, params=params)

    def baseline_advantages(self, r: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Unnormalised advantages of every baseline this agent can compute, flat."""
        cfg = self.cfg
        next_values = r["next_values"]
        grid = r["rewards"].shape
        returns = discounted_returns(
            r["rewards"],
            r["terminated"],
            r["truncated"],
            cfg.gamma,
            None if next_values is None else next_values.view(grid),
        ).reshape(-1)
        weights = r["weights"]
        mean = returns.mean() if weights is None else (returns * weights).sum() / weights.sum()
        # "optimal": the returns, to which each parameter element's own baseline is applied.
        out = {"none": returns, "mean": returns - mean, "optimal": returns}
        if r["values"] is not None:
            out["value"] = returns - r["values"]
            advantages, _ = gae(
                r["rewards"],
                r["values"].view(grid),
                next_values.view(grid),
                r["terminated"],
                r["truncated"],
                cfg.gamma,
                cfg.gae_lambda,
            )
            out["gae"] = advantages.reshape(-1)
        return out

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(return_mean=self.return_mean.clone(), return_mean_ready=self.return_mean_ready)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.return_mean.copy_(state["return_mean"])
        self.return_mean_ready = bool(state["return_mean_ready"])
