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
ScoreBaseline = Literal["none", "loo", "value"]


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


def _mean_over_draws(x: Tensor, noise: Tensor, policy: SquashedGaussianPolicy) -> Tensor:
    """Average over the leading K dimension when the noise has one (K draws per state)."""
    return x.mean(0) if noise.dim() > policy.mean.dim() else x


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
        """What the surrogate needs of f at the draws, without θ-gradients."""

    @abstractmethod
    def row_losses(
        self, policy: SquashedGaussianPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ_i per state, (B,): ∇θ ℓ_i is state i's estimate. Also works unbatched (one state,
        inside ``vmap``), returning a scalar."""

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
        self, policy: SquashedGaussianPolicy, noise: Tensor, objective: ActionObjective
    ) -> tuple[Tensor, Tensor]:
        """(the surrogate whose gradient is the batch estimate, J = mean h at the draws)."""
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
        with torch.enable_grad():
            action = action.requires_grad_(True)
            values = objective.f(action)
            (slope,) = torch.autograd.grad(values.sum(), action)
        return {"slope": slope, "objective": objective.alpha * log_prob + values.detach()}

    def row_losses(
        self, policy: SquashedGaussianPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ_i = α log π(a_i(θ)|s_i) + g_i · a_i(θ)."""
        action, log_prob = policy.rsample(noise)
        rows = alpha * log_prob + (prepared["slope"] * action).sum(-1)
        return _mean_over_draws(rows, noise, policy)

    def state_dims(self, noise: Tensor, prepared: Prepared) -> tuple[int, dict[str, int]]:
        dim = noise.dim() - 2
        return dim, {"slope": dim, "objective": prepared["objective"].dim() - 1}


class ScoreFunction(PolicyGradientEstimator):
    """The log-derivative estimator with K actions per state and a baseline.

    ``value``: for ``baseline="value"``, a function s ↦ V(s), (B, obs) ↦ (B,), applied to the
    objective's ``obs``, so that b(s) = −V(s) ≈ E_a[h(s, a)].
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
        if baseline == "loo" and samples < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 samples per state")
        if baseline == "value" and value is None:
            raise ValueError("baseline='value' needs a value function")
        if baseline not in ("none", "loo", "value"):
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
        """The fixed pre-tanh draws u, h at them, and the weights h − b + α of ∇ log π."""
        with torch.no_grad():
            u = policy.pre_tanh(noise)
            h = objective.alpha * policy.log_prob_pre_tanh(u) + objective.f(torch.tanh(u))
            weights = h - self.baseline_values(h, objective.obs) + objective.alpha
        return {"u": u, "weights": weights, "objective": h}

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

    def row_losses(
        self, policy: SquashedGaussianPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ_i = (1/K) Σ_k w_ik log πθ(a_ik|s_i), w = h − b + α held fixed."""
        log_prob = policy.log_prob_pre_tanh(prepared["u"])
        return (prepared["weights"] * log_prob).mean(0)

    def state_dims(self, noise: Tensor, prepared: Prepared) -> tuple[int, dict[str, int]]:
        dim = noise.dim() - 2
        return dim, {"u": dim, "weights": dim, "objective": dim}


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
