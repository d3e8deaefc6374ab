"""Policy-gradient estimators as objects: ∇θ E_{a~πθ(·|s)}[h(s, a)] for a batch of states.

The function averaged over actions is

    h(s, a) = α log πθ(a|s) + f(s, a)

with f held fixed (for SAC's actor f = −min_i Q_i(s, a) with the critics' weights frozen, so
h = α log π − Q and E_s E_a[h] is the actor's objective J(θ)). An estimator works in three
steps, the same for training, diagnostics and the SB3 callback:

1. ``draw(policy)``: standard-normal noise ε, (B, d) or (K, B, d) for K draws per state;
2. ``prepare(policy, noise, objective)``: everything that needs f (the critic), computed
   without θ-gradients and batched over all draws (:class:`Prepared`);
3. ``row_losses(policy, noise, prepared, alpha)``: one surrogate ℓ_i per state, in which θ
   enters only through the policy. Its θ-gradient is state i's estimate ĝ_i, so
   ``loss = mean_i ℓ_i`` has the batch estimate as its gradient (what training takes) and the
   per-row gradients are the per-sample estimates the diagnostics measure
   (:class:`rlgrad.diagnostics.LinearTape`, or ``vmap(grad(·))`` with :meth:`state_dims`).

Estimators (docs/estimators.md has the derivations):

* :class:`Pathwise`: a = tanh(μ + σ ε), ĝ_i = ∇θ [α log π(a_i|s_i) + f(s_i, a_i)]. ``prepare``
  takes g_i = ∂f/∂a at the draw from one batched backward through the critic, and the
  surrogate is ℓ_i = α log π(a_i(θ)|s_i) + g_i · a_i(θ), whose θ-gradient is the same
  (∇θ f(s, a(θ)) = (∂f/∂a) · ∂a/∂θ with f's weights fixed).
* :class:`ScoreFunction`: K pre-tanh draws u_ik per state, held fixed; with
  h_ik = α log π(a_ik|s_i) + f(s_i, a_ik) and a baseline b_ik that does not depend on a_ik,
  ĝ_i = (1/K) Σ_k (h_ik − b_ik + α) ∇θ log π(a_ik|s_i). The +α term is the gradient of h's own
  dependence on θ (α ∇θ log π, zero in expectation but part of the estimate). Baselines:
  ``none`` (b = 0), ``loo`` (the mean of h over the other K − 1 draws of the state),
  ``value`` (b = −V(s) from a learned soft state value).

Policies (:class:`SquashedGaussianPolicy`) are built from an actor's two heads (mean and raw
log σ); their reparameterized sample may run through a fused kernel (``rlgrad.kernels``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor

from rlgrad.distributions import TanhGaussian, squashed_gaussian_sample

SampleFn = Callable[[Tensor, Tensor, Tensor, float, float], tuple[Tensor, Tensor]]
Prepared = dict[str, Tensor]
ScoreBaseline = Literal["none", "loo", "value", "optimal"]


class ActionObjective(NamedTuple):
    """h(s, a) = α log π(a|s) + f(a) over a batch of states ``obs`` bound into ``f``.

    ``f`` maps actions (..., B, d) to values (..., B), row b belonging to state b; it must be
    differentiable in the actions (for the pathwise estimator) and constant in θ.
    """

    f: Callable[[Tensor], Tensor]
    alpha: Tensor | float = 0.0
    obs: Tensor | None = None


class SquashedGaussianPolicy:
    """π(·|s): a = tanh(u), u ~ N(μ, σ²), σ = exp(clamp(r, min, max)), from heads μ and r.

    ``sample`` computes (a, log π(a)) from (μ, r, ε, min, max): the reference
    :func:`rlgrad.distributions.squashed_gaussian_sample` or a kernel bound in its place.
    ``epsilon`` > 0 evaluates log π the way Stable-Baselines3 does,
    Σ_j [log N(u_j; μ_j, σ_j) − log(1 − tanh²(u_j) + ε)], so that the SB3 callback measures the
    gradient SB3 trains on; 0 (rlgrad) uses the exact stable form. :meth:`of` wraps a
    :class:`~rlgrad.distributions.TanhGaussian` that a module built (the reference path, as the
    diagnostics need it).
    """

    def __init__(
        self,
        mean: Tensor,
        raw_log_std: Tensor,
        log_std_min: float = -math.inf,
        log_std_max: float = math.inf,
        sample: SampleFn | None = squashed_gaussian_sample,
        epsilon: float = 0.0,
    ):
        self.mean, self.raw_log_std = mean, raw_log_std
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self._sample = sample if epsilon == 0.0 else None
        self.epsilon = epsilon
        self._distribution: TanhGaussian | None = None

    @classmethod
    def of(cls, distribution: TanhGaussian, epsilon: float = 0.0) -> SquashedGaussianPolicy:
        """The policy whose u-distribution is ``distribution``'s (its σ already clamped)."""
        policy = cls(distribution.mean, distribution.std.log(), sample=None, epsilon=epsilon)
        policy._distribution = distribution
        return policy

    @property
    def distribution(self) -> TanhGaussian:
        """TanhGaussian(μ, exp(clamp(r))), built anew at each use (not cached: one built under
        ``no_grad`` must not stand in for one that θ-gradients flow through)."""
        if self._distribution is not None:
            return self._distribution
        log_std = self.raw_log_std.clamp(self.log_std_min, self.log_std_max)
        return TanhGaussian.from_log_std(self.mean, log_std)

    def pre_tanh(self, noise: Tensor) -> Tensor:
        """u = μ + σ ε (differentiable in θ)."""
        dist = self.distribution
        return dist.mean + dist.std * noise

    def log_prob_pre_tanh(self, u: Tensor) -> Tensor:
        """log π(tanh u | s), summed over the action dimension."""
        dist = self.distribution
        if self.epsilon == 0.0:
            return dist.log_prob_pre_tanh(u)
        a = torch.tanh(u)
        return dist.base.log_prob(u) - torch.log(1 - a * a + self.epsilon).sum(-1)

    def rsample(self, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(a, log π(a)) for a = tanh(μ + σ ε), both differentiable in θ."""
        if self._sample is not None and noise.shape == self.mean.shape:
            return self._sample(
                self.mean, self.raw_log_std, noise, self.log_std_min, self.log_std_max
            )
        u = self.pre_tanh(noise)  # the reference's arithmetic (K draws per state, or SB3's ε)
        return torch.tanh(u), self.log_prob_pre_tanh(u)


def leave_one_out_mean(h: Tensor) -> Tensor:
    """b_k = (Σ_j h_j − h_k) / (K − 1) along dim 0: the mean of the other K − 1 draws, which
    keeps a score-function estimate unbiased (b_k does not depend on draw k)."""
    return (h.sum(0, keepdim=True) - h) / (h.shape[0] - 1)


class PolicyGradientEstimator(ABC):
    """One estimator of ∇θ E_{a~π}[h(s, a)] (see the module docstring for the protocol)."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def critic_evaluations_per_state(self) -> int:
        """The cost unit for fair comparisons: evaluations of f (the critic) per state."""

    @abstractmethod
    def noise_shape(self, policy: SquashedGaussianPolicy) -> torch.Size:
        """(B, d) for one draw per state, (K, B, d) for K."""

    def draw(
        self,
        policy: SquashedGaussianPolicy,
        reuse: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Standard-normal noise for this estimator's draws (from ``generator``, or the global
        RNG). ``reuse``: a draw the caller already made (SAC's action for α's loss), taken
        instead of a new one when it has the shape this estimator needs."""
        shape = self.noise_shape(policy)
        if reuse is not None and reuse.shape == shape:
            return reuse
        mean = policy.mean
        return torch.randn(shape, dtype=mean.dtype, device=mean.device, generator=generator)

    @abstractmethod
    def prepare(
        self, policy: SquashedGaussianPolicy, noise: Tensor, objective: ActionObjective
    ) -> Prepared:
        """What the surrogate needs of f at the draws, without θ-gradients. Always holds
        ``objective`` (h at each draw) and ``log_prob`` (log π of each draw)."""

    @abstractmethod
    def draw_losses(
        self, policy: SquashedGaussianPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """The surrogate of each draw, (K, B) or (B,) as the noise has draws per state: the
        θ-gradient of one is that draw's contribution to its state's estimate."""

    def row_losses(
        self, policy: SquashedGaussianPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ_i per state, (B,): ∇θ ℓ_i is state i's estimate (the mean of its draws'). Also
        works unbatched (one state, inside ``vmap``), returning a scalar."""
        draws = self.draw_losses(policy, noise, prepared, alpha)
        return draws.mean(0) if noise.dim() > policy.mean.dim() else draws

    @abstractmethod
    def unlikeliness(self, noise: Tensor, prepared: Prepared) -> Tensor:
        """How unlikely each draw is, shaped like ``draw_losses``: the tail probe's order
        (largest ‖ε‖ for pathwise, lowest log π for the score function)."""

    @abstractmethod
    def state_dims(self, noise: Tensor, prepared: Prepared) -> tuple[int, dict[str, int]]:
        """The state dimension of ``noise`` and of each prepared tensor (for ``vmap``)."""

    def per_state(
        self, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> tuple[list[Tensor], Callable[..., Tensor]]:
        """For ``vmap(grad(·))`` over states: the noise and prepared tensors with the state
        dimension first, and ``row_loss(policy_i, noise_i, *prepared_i)``, the surrogate ℓ_i of
        one state from its slices (each with a leading dimension of 1)."""
        noise_dim, dims = self.state_dims(noise, prepared)
        keys = list(prepared)
        inputs = [noise.movedim(noise_dim, 0), *(prepared[k].movedim(dims[k], 0) for k in keys)]

        def row_loss(policy: SquashedGaussianPolicy, noise_i: Tensor, *prepared_i: Tensor):
            state = {k: t.movedim(0, dims[k]) for k, t in zip(keys, prepared_i, strict=True)}
            return self.row_losses(policy, noise_i.movedim(0, noise_dim), state, alpha).sum()

        return inputs, row_loss

    def loss(
        self,
        policy: SquashedGaussianPolicy,
        noise: Tensor,
        objective: ActionObjective,
        sample: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(the surrogate whose gradient is the batch estimate, J = mean h at the draws).

        ``sample``: ``policy.rsample(noise)`` if the caller has it already (with its graph),
        for an estimator that would compute it again (pathwise)."""
        prepared = self.prepare(policy, noise, objective)
        rows = self.row_losses(policy, noise, prepared, torch.as_tensor(objective.alpha))
        return rows.mean(), prepared["objective"].mean()


class Pathwise(PolicyGradientEstimator):
    """The reparameterization estimator: one action a = tanh(μ + σ ε) per state."""

    name = "pathwise"
    critic_evaluations_per_state = 1

    def noise_shape(self, policy: SquashedGaussianPolicy) -> torch.Size:
        return policy.mean.shape

    def prepare(
        self, policy: SquashedGaussianPolicy, noise: Tensor, objective: ActionObjective
    ) -> Prepared:
        """g = ∂f/∂a at a = tanh(μ + σ ε) (one batched backward), and h at the draw."""
        with torch.no_grad():
            action, log_prob = policy.rsample(noise)
        return self._prepare_at(action, log_prob, objective)

    @staticmethod
    def _prepare_at(action: Tensor, log_prob: Tensor, objective: ActionObjective) -> Prepared:
        with torch.enable_grad():
            action = action.detach().requires_grad_(True)
            values = objective.f(action)
            (slope,) = torch.autograd.grad(values.sum(), action)
        return {
            "slope": slope,
            "objective": objective.alpha * log_prob.detach() + values.detach(),
            "log_prob": log_prob.detach(),
        }

    def loss(
        self,
        policy: SquashedGaussianPolicy,
        noise: Tensor,
        objective: ActionObjective,
        sample: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """As the base class; with ``sample`` = (a(θ), log π(a(θ))) the draw's action and
        log-density are taken from it (one reparameterized sample, as SAC computes it)."""
        if sample is None:
            return super().loss(policy, noise, objective)
        action, log_prob = sample
        prepared = self._prepare_at(action, log_prob, objective)
        rows = torch.as_tensor(objective.alpha) * log_prob + (prepared["slope"] * action).sum(-1)
        return rows.mean(), prepared["objective"].mean()

    def draw_losses(
        self, policy: SquashedGaussianPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ = α log π(a(θ)|s) + g · a(θ) per draw."""
        action, log_prob = policy.rsample(noise)
        return alpha * log_prob + (prepared["slope"] * action).sum(-1)

    def unlikeliness(self, noise: Tensor, prepared: Prepared) -> Tensor:
        return torch.linalg.vector_norm(noise, dim=-1)

    def state_dims(self, noise: Tensor, prepared: Prepared) -> tuple[int, dict[str, int]]:
        dim = noise.dim() - 2
        return dim, {k: dim for k in prepared}


class ScoreFunction(PolicyGradientEstimator):
    """The log-derivative estimator with K actions per state and a baseline.

    ``value``: for ``baseline="value"``, a function s ↦ V(s), (B, obs) ↦ (B,), applied to the
    objective's ``obs``, so that b(s) = −V(s) ≈ E_a[h(s, a)].

    ``baseline="optimal"``: a separate constant baseline for each parameter of π(·|s), the means
    μ_j and log-stds log σ_j, each the variance-minimising b*_m = E[h s_m²]/E[s_m²] of its own
    component (s_m = ∂ log π/∂z_m, z = (μ, log σ)), estimated per state from its other K − 1
    draws; the network parameters get the chain rule of these components,
    ĝ = (1/K) Σ_k Σ_m (h_k − b_km + α) s_km ∂z_m/∂θ (docs/estimators.md §6).
    """

    name = "score"

    def __init__(
        self,
        samples: int = 8,
        baseline: ScoreBaseline = "loo",
        value: Callable[[Tensor], Tensor] | None = None,
    ):
        if samples < 1:
            raise ValueError(f"score-function samples must be positive, got {samples}")
        if baseline in ("loo", "optimal") and samples < 2:
            raise ValueError(f"the {baseline} baseline needs at least 2 samples per state")
        if baseline == "value" and value is None:
            raise ValueError("baseline='value' needs a value function")
        if baseline not in ("none", "loo", "value", "optimal"):
            raise ValueError(f"unknown score-function baseline {baseline!r}")
        self.samples, self.baseline, self.value = samples, baseline, value

    @property
    def critic_evaluations_per_state(self) -> int:
        return self.samples

    def noise_shape(self, policy: SquashedGaussianPolicy) -> torch.Size:
        return torch.Size((self.samples, *policy.mean.shape))

    def prepare(
        self, policy: SquashedGaussianPolicy, noise: Tensor, objective: ActionObjective
    ) -> Prepared:
        """The fixed pre-tanh draws u, h at them, and the weights h − b + α of ∇ log π (per
        component of (μ, log σ) with the optimal baseline)."""
        with torch.no_grad():
            u = policy.pre_tanh(noise)
            log_prob = policy.log_prob_pre_tanh(u)
            h = objective.alpha * log_prob + objective.f(torch.tanh(u))
            out = {"u": u, "objective": h, "log_prob": log_prob}
            if self.baseline == "optimal":
                dist = policy.distribution
                z = (u - dist.mean) / dist.std
                scores = {"mean": z / dist.std, "log_std": z * z - 1.0}  # ∂ log π/∂(μ, log σ)
                for key, score in scores.items():
                    b = optimal_baseline_over_draws(h, score)
                    out[f"weighted_score_{key}"] = (h.unsqueeze(-1) - b + objective.alpha) * score
            else:
                out["weights"] = h - self.baseline_values(h, objective.obs) + objective.alpha
        return out

    def baseline_values(self, h: Tensor, obs: Tensor | None = None) -> Tensor:
        """b for every draw (K, B): 0, the leave-one-out mean over the state's other draws, or
        −V(s) of the states ``obs``."""
        if self.baseline == "loo":
            return leave_one_out_mean(h)
        if self.baseline == "value":
            if self.value is None or obs is None:
                raise ValueError("baseline='value' needs the objective's obs and a value function")
            return -self.value(obs)
        return torch.zeros_like(h)

    def draw_losses(
        self, policy: SquashedGaussianPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ_k = w_k log πθ(a_k|s), w = h − b + α held fixed; with the optimal baseline
        ℓ_k = Σ_j [w s]_kj^μ μ_j(θ) + [w s]_kj^σ log σ_j(θ) (the same gradient, per component)."""
        if self.baseline == "optimal":
            dist = policy.distribution
            return (
                prepared["weighted_score_mean"] * dist.mean
                + prepared["weighted_score_log_std"] * dist.std.log()
            ).sum(-1)
        return prepared["weights"] * policy.log_prob_pre_tanh(prepared["u"])

    def unlikeliness(self, noise: Tensor, prepared: Prepared) -> Tensor:
        return -prepared["log_prob"]

    def state_dims(self, noise: Tensor, prepared: Prepared) -> tuple[int, dict[str, int]]:
        dim = noise.dim() - 2
        return dim, {k: dim for k in prepared}


class Mixed(PolicyGradientEstimator):
    """w ĝ_PW + (1 − w) ĝ_SF per parameter tensor, w fixed from earlier measurements.

    Unbiased for any weights that do not depend on the draws they multiply: SAC refreshes them
    from its diagnostics' moments every ``mix_interval`` updates, on states and draws the
    training batches never use (:func:`rlgrad.diagnostics.mixing_weights_from`). The noise is
    (1 + K, B, d): the pathwise draw, then the score function's K. The training loss combines
    the two gradients per parameter (:meth:`loss`); the row losses of a per-tensor mix do not
    exist as one scalar, so the diagnostics mix the two estimators' layer gradients instead.
    """

    name = "mixed"

    def __init__(
        self,
        pathwise: Pathwise,
        score: ScoreFunction,
        params: dict[str, Tensor],
        weights: dict[str, float] | None = None,
    ):
        self.pathwise, self.score, self.params = pathwise, score, params
        self.weights = {name: 1.0 for name in params} if weights is None else dict(weights)

    @property
    def critic_evaluations_per_state(self) -> int:
        return 1 + self.score.samples

    def noise_shape(self, policy: SquashedGaussianPolicy) -> torch.Size:
        return torch.Size((1 + self.score.samples, *policy.mean.shape))

    def draw(
        self,
        policy: SquashedGaussianPolicy,
        reuse: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        first = self.pathwise.draw(policy, reuse, generator)
        return torch.cat([first.unsqueeze(0), self.score.draw(policy, generator=generator)])

    def prepare(
        self, policy: SquashedGaussianPolicy, noise: Tensor, objective: ActionObjective
    ) -> Prepared:
        pathwise = self.pathwise.prepare(policy, noise[0], objective)
        score = self.score.prepare(policy, noise[1:], objective)
        out = {f"pathwise/{k}": v for k, v in pathwise.items()}
        out.update({f"score/{k}": v for k, v in score.items()})
        out["objective"] = pathwise["objective"]
        return out

    def draw_losses(
        self, policy: SquashedGaussianPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        raise NotImplementedError("a per-tensor mix has no scalar draw losses; see Mixed.loss")

    def row_losses(
        self, policy: SquashedGaussianPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        raise NotImplementedError("a per-tensor mix has no scalar row losses; see Mixed.loss")

    def unlikeliness(self, noise: Tensor, prepared: Prepared) -> Tensor:
        raise NotImplementedError("the tail probe measures the two estimators separately")

    def state_dims(self, noise: Tensor, prepared: Prepared) -> tuple[int, dict[str, int]]:
        raise NotImplementedError("the mix is measured through its two estimators")

    def loss(
        self,
        policy: SquashedGaussianPolicy,
        noise: Tensor,
        objective: ActionObjective,
        sample: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Σ_p ⟨w_p g_PW,p + (1 − w_p) g_SF,p, θ_p⟩ with the g's held fixed: its gradient is the
        mixed batch estimate (two backward passes, one per estimator). ``sample``: the
        pathwise draw's (a(θ), log π), as for :meth:`Pathwise.loss`."""
        params = list(self.params.values())
        loss_pw, value = self.pathwise.loss(policy, noise[0], objective, sample)
        loss_sf, _ = self.score.loss(policy, noise[1:], objective)
        grads_pw = torch.autograd.grad(loss_pw, params, retain_graph=True, allow_unused=True)
        grads_sf = torch.autograd.grad(loss_sf, params, allow_unused=True)
        surrogate = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
        for (name, param), g_pw, g_sf in zip(self.params.items(), grads_pw, grads_sf, strict=True):
            w = self.weights[name]
            g_pw = torch.zeros_like(param) if g_pw is None else g_pw
            g_sf = torch.zeros_like(param) if g_sf is None else g_sf
            surrogate = surrogate + ((w * g_pw + (1.0 - w) * g_sf).detach() * param).sum()
        return surrogate, value


def optimal_baseline_over_draws(h: Tensor, score: Tensor) -> Tensor:
    """b_km = (Σ_k' h_k' s_k'm² − h_k s_km²)/(Σ_k' s_k'm² − s_km²) along dim 0 (the K draws of
    a state): the variance-minimising constant E[h s_m²]/E[s_m²] for component m, from the
    state's other draws. ``h`` (K, …), ``score`` (K, …, M)."""
    h = h.unsqueeze(-1)
    sq = score * score
    num = (h * sq).sum(0, keepdim=True) - h * sq
    den = sq.sum(0, keepdim=True) - sq
    return torch.where(den > 0, num / den.clamp_min(1e-30), 0.0)


def make_estimator(
    name: str,
    samples: int = 8,
    baseline: ScoreBaseline = "loo",
    value: Callable[[Tensor], Tensor] | None = None,
) -> PolicyGradientEstimator:
    """The estimator called ``name`` (``pathwise`` or ``score``)."""
    if name == "pathwise":
        return Pathwise()
    if name == "score":
        return ScoreFunction(samples, baseline, value)
    raise ValueError(f"unknown estimator {name!r}; expected pathwise or score")
