"""Discrete actions: ∇θ E_{a~πθ(·|s)}[h(s, a)] for a categorical policy, estimated four ways.

The policy is π = softmax(l) over A actions, with logits l = lθ(s) for a batch of states,
(B, A). The function averaged over actions is, as for the Gaussian estimators
(:mod:`rlgrad.estimators.policy`),

    h(s, a) = α log πθ(a|s) + f(s, a)

with f held fixed (discrete SAC: f = −Q, so h = α log π − Q). f comes as a table (B, A) of
its value at every action (:meth:`CategoricalObjective.from_q`), or as a function of one-hot
or relaxed one-hot vectors y, (..., B, A) ↦ (..., B), row b belonging to state b. A table
is read on relaxed vectors through its linear extension f(y) = Σ_a y_a f_a.

The protocol is the Gaussian estimators': ``draw`` (Gumbel noise, (K, B, A) for K draws per
state), ``prepare`` (everything that needs f, without θ-gradients), ``row_losses`` (one
surrogate ℓ_i per state whose θ-gradient is state i's estimate ĝ_i) and ``loss`` (the mean of
the rows, and J = mean h at the draws).

Exact (:class:`CategoricalExact`). With few actions the expectation is a sum,
J(s) = Σ_a π_a h_a, so ℓ_i = Σ_a π_a(θ) (α log π_a(θ) + f_a): zero variance, the referee
of the other three. In the logits, with ∂π_a/∂l_j = π_a (δ_aj − π_j),

    ∂J/∂l_j = Σ_a (∂π_a/∂l_j) h_a + α Σ_a π_a ∂ log π_a/∂l_j = π_j (h_j − h̄),   h̄ = Σ_a π_a h_a,

because α Σ_a π_a ∂ log π_a/∂l_j = α ∂(Σ_a π_a)/∂l_j = 0 (:func:`closed_form_categorical`);
the network parameters get ∂J/∂θ = Σ_j (∂J/∂l_j) ∂l_j/∂θ.

Score function (:class:`CategoricalScore`). K actions per state by Gumbel-max,
a_k = argmax_a (l_a + g_ka) with g ~ Gumbel(0, 1), which is a draw from softmax(l) (so draws
are reproducible from the noise), held fixed:

    ĝ = (1/K) Σ_k (h_k − b_k + α) ∇θ log π(a_k),

unbiased for a baseline b_k that does not depend on a_k: ``none`` (0) or ``loo`` (the mean of h
over the state's other K − 1 draws). The +α is the gradient of h's own dependence on θ,
α ∇θ log π(a_k), zero in expectation, as in the Gaussian case.

Gumbel-softmax (:class:`GumbelSoftmax`, Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017).
The relaxed sample y = softmax((l + g)/τ) replaces the one-hot action in the relaxed objective

    h̃(y) = α Σ_a y_a log π_a(θ) + f(y),

with log π inside the sum a function of θ too, and the estimate is its pathwise gradient
ĝ = ∇θ h̃(y(θ, g)). ``prepare`` takes the slope c = ∂f/∂y at the draw (c = the table for a
table), and ℓ = α Σ_a y_a(θ) log π_a(θ) + c · y(θ) has the same θ-gradient. It is unbiased for
∇θ E_g[h̃(y_τ)], not for ∇θ J: biased. As τ → 0, y → one_hot(argmax(l + g)) almost surely and
E_g h̃(y_τ) → J, and the bias falls; but ∂y/∂l = (diag y − y yᵀ)/τ is O(1/τ) in a region of
probability O(τ) around the ties of argmax and near zero elsewhere, so the variance grows
roughly like 1/τ.

Straight-through (:class:`StraightThrough`, Bengio, Léonard & Courville 2013). The forward
value is the hard sample y_hard = one_hot(argmax y) (exactly one-hot: the surrogate uses
y_st = y_hard + (y − sg(y)), sg stopping gradients), and the backward pass is the relaxed y's:
ℓ = α Σ_a y_st,a log π_a(θ) + c_hard · y_st with c_hard = ∂f/∂y at y_hard. Its gradient is the
Gumbel-softmax gradient except that ∇θ log π is weighted by y_hard instead of y (and f's slope
is taken at y_hard): with α = 0 and a table, the two are equal.

:func:`categorical_statistics` measures an estimator against the exact gradient: the relative
bias with its standard error, the per-sample variance and the cosine (docs/estimators.md,
"Discrete actions").
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rlgrad.estimators.monte_carlo import flatten_per_sample
from rlgrad.estimators.policy import leave_one_out_mean

Prepared = dict[str, Tensor]
CategoricalBaseline = Literal["none", "loo"]
RelaxedFn = Callable[[Tensor], Tensor]

__all__ = [
    "CategoricalBaseline",
    "CategoricalEstimator",
    "CategoricalExact",
    "CategoricalObjective",
    "CategoricalPolicy",
    "CategoricalScore",
    "CategoricalStatistics",
    "GumbelSoftmax",
    "StraightThrough",
    "categorical_statistics",
    "closed_form_categorical",
    "gumbel_noise",
    "make_categorical_estimator",
]


# ----------------------------------------------------------------------------- policy, objective


class CategoricalPolicy:
    """π(·|s) = softmax(l) from logits l, (..., B, A), differentiable in θ."""

    def __init__(self, logits: Tensor):
        self.logits = logits

    @property
    def num_actions(self) -> int:
        return self.logits.shape[-1]

    def log_probs(self) -> Tensor:
        """log π_a for every action, (..., B, A)."""
        return torch.log_softmax(self.logits, dim=-1)

    def probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=-1)

    def relaxed(self, noise: Tensor, temperature: float) -> Tensor:
        """y = softmax((l + g)/τ), (K, ..., B, A) for Gumbel noise g (K, ..., B, A)."""
        return torch.softmax((self.logits + noise) / temperature, dim=-1)


@dataclass(frozen=True)
class CategoricalObjective:
    """h(s, a) = α log π(a|s) + f(s, a), f a table (B, A) or a function of (relaxed) one-hot
    vectors y, (..., B, A) ↦ (..., B). f is constant in θ; a function must be differentiable in
    y for the relaxed estimators."""

    f: Tensor | RelaxedFn
    alpha: Tensor | float = 0.0
    obs: Tensor | None = None

    @classmethod
    def from_q(
        cls, q: Tensor, alpha: Tensor | float = 0.0, obs: Tensor | None = None
    ) -> CategoricalObjective:
        """Discrete SAC's h = α log π − Q from a table Q (B, A) (f = −Q)."""
        return cls(-q, alpha, obs)

    def values(self, y: Tensor) -> Tensor:
        """f(y), (..., B): Σ_a y_a f_a for a table (its linear extension), else f(y)."""
        if isinstance(self.f, Tensor):
            return (y * self.f).sum(-1)
        return self.f(y)

    def table(self, policy: CategoricalPolicy) -> Tensor:
        """f at every action, (..., B, A): the table, or f at the A one-hot vectors."""
        if isinstance(self.f, Tensor):
            return self.f.expand_as(policy.logits)
        logits = policy.logits
        eye = torch.eye(policy.num_actions, dtype=logits.dtype, device=logits.device)
        shape = (policy.num_actions, *([1] * (logits.dim() - 1)), policy.num_actions)
        onehots = eye.reshape(shape).expand(policy.num_actions, *logits.shape)
        return self.f(onehots).movedim(0, -1)

    def slope(self, y: Tensor) -> Tensor:
        """c = ∂f/∂y at y (one batched backward; the table itself for a table)."""
        if isinstance(self.f, Tensor):
            return self.f.expand_as(y)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(self.f(y).sum(), y)
        return slope


def gumbel_noise(
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """g = −log(−log U), U ~ Uniform(0, 1) (U ≥ the dtype's tiny, so g is finite)."""
    u = torch.rand(tuple(shape), dtype=dtype, device=device, generator=generator)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(dtype).tiny)))


def _one_hot_argmax(scores: Tensor) -> Tensor:
    """one_hot(argmax_a scores_a) in the scores' dtype."""
    index = scores.argmax(-1)
    return F.one_hot(index, scores.shape[-1]).to(scores.dtype)


def _pick(values: Tensor, onehot: Tensor) -> Tensor:
    """Σ_a values_a onehot_a: the entry of the action that ``onehot`` marks."""
    return (values * onehot).sum(-1)


# ----------------------------------------------------------------------------- estimators


class CategoricalEstimator(ABC):
    """One estimator of ∇θ E_{a~π}[h(s, a)] for π = softmax(l) (module docstring). Noise is
    Gumbel, (K, B, A) for K draws per state; prepared tensors hold the draws first too."""

    name: ClassVar[str]
    samples: int = 1

    @property
    def critic_evaluations_per_state(self) -> int:
        """Evaluations of f per state: K draws; a table (a Q head giving every action's value)
        costs one forward whatever the estimator."""
        return self.samples

    def noise_shape(self, policy: CategoricalPolicy) -> torch.Size:
        return torch.Size((self.samples, *policy.logits.shape))

    def draw(
        self,
        policy: CategoricalPolicy,
        reuse: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Gumbel(0, 1) noise for this estimator's draws (``reuse`` if it has their shape)."""
        shape = self.noise_shape(policy)
        if reuse is not None and reuse.shape == shape:
            return reuse
        logits = policy.logits
        return gumbel_noise(shape, logits.dtype, logits.device, generator)

    @abstractmethod
    def prepare(
        self, policy: CategoricalPolicy, noise: Tensor, objective: CategoricalObjective
    ) -> Prepared:
        """What the surrogate needs of f at the draws, without θ-gradients. Holds ``objective``
        (h at each draw, (K, B)) and ``log_prob`` (log π of each draw's action, (K, B))."""

    @abstractmethod
    def draw_losses(
        self, policy: CategoricalPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """The surrogate of each draw, (K, B): its θ-gradient is that draw's contribution."""

    def row_losses(
        self, policy: CategoricalPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ_i per state, (B,): ∇θ ℓ_i is state i's estimate (the mean of its draws')."""
        return self.draw_losses(policy, noise, prepared, alpha).mean(0)

    def unlikeliness(self, noise: Tensor, prepared: Prepared) -> Tensor:
        """−log π of each draw's action, (K, B) (the tail probe's order)."""
        return -prepared["log_prob"]

    def state_dims(self, noise: Tensor, prepared: Prepared) -> tuple[int, dict[str, int]]:
        """The state dimension of ``noise`` and of each prepared tensor: 1 (after the draws)."""
        return 1, {k: 1 for k in prepared}

    def per_state(
        self, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> tuple[list[Tensor], Callable[..., Tensor]]:
        """For ``vmap(grad(·))`` over states, as
        :meth:`rlgrad.estimators.PolicyGradientEstimator.per_state`: the inputs with the state
        dimension first, and ``row_loss(policy_i, noise_i, *prepared_i)`` on slices that keep
        a state dimension of 1."""
        noise_dim, dims = self.state_dims(noise, prepared)
        keys = list(prepared)
        inputs = [noise.movedim(noise_dim, 0), *(prepared[k].movedim(dims[k], 0) for k in keys)]

        def row_loss(policy: CategoricalPolicy, noise_i: Tensor, *prepared_i: Tensor) -> Tensor:
            state = {k: t.movedim(0, dims[k]) for k, t in zip(keys, prepared_i, strict=True)}
            return self.row_losses(policy, noise_i.movedim(0, noise_dim), state, alpha).sum()

        return inputs, row_loss

    def loss(
        self, policy: CategoricalPolicy, noise: Tensor, objective: CategoricalObjective
    ) -> tuple[Tensor, Tensor]:
        """(the surrogate whose gradient is the batch estimate, J = mean h at the draws)."""
        prepared = self.prepare(policy, noise, objective)
        logits = policy.logits
        alpha = torch.as_tensor(objective.alpha, dtype=logits.dtype, device=logits.device)
        return self.row_losses(policy, noise, prepared, alpha).mean(), prepared["objective"].mean()


class CategoricalExact(CategoricalEstimator):
    """ℓ_i = Σ_a π_a(θ) (α log π_a(θ) + f_a): the exact gradient, zero variance. Draws nothing
    (noise (0, B, A)); one "draw" per state in ``draw_losses``."""

    name = "exact"
    samples = 0

    @property
    def critic_evaluations_per_state(self) -> int:
        """One table; a function f is evaluated at all A one-hot vectors."""
        return 1

    def prepare(
        self, policy: CategoricalPolicy, noise: Tensor, objective: CategoricalObjective
    ) -> Prepared:
        """f at every action (1, B, A), J = Σ_a π_a h_a per state (1, B), and E_a log π_a
        as ``log_prob`` (the "draw" is the whole expectation)."""
        with torch.no_grad():
            table = objective.table(policy).unsqueeze(0)
            log_pi = policy.log_probs().unsqueeze(0)
            pi = log_pi.exp()
            value = (pi * (objective.alpha * log_pi + table)).sum(-1)
        return {"table": table, "objective": value, "log_prob": (pi * log_pi).sum(-1)}

    def draw_losses(
        self, policy: CategoricalPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        log_pi = policy.log_probs().unsqueeze(0)
        return (log_pi.exp() * (alpha * log_pi + prepared["table"])).sum(-1)

    def unlikeliness(self, noise: Tensor, prepared: Prepared) -> Tensor:
        """Zeros: the exact sum has no unlikely draws."""
        return torch.zeros_like(prepared["objective"])


class CategoricalScore(CategoricalEstimator):
    """ĝ = (1/K) Σ_k (h_k − b_k + α) ∇θ log π(a_k), a_k = argmax(l + g_k) held fixed."""

    name = "score"

    def __init__(self, samples: int = 8, baseline: CategoricalBaseline = "loo"):
        if samples < 1:
            raise ValueError(f"score-function samples must be positive, got {samples}")
        if baseline not in ("none", "loo"):
            raise ValueError(f"unknown categorical score baseline {baseline!r}")
        if baseline == "loo" and samples < 2:
            raise ValueError("the loo baseline needs at least 2 samples per state")
        self.samples, self.baseline = samples, baseline

    def prepare(
        self, policy: CategoricalPolicy, noise: Tensor, objective: CategoricalObjective
    ) -> Prepared:
        """The drawn actions (one-hot, (K, B, A)), h at them and the weights h − b + α."""
        with torch.no_grad():
            action = _one_hot_argmax(policy.logits + noise)
            log_prob = _pick(policy.log_probs(), action)
            h = objective.alpha * log_prob + objective.values(action)
            b = leave_one_out_mean(h) if self.baseline == "loo" else torch.zeros_like(h)
            weights = h - b + objective.alpha
        return {"action": action, "objective": h, "log_prob": log_prob, "weights": weights}

    def draw_losses(
        self, policy: CategoricalPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ_k = w_k log πθ(a_k), w = h − b + α held fixed."""
        return prepared["weights"] * _pick(policy.log_probs(), prepared["action"])


class GumbelSoftmax(CategoricalEstimator):
    """ĝ = ∇θ [α Σ_a y_a log π_a(θ) + f(y)], y = softmax((l + g)/τ): relaxed, biased."""

    name = "gumbel_softmax"

    def __init__(self, temperature: float = 1.0, samples: int = 1):
        if not temperature > 0:
            raise ValueError(f"the temperature must be positive, got {temperature}")
        if samples < 1:
            raise ValueError(f"samples must be positive, got {samples}")
        self.temperature, self.samples = float(temperature), samples

    def prepare(
        self, policy: CategoricalPolicy, noise: Tensor, objective: CategoricalObjective
    ) -> Prepared:
        """c = ∂f/∂y at the relaxed draw y, and h̃(y) = α Σ_a y_a log π_a + f(y)."""
        with torch.no_grad():
            y = policy.relaxed(noise, self.temperature)
            log_pi = policy.log_probs()
            value = objective.alpha * (y * log_pi).sum(-1) + objective.values(y)
            log_prob = _pick(log_pi, _one_hot_argmax(y))
        return {"slope": objective.slope(y), "objective": value, "log_prob": log_prob}

    def draw_losses(
        self, policy: CategoricalPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ = α Σ_a y_a(θ) log π_a(θ) + c · y(θ)."""
        y = policy.relaxed(noise, self.temperature)
        return (y * (alpha * policy.log_probs() + prepared["slope"])).sum(-1)


class StraightThrough(GumbelSoftmax):
    """Forward the hard sample one_hot(argmax y), backward through the relaxed y (the
    temperature and draws as :class:`GumbelSoftmax`)."""

    name = "straight_through"

    def prepare(
        self, policy: CategoricalPolicy, noise: Tensor, objective: CategoricalObjective
    ) -> Prepared:
        """The hard sample (K, B, A), c = ∂f/∂y there, and h at it."""
        with torch.no_grad():
            hard = _one_hot_argmax(policy.logits + noise)
            log_prob = _pick(policy.log_probs(), hard)
            value = objective.alpha * log_prob + objective.values(hard)
        return {
            "hard": hard,
            "slope": objective.slope(hard),
            "objective": value,
            "log_prob": log_prob,
        }

    def sample(self, policy: CategoricalPolicy, noise: Tensor, hard: Tensor) -> Tensor:
        """y_st = y_hard + (y − sg(y)): exactly y_hard forward, ∂y/∂θ backward."""
        y = policy.relaxed(noise, self.temperature)
        return hard + (y - y.detach())

    def draw_losses(
        self, policy: CategoricalPolicy, noise: Tensor, prepared: Prepared, alpha: Tensor
    ) -> Tensor:
        """ℓ = α Σ_a y_st,a log π_a(θ) + c_hard · y_st."""
        y = self.sample(policy, noise, prepared["hard"])
        return (y * (alpha * policy.log_probs() + prepared["slope"])).sum(-1)


def make_categorical_estimator(
    name: str,
    samples: int = 8,
    baseline: CategoricalBaseline = "loo",
    temperature: float = 1.0,
) -> CategoricalEstimator:
    """``exact``, ``score`` (K = ``samples``), ``gumbel_softmax`` or ``straight_through`` (one
    draw per state, at ``temperature``)."""
    if name == "exact":
        return CategoricalExact()
    if name == "score":
        return CategoricalScore(samples, baseline)
    if name == "gumbel_softmax":
        return GumbelSoftmax(temperature)
    if name == "straight_through":
        return StraightThrough(temperature)
    raise ValueError(
        f"unknown categorical estimator {name!r}; expected exact, score, gumbel_softmax or "
        "straight_through"
    )


# ----------------------------------------------------------------------------- ground truth


def closed_form_categorical(
    logits: Tensor, f: Tensor, alpha: float | Tensor = 0.0
) -> tuple[Tensor, Tensor]:
    """(J, ∂J/∂l) for J = Σ_a π_a (α log π_a + f_a), π = softmax(l), along the last dim:
    ∂J/∂l_j = π_j (h_j − Σ_a π_a h_a) with h = α log π + f (the α log π term adds
    α Σ_a π_a ∂ log π_a/∂l_j = 0)."""
    log_pi = torch.log_softmax(logits, dim=-1)
    pi = log_pi.exp()
    h = alpha * log_pi + f
    value = (pi * h).sum(-1, keepdim=True)
    return value.squeeze(-1), pi * (h - value)


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class CategoricalStatistics:
    """n per-state estimates ĝ_i ∈ R^P measured against the exact gradient g (float64).

    * ``mean``         ḡ = (1/n) Σ ĝ_i, (P,)
    * ``bias``         ‖ḡ − g‖ / ‖g‖
    * ``bias_stderr``  its standard error by the delta method: with d = ḡ − g and Σ̂ the
      per-sample covariance of the residuals r_i = ĝ_i − g_i, √(dᵀ Σ̂ d / n) / (‖d‖ ‖g‖).
      Valid when the bias is well above ``noise_floor``; near it, ‖d‖ is noise
    * ``noise_floor``  √(tr Σ̂ / n) / ‖g‖, the root of E‖ḡ − g‖²/‖g‖² for an unbiased estimator:
      a ``bias`` of this size is what no bias at all reads as
    * ``variance``     tr Σ̂, the per-sample variance ((n − 1) denominator)
    * ``cosine``       cos(ḡ, g)
    """

    n: int
    mean: Tensor
    bias: float
    bias_stderr: float
    noise_floor: float
    variance: float
    cosine: float


def _flat_exact(exact: Tensor | Sequence[Tensor], n: int, p: int) -> Tensor:
    """The exact gradient as (n, P): one (P,) gradient for every estimate, or n of them."""
    seq = (exact,) if isinstance(exact, Tensor) else tuple(exact)
    numel = sum(e.numel() for e in seq)
    if numel == p:
        return torch.cat([e.reshape(-1) for e in seq]).double().expand(n, p)
    if numel == n * p:
        return flatten_per_sample(seq)[0].double()
    raise ValueError(f"the exact gradient has {numel} numbers; expected P={p} or n·P={n * p}")


def categorical_statistics(
    estimates: Tensor | Sequence[Tensor], exact: Tensor | Sequence[Tensor]
) -> CategoricalStatistics:
    """Bias (relative, with its delta-method standard error), per-sample variance and cosine of
    per-state estimates (n, *shape) or a tuple of them, against the exact gradient: one for all
    (``exact`` shaped like the parameters) or one per state (with a leading n). With one exact
    gradient for all states, Σ̂ includes the spread between states."""
    flat, _ = flatten_per_sample(estimates)
    n, p = flat.shape
    if n < 2:
        raise ValueError("categorical_statistics needs at least 2 per-state estimates")
    g_i = _flat_exact(exact, n, p)
    residual = flat.detach().double() - g_i
    mean, g = flat.detach().double().mean(0), g_i.mean(0)
    d = residual.mean(0)
    centred = residual - d
    cov_d = (centred @ d).pow(2).sum() / (n - 1)  # dᵀ Σ̂ d
    trace = centred.pow(2).sum() / (n - 1)
    g_norm, d_norm = g.norm(), d.norm()
    stderr = (cov_d / n).sqrt() / (d_norm * g_norm) if d_norm > 0 else torch.tensor(math.nan)
    cosine = (mean @ g) / (mean.norm() * g_norm).clamp_min(1e-300)
    return CategoricalStatistics(
        n=n,
        mean=mean,
        bias=float(d_norm / g_norm),
        bias_stderr=float(stderr),
        noise_floor=float((trace / n).sqrt() / g_norm),
        variance=float(trace),
        cosine=float(cosine),
    )
