"""Diagonal Gaussian, tanh-squashed Gaussian and categorical policies' distributions.

Both follow the small interface that the estimators rely on (``rsample``, ``sample``,
``log_prob``, ``entropy``, ``has_rsample``), and both treat the last dimension as the
action dimension: ``log_prob`` sums over it.

Maths (per action dimension j, with u = μ + σ ε, ε ~ N(0, 1)):

    log N(u; μ, σ) = −(u − μ)² / (2σ²) − log σ − ½ log 2π

For a = tanh(u) the change of variables gives

    log π(a) = Σ_j [ log N(u_j; μ_j, σ_j) − log(1 − tanh²(u_j)) ]

and ``log(1 − tanh²(u))`` is evaluated in the stable form ``2 (log 2 − u − softplus(−2u))``,
which stays finite for any u, where the naive float32 formula gives −inf once |u| ≳ 9.

``Categorical`` is π = softmax(l) over A actions from logits l. Actions are stored the way the
buffers store every action, as a float tensor with a last dimension of size 1 holding the
index; ``log_prob`` reads log π_a = l_a − logsumexp(l) at that index and ``entropy`` is
−Σ_a π_a log π_a.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)
_LOG_TWO = math.log(2.0)


def log_one_minus_tanh_squared(u: torch.Tensor) -> torch.Tensor:
    """``log(1 − tanh²(u))`` computed as ``2 (log 2 − u − softplus(−2u))``, finite for all u."""
    return 2.0 * (_LOG_TWO - u - F.softplus(-2.0 * u))


class Gaussian:
    """Diagonal Gaussian N(μ, diag σ²) over the last dimension.

    ``mean`` and ``std`` broadcast against each other; ``std`` must be positive.
    """

    has_rsample = True

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = torch.broadcast_tensors(mean, std)

    @classmethod
    def from_log_std(cls, mean: torch.Tensor, log_std: torch.Tensor) -> Gaussian:
        return cls(mean, log_std.exp())

    def _shape(self, sample_shape: torch.Size | tuple[int, ...]) -> torch.Size:
        return torch.Size(sample_shape) + self.mean.shape

    def rsample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Pathwise sample x = μ + σ ε: differentiable in μ and σ."""
        eps = torch.randn(
            self._shape(sample_shape),
            dtype=self.mean.dtype,
            device=self.mean.device,
            generator=generator,
        )
        return self.mean + self.std * eps

    def sample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """A sample that carries no gradient (for the score-function estimator)."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_j log N(x_j; μ_j, σ_j), summed over the last dimension."""
        z = (x - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.std.log() - _HALF_LOG_TWO_PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Σ_j (½ log 2πe + log σ_j)."""
        return (0.5 + _HALF_LOG_TWO_PI + self.std.log()).sum(-1)

    @property
    def mode(self) -> torch.Tensor:
        return self.mean


class TanhGaussian:
    """a = tanh(u), u ~ N(μ, diag σ²): SAC's squashed Gaussian on (−1, 1)^d.

    The pre-tanh sample u is the stable handle on a: ``rsample_with_log_prob`` and
    ``log_prob(a, pre_tanh=u)`` never invert tanh. ``log_prob(a)`` without u recovers it with
    a clamped atanh, which loses precision as |a| → 1; prefer passing u.
    """

    has_rsample = True

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.base = Gaussian(mean, std)

    @classmethod
    def from_log_std(cls, mean: torch.Tensor, log_std: torch.Tensor) -> TanhGaussian:
        return cls(mean, log_std.exp())

    @property
    def mean(self) -> torch.Tensor:
        """The pre-tanh mean μ (``mode`` is tanh(μ))."""
        return self.base.mean

    @property
    def std(self) -> torch.Tensor:
        return self.base.std

    @property
    def mode(self) -> torch.Tensor:
        """tanh(μ): the deterministic action."""
        return torch.tanh(self.base.mean)

    def rsample_pre_tanh(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self.base.rsample(sample_shape, generator)

    def rsample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return torch.tanh(self.base.rsample(sample_shape, generator))

    def sample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def log_prob_pre_tanh(self, u: torch.Tensor) -> torch.Tensor:
        """log π(tanh u) = Σ_j [log N(u_j; μ_j, σ_j) − log(1 − tanh²(u_j))]."""
        return self.base.log_prob(u) - log_one_minus_tanh_squared(u).sum(-1)

    def log_prob(self, a: torch.Tensor, pre_tanh: torch.Tensor | None = None) -> torch.Tensor:
        if pre_tanh is None:
            eps = torch.finfo(a.dtype).eps
            pre_tanh = torch.atanh(a.clamp(-1.0 + eps, 1.0 - eps))
        return self.log_prob_pre_tanh(pre_tanh)

    def rsample_with_log_prob(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, log π(a)) with a reparameterized: both differentiable in μ and σ."""
        u = self.base.rsample(sample_shape, generator)
        return torch.tanh(u), self.log_prob_pre_tanh(u)

    def entropy(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A single-sample Monte Carlo estimate −log π(a), a ~ π (no closed form exists)."""
        _, log_prob = self.rsample_with_log_prob(generator=generator)
        return -log_prob


def squashed_gaussian_sample(
    mean: torch.Tensor,
    raw_log_std: torch.Tensor,
    eps: torch.Tensor,
    log_std_min: float,
    log_std_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, log π(a)) for a = tanh(u), u = μ + σ ε, σ = exp(clamp(raw log σ, min, max)).

    SAC's reparameterized action from its actor's two heads and a standard-normal draw ε: the
    reference that ``rlgrad.kernels`` may replace by a fused stand-in."""
    policy = TanhGaussian.from_log_std(mean, raw_log_std.clamp(log_std_min, log_std_max))
    u = policy.mean + policy.std * eps
    return torch.tanh(u), policy.log_prob_pre_tanh(u)


class Categorical:
    """π = softmax(l) over the last dimension of ``logits`` (..., A); actions (..., 1) hold the
    index as a float (the buffers' layout), so ``sample`` and ``mode`` return (..., 1)."""

    has_rsample = False

    def __init__(self, logits: torch.Tensor):
        self.log_probs = torch.log_softmax(logits, dim=-1)

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One action per row, drawn with probabilities π, as (..., 1) floats."""
        with torch.no_grad():
            flat = self.probs.reshape(-1, self.log_probs.shape[-1])
            index = torch.multinomial(flat, 1, generator=generator)
            return index.reshape(*self.log_probs.shape[:-1], 1).to(self.log_probs.dtype)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """log π_a at the index a stored in ``actions`` (..., 1)."""
        return self.log_probs.gather(-1, actions.long()).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        """−Σ_a π_a log π_a."""
        return -(self.probs * self.log_probs).sum(-1)

    @property
    def mode(self) -> torch.Tensor:
        """argmax_a π_a, as (..., 1) floats."""
        return self.log_probs.argmax(-1, keepdim=True).to(self.log_probs.dtype)
