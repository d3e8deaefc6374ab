"""Score-function and pathwise estimators of ∇θ E_{x~qθ}[f(x)], one estimate per sample.

Maths (see docs/estimators.md; Mohamed, Rosca, Figurnov & Mnih 2020, JMLR):

    G(θ) = ∇θ E_{x~qθ}[f(x)]

* Score function (REINFORCE), x_i ~ qθ drawn without gradient:

      ĝ_i = (f(x_i) − b_i) ∇θ log qθ(x_i)

  unbiased for any baseline b_i independent of x_i: a constant, or the leave-one-out mean
  b_i = (Σ_j f(x_j) − f(x_i)) / (n − 1).

* Pathwise (reparameterization), x_i = g(θ, ε_i) drawn with ``rsample``:

      ĝ_i = ∇θ f(g(θ, ε_i)) = ∇x f(x_i) · ∇θ g(θ, ε_i)

  which needs f differentiable and qθ reparameterizable.

Conventions shared by both estimators:

* ``dist_fn(*params)`` builds qθ; any object with ``log_prob`` and ``sample``/``rsample``
  (every ``torch.distributions`` class, rlgrad's ``Gaussian`` and ``TanhGaussian``).
* ``f`` maps a batch x of shape (n, *event) to values of shape (n,), row by row (row i of the
  output may depend on row i of x only; that is what makes row i of the result the i-th
  single-sample estimate).
* ``log qθ(x_i)`` is reduced to one number per sample by summing ``log_prob(x_i)`` over all its
  dimensions. This makes ``torch.distributions.Normal`` (elementwise ``log_prob``) and rlgrad's
  ``Gaussian`` (``log_prob`` summed over the last dimension) give the same value: the log-density
  of the whole sample x_i, i.e. of a diagonal Gaussian when the parameters are vectors.
* For a distribution with a pre-tanh handle (``rsample_pre_tanh`` and ``log_prob_pre_tanh``, as
  rlgrad's ``TanhGaussian``), the score-function path keeps the pre-tanh sample u, gives f the
  action a = tanh(u) and evaluates log q through u, never through atanh(a) (docs/estimators.md §1).

Vectorisation (no Python loop over samples):

* score: ``vmap(grad(θ ↦ Σ log qθ(x_i)))`` over the samples, x drawn outside the transform;
* pathwise: the whole batch x = qθ.rsample((n,)) is drawn once and ``f(x)`` differentiated in
  forward mode, ``jacfwd(θ ↦ f(qθ.rsample((n,))), randomness="same")``: one forward pass
  batched over the P parameter elements (cheap for a distribution's handful of parameters),
  giving the (n, P) per-sample Jacobian directly. Unlike a vmap over samples, this works for
  distributions whose ``rsample`` draws noise in place (``torch.distributions.Normal``).
  It needs forward-mode formulas for the ops in ``rsample`` and f (standard torch ops and
  ``nn.Module`` layers have them; a custom ``autograd.Function`` needs a ``jvp``; torch's
  implicitly reparameterized Gamma, Beta, Dirichlet have none yet and raise
  NotImplementedError), and memory ~ P × n × event. Before it, f is called once with ordinary
  autograd on a 2-sample probe, so that an f through which no gradient flows is refused
  instead of yielding silent zeros.

The first call in a process pays a one-off cost for torch.func's lazy imports.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import grad, jacfwd, vmap

from rlgrad.estimators.policy import leave_one_out_mean

__all__ = [
    "Baseline",
    "Estimator",
    "GaussianQuadraticMoments",
    "GradientSummary",
    "PerSampleEstimates",
    "closed_form_gaussian_quadratic",
    "flatten_per_sample",
    "per_sample_estimates",
    "per_sample_gradients",
    "mixing_weights",
    "optimal_baseline",
    "optimal_baselines_gaussian_quadratic",
    "summarize",
    "tail_share",
]

Estimator = Literal["score", "pathwise", "mixed"]
Baseline = float | Literal["mean", "optimal"] | None
ESTIMATORS: tuple[str, ...] = ("score", "pathwise", "mixed")

DistFn = Callable[..., Any]
ValueFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class PerSampleEstimates:
    """Single-sample gradient estimates together with the draws that produced them.

    ``grads[k][i]`` is the i-th single-sample estimate of ∂E[f]/∂params[k], shape
    (n, *params[k].shape); ``x`` the samples f saw, shape (n, *event); ``values`` = f(x), (n,).
    All tensors are detached.
    """

    grads: tuple[Tensor, ...]
    x: Tensor
    values: Tensor
    log_prob: Tensor | None = None
    """log qθ of each sample (n,), for :func:`tail_share`."""
    mix_weights: tuple[float, ...] | None = None
    """``"mixed"``: the pathwise weight w of each parameter, from the independent pilot."""


# ----------------------------------------------------------------------------- public API


def per_sample_gradients(
    f: ValueFn,
    dist_fn: DistFn,
    params: Sequence[Tensor],
    n: int,
    estimator: Estimator = "score",
    baseline: Baseline = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ...]:
    """n single-sample estimates of ∇θ E_{x~qθ}[f(x)], qθ = ``dist_fn(*params)``.

    Returns a tuple shaped like ``params``: element k has shape (n, *params[k].shape) and its
    row i is the i-th single-sample estimate (their mean is the usual batch estimate).
    See :func:`per_sample_estimates` for the arguments; this returns its ``grads``.
    """
    return per_sample_estimates(f, dist_fn, params, n, estimator, baseline, generator).grads


def per_sample_estimates(
    f: ValueFn,
    dist_fn: DistFn,
    params: Sequence[Tensor],
    n: int,
    estimator: Estimator = "score",
    baseline: Baseline = None,
    generator: torch.Generator | None = None,
) -> PerSampleEstimates:
    """Per-sample estimates of ∇θ E_{x~qθ}[f(x)], with the samples x and the values f(x).

    Args:
        f: maps x of shape (n, *event) to (n,), row by row. Only its values are used by
            ``"score"`` (f may be a black box); ``"pathwise"`` differentiates through it.
        dist_fn: builds qθ from the parameters, ``dist_fn(*params)``.
        params: the parameters θ (floating-point tensors; their ``requires_grad`` is ignored).
        n: the number of samples.
        estimator: ``"score"``: (f(x_i) − b_i) ∇θ log qθ(x_i); ``"pathwise"``:
            ∇θ f(g(θ, ε_i)); ``"mixed"``: w_k ĝ_PW + (1 − w_k) ĝ_SF per parameter k on the same
            draws, w_k from an independent pilot of n draws (:func:`mixing_weights`), so the
            combination stays unbiased.
        baseline: score function (and the score half of ``"mixed"``) only. ``None`` (b = 0),
            a float constant b, ``"mean"``: the leave-one-out mean b_i = (Σ_j f_j − f_i)/(n − 1),
            which keeps the estimate unbiased (the rows are then weakly dependent, with O(1/n)
            correlations), or ``"optimal"``: the variance-minimising constant per parameter
            element, b*_j = E[f s_j²]/E[s_j²] (s = ∇θ log q), estimated leave-one-out:
            b_ij = (Σ_k f_k s_kj² − f_i s_ij²)/(Σ_k s_kj² − s_ij²).
        generator: a ``torch.Generator`` for reproducible draws. Passed to ``sample``/``rsample``
            when they accept one (rlgrad's distributions); otherwise (``torch.distributions``)
            one seed is drawn from it and the global RNG is forked and seeded with it, so the
            caller's global RNG state is left untouched.

    Raises:
        ValueError: unknown ``estimator`` or ``baseline``; a baseline with ``"pathwise"``;
            ``"pathwise"`` on a distribution without ``rsample`` (``has_rsample`` False) or with
            an f whose output does not depend differentiably on x; f's output not of shape (n,).
    """
    _check_arguments(estimator, baseline, n)
    theta = _as_params(params)
    if estimator == "score":
        return _score(f, dist_fn, theta, n, baseline, generator)
    if estimator == "mixed":
        return _mixed(f, dist_fn, theta, n, baseline, generator)
    if baseline is not None:
        raise ValueError(
            "baseline applies only to estimator='score'; the pathwise estimator needs none "
            f"(∇θ b = 0), got baseline={baseline!r}"
        )
    return _pathwise(f, dist_fn, theta, n, generator)


# ----------------------------------------------------------------------------- score function


def _score(
    f: ValueFn,
    dist_fn: DistFn,
    theta: tuple[Tensor, ...],
    n: int,
    baseline: Baseline,
    generator: torch.Generator | None,
) -> PerSampleEstimates:
    """ĝ_i = (f(x_i) − b_i) ∇θ Σ log qθ(x_i): per-sample scores by vmap(grad) over fixed x."""
    dist = dist_fn(*theta)
    pre_tanh = _has_pre_tanh(dist)
    draw = dist.rsample_pre_tanh if pre_tanh else dist.sample
    with torch.no_grad(), _rng(draw, generator, theta[0].device) as kwargs:
        z = draw((n,), **kwargs).detach()
    x = torch.tanh(z) if pre_tanh else z
    with torch.no_grad():
        values = _check_values(f(x), n)
    scores, log_prob = _scores_at(dist_fn, theta, z, pre_tanh)
    grads = _score_estimates(values, scores, baseline)
    return PerSampleEstimates(grads=grads, x=x, values=values, log_prob=log_prob)


def _scores_at(
    dist_fn: DistFn, theta: tuple[Tensor, ...], z: Tensor, pre_tanh: bool
) -> tuple[tuple[Tensor, ...], Tensor]:
    """(∇θ Σ log qθ(z_i) per sample, log qθ(z_i)) at fixed draws z (pre-tanh u where the
    distribution has that handle)."""

    log_q = _log_q(dist_fn, pre_tanh)
    scores = vmap(grad(log_q), in_dims=(None, 0))(theta, z)
    return scores, _log_q_per_sample(dist_fn, theta, z, pre_tanh)


def _log_q(dist_fn: DistFn, pre_tanh: bool) -> Callable[[tuple[Tensor, ...], Tensor], Tensor]:
    """(θ, z_i) ↦ Σ log qθ(z_i): one sample's log-density, summed over all its dimensions."""

    def log_q(params: tuple[Tensor, ...], z_i: Tensor) -> Tensor:
        q = dist_fn(*params)
        log_prob = q.log_prob_pre_tanh(z_i) if pre_tanh else q.log_prob(z_i)
        return log_prob.sum()

    return log_q


def _log_q_per_sample(
    dist_fn: DistFn, theta: tuple[Tensor, ...], z: Tensor, pre_tanh: bool
) -> Tensor:
    """log qθ(z_i) for every sample, (n,), without gradients."""
    with torch.no_grad():
        return vmap(_log_q(dist_fn, pre_tanh), in_dims=(None, 0))(theta, z)


def _score_estimates(
    values: Tensor, scores: tuple[Tensor, ...], baseline: Baseline
) -> tuple[Tensor, ...]:
    """(f_i − b_i) s_i per parameter; with ``"optimal"`` b is per element (leave-one-out)."""
    if baseline == "optimal":
        return tuple((_expand(values, s) - optimal_baseline(values, s)) * s for s in scores)
    weights = values - _baseline_values(values, baseline)
    return tuple(_expand(weights, s) * s for s in scores)


def _expand(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def optimal_baseline(values: Tensor, scores: Tensor) -> Tensor:
    """b_ij = (Σ_k f_k s_kj² − f_i s_ij²)/(Σ_k s_kj² − s_ij²): the variance-minimising constant
    baseline b*_j = E[f s_j²]/E[s_j²] of each element j, estimated from the other samples
    (leave-one-out), so that b_ij does not depend on sample i. (n, *shape) like ``scores``."""
    f = _expand(values.double(), scores)
    sq = scores.double().pow(2)
    num, den = (f * sq).sum(0, keepdim=True) - f * sq, sq.sum(0, keepdim=True) - sq
    return torch.where(den > 0, num / den.clamp_min(1e-300), 0.0).to(scores.dtype)


def _baseline_values(values: Tensor, baseline: Baseline) -> Tensor:
    """b_i: 0, a constant, or the leave-one-out mean (Σ_j f_j − f_i)/(n − 1)."""
    if baseline is None:
        return torch.zeros_like(values)
    if isinstance(baseline, str):  # "mean", checked by _check_arguments
        # The score-function estimator's leave-one-out baseline, over the n draws.
        return leave_one_out_mean(values.double()).to(values.dtype)
    return torch.full_like(values, float(baseline))


# ----------------------------------------------------------------------------- mixed


def mixing_weights(pathwise: Sequence[Tensor], score: Sequence[Tensor]) -> tuple[float, ...]:
    """The pathwise weight w_k per parameter k minimising the variance of w ĝ_PW + (1 − w) ĝ_SF:

        w* = (σ_SF² − σ_PS) / (σ_PW² + σ_SF² − 2 σ_PS),  clipped to [0, 1],

    with σ² the traces of the two estimators' per-sample covariances over the parameter's
    elements and σ_PS the trace of their cross-covariance, from paired estimates (row i of both
    from the same draw). Estimated on samples independent of those it weights, the combination
    stays unbiased (docs/estimators.md §6)."""
    weights = []
    for a, b in zip(pathwise, score, strict=True):
        a = a.reshape(a.shape[0], -1).double()
        b = b.reshape(b.shape[0], -1).double()
        a, b = a - a.mean(0), b - b.mean(0)
        n = a.shape[0]
        var_a, var_b = a.pow(2).sum() / (n - 1), b.pow(2).sum() / (n - 1)
        cov = (a * b).sum() / (n - 1)
        denom = var_a + var_b - 2 * cov
        w = (var_b - cov) / denom if denom > 0 else torch.tensor(0.5)
        weights.append(float(w.clamp(0.0, 1.0)))
    return tuple(weights)


def _paired(
    f: ValueFn,
    dist_fn: DistFn,
    theta: tuple[Tensor, ...],
    n: int,
    baseline: Baseline,
    generator: torch.Generator | None,
) -> tuple[PerSampleEstimates, tuple[Tensor, ...]]:
    """Pathwise estimates and score-function estimates on the same n draws."""
    pathwise, handle = _pathwise_with_handle(f, dist_fn, theta, n, generator)
    scores, _ = _scores_at(dist_fn, theta, handle, _has_pre_tanh(dist_fn(*theta)))
    return pathwise, _score_estimates(pathwise.values, scores, baseline)


def _mixed(
    f: ValueFn,
    dist_fn: DistFn,
    theta: tuple[Tensor, ...],
    n: int,
    baseline: Baseline,
    generator: torch.Generator | None,
) -> PerSampleEstimates:
    """w ĝ_PW + (1 − w) ĝ_SF per parameter on n draws, w from an independent pilot of n."""
    pilot_pw, pilot_sf = _paired(f, dist_fn, theta, n, baseline, generator)
    weights = mixing_weights(pilot_pw.grads, pilot_sf)
    main_pw, main_sf = _paired(f, dist_fn, theta, n, baseline, generator)
    grads = tuple(
        w * g_pw + (1.0 - w) * g_sf
        for w, g_pw, g_sf in zip(weights, main_pw.grads, main_sf, strict=True)
    )
    return PerSampleEstimates(
        grads=grads,
        x=main_pw.x,
        values=main_pw.values,
        log_prob=main_pw.log_prob,
        mix_weights=weights,
    )


# ----------------------------------------------------------------------------- tail probe


def tail_share(
    grads: Tensor | Sequence[Tensor], log_prob: Tensor, fraction: float = 0.05
) -> Tensor:
    """Σ_{i∈T} ‖g_i‖² / Σ_i ‖g_i‖², T the ⌈fraction·n⌉ samples least likely under q (lowest
    log q; for a Gaussian, the largest ‖ε‖). ``fraction`` means the tails carry their share;
    near 1, a few rare draws carry the estimate (docs/estimators.md §6)."""
    flat, _ = flatten_per_sample(grads)
    sq = flat.double().pow(2).sum(1)
    k = max(1, math.ceil(fraction * sq.shape[0]))
    tail = torch.topk(-log_prob.double().reshape(-1), k).indices
    return sq[tail].sum() / sq.sum().clamp_min(1e-300)


# ----------------------------------------------------------------------------- pathwise


def _pathwise(
    f: ValueFn,
    dist_fn: DistFn,
    theta: tuple[Tensor, ...],
    n: int,
    generator: torch.Generator | None,
) -> PerSampleEstimates:
    """ĝ_i = ∂f(x_i)/∂θ with x = qθ.rsample((n,)): the per-sample Jacobian by forward mode."""
    return _pathwise_with_handle(f, dist_fn, theta, n, generator)[0]


def _pathwise_with_handle(
    f: ValueFn,
    dist_fn: DistFn,
    theta: tuple[Tensor, ...],
    n: int,
    generator: torch.Generator | None,
) -> tuple[PerSampleEstimates, Tensor]:
    """The pathwise estimates and the draws' handle: the pre-tanh u where the distribution has
    one (x = tanh u), x itself otherwise."""
    dist = dist_fn(*theta)
    if not getattr(dist, "has_rsample", False):
        raise ValueError(
            f"estimator='pathwise' needs a reparameterizable distribution, but "
            f"{type(dist).__name__} has no rsample (has_rsample is False); use estimator='score'"
        )
    _check_differentiable(f, dist_fn, theta)
    pre_tanh = _has_pre_tanh(dist)
    argnums = tuple(range(len(theta)))
    draw = dist.rsample_pre_tanh if pre_tanh else dist.rsample
    with _rng(draw, generator, theta[0].device) as rng_kwargs:

        def values_of(*params: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
            q = dist_fn(*params)
            z = (
                q.rsample_pre_tanh((n,), **rng_kwargs)
                if pre_tanh
                else q.rsample((n,), **rng_kwargs)
            )
            x = torch.tanh(z) if pre_tanh else z
            y = _check_values(f(x), n)
            return y, (z.detach(), x.detach(), y.detach())

        jac, (z, x, values) = jacfwd(values_of, argnums=argnums, has_aux=True, randomness="same")(
            *theta
        )
    grads = tuple(jac)
    if all(bool((g == 0).all()) for g in grads):
        warnings.warn(
            "every pathwise estimate is exactly zero: f may be piecewise constant in x "
            "(its gradient is zero almost everywhere); the score function may be what you want",
            RuntimeWarning,
            stacklevel=4,
        )
    log_prob = _log_q_per_sample(dist_fn, theta, z, pre_tanh)
    return PerSampleEstimates(grads=grads, x=x, values=values, log_prob=log_prob), z


def _check_differentiable(f: ValueFn, dist_fn: DistFn, theta: tuple[Tensor, ...]) -> None:
    """Refuse an f (or an rsample) through which no gradient flows, on a 2-sample probe.

    Forward-mode differentiation of a disconnected f silently gives zeros, so this is checked
    with ordinary autograd first. The probe runs on a forked global RNG: it changes no state.
    """
    with torch.random.fork_rng(devices=_cuda_devices(theta[0].device)), torch.enable_grad():
        leaves = tuple(p.detach().requires_grad_() for p in theta)
        x = dist_fn(*leaves).rsample((2,))
        if not x.requires_grad:
            raise ValueError(
                "estimator='pathwise': rsample of the distribution returned a sample that does "
                "not depend differentiably on the parameters"
            )
        y = f(x)
    if not isinstance(y, Tensor) or not y.requires_grad:
        raise ValueError(
            "estimator='pathwise' needs f differentiable in x, but f's output does not require "
            "grad (f uses comparisons, .detach(), numpy, integer casts, ...): its pathwise "
            "gradient would be a silent zero; use estimator='score' for a black-box f"
        )


# ----------------------------------------------------------------------------- helpers


def _check_arguments(estimator: str, baseline: object, n: int) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if baseline is None:
        return
    if isinstance(baseline, str):
        if baseline not in ("mean", "optimal"):
            raise ValueError(
                f"unknown baseline {baseline!r}; expected None, a float, 'mean' or 'optimal'"
            )
        if n < 2:
            raise ValueError(f"baseline={baseline!r} (leave-one-out) needs n >= 2")
        return
    if isinstance(baseline, bool) or not isinstance(baseline, numbers.Real):
        raise ValueError(
            f"unknown baseline {baseline!r}; expected None, a float, 'mean' or 'optimal'"
        )
    if not math.isfinite(float(baseline)):
        raise ValueError(f"baseline must be finite, got {baseline!r}")


def _as_params(params: Sequence[Tensor] | Tensor) -> tuple[Tensor, ...]:
    """The parameters as a tuple of detached floating-point tensors."""
    seq = (params,) if isinstance(params, Tensor) else tuple(params)
    if not seq:
        raise ValueError("params is empty")
    for p in seq:
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise ValueError(f"every parameter must be a floating-point tensor, got {p!r}")
    return tuple(p.detach() for p in seq)


def _check_values(y: object, n: int) -> Tensor:
    if not isinstance(y, Tensor) or tuple(y.shape) != (n,):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"f must map a batch of n={n} samples to a tensor of shape ({n},), got {shape}"
        )
    return y


def _has_pre_tanh(dist: object) -> bool:
    return hasattr(dist, "rsample_pre_tanh") and hasattr(dist, "log_prob_pre_tanh")


def _accepts_generator(method: Callable[..., Any]) -> bool:
    try:
        return "generator" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _cuda_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


@contextmanager
def _rng(
    method: Callable[..., Any], generator: torch.Generator | None, device: torch.device
) -> Iterator[dict[str, Any]]:
    """Keyword arguments that make ``method`` draw from ``generator``.

    With no generator: the global RNG, as usual. With a method that takes ``generator=``: pass
    it. Otherwise: fork the global RNG, seed it with a number drawn from the generator.
    """
    if generator is None:
        yield {}
    elif _accepts_generator(method):
        yield {"generator": generator}
    else:
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=_cuda_devices(device)):
            torch.manual_seed(seed)
            yield {}


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class GradientSummary:
    """Statistics of n per-sample gradient estimates g_1 … g_n ∈ R^P (docs/estimators.md §4),
    named as the diagnostics name them (``variance``, ``batch_variance``, ``snr``).

    All in float64, flattened over the parameters in order (``unflatten`` splits them back):

    * ``mean``      ḡ = (1/n) Σ g_i, shape (P,)
    * ``var``       per-element unbiased variance (1/(n−1)) Σ (g_i − ḡ)², shape (P,)
    * ``variance``  tr Σ̂ = Σ_p var_p, the per-sample variance, shape ()
    * ``stderr``    standard error of each element of ḡ, √(var/n), shape (P,)
    * ``snr``       ‖ḡ‖² / (tr Σ̂ / n), shape () (inf when every sample is identical)
    """

    n: int
    mean: Tensor
    var: Tensor
    variance: Tensor
    stderr: Tensor
    snr: Tensor
    shapes: tuple[torch.Size, ...]

    @property
    def batch_variance(self) -> Tensor:
        """tr Σ̂ / n: the variance of the batch estimate ḡ."""
        return self.variance / self.n

    @property
    def trace_var(self) -> Tensor:
        """``variance`` under its earlier name (kept for existing code)."""
        return self.variance

    @property
    def batch_var(self) -> Tensor:
        """``batch_variance`` under its earlier name (kept for existing code)."""
        return self.batch_variance

    def unflatten(self, flat: Tensor) -> tuple[Tensor, ...]:
        """Split a (P,) vector (``mean``, ``var``, ``stderr``) into the parameters' shapes."""
        sizes = [math.prod(s) for s in self.shapes]
        return tuple(c.reshape(s) for c, s in zip(flat.split(sizes), self.shapes, strict=True))


def flatten_per_sample(grads: Tensor | Sequence[Tensor]) -> tuple[Tensor, tuple[torch.Size, ...]]:
    """(n, P) matrix of per-sample estimates, and the per-parameter shapes it came from.

    ``grads`` is a tuple of (n, *shape_k) tensors (as :func:`per_sample_gradients` returns) or a
    single tensor: (n,) or (n, P) or (n, *shape), read as one parameter.
    """
    seq = (grads,) if isinstance(grads, Tensor) else tuple(grads)
    if not seq or any(g.dim() < 1 for g in seq):
        raise ValueError("expected per-sample tensors of shape (n, ...)")
    n = seq[0].shape[0]
    if any(g.shape[0] != n for g in seq):
        raise ValueError(f"per-sample tensors disagree on n: {[g.shape[0] for g in seq]}")
    flat = torch.cat([g.reshape(n, -1) for g in seq], dim=1)
    return flat, tuple(g.shape[1:] for g in seq)


def summarize(grads: Tensor | Sequence[Tensor]) -> GradientSummary:
    """Mean, unbiased variance, its trace, standard errors and SNR of per-sample estimates.

    Accepts what :func:`per_sample_gradients` returns or a flat (n, P) matrix; needs n ≥ 2.
    """
    flat, shapes = flatten_per_sample(grads)
    n = flat.shape[0]
    if n < 2:
        raise ValueError("summarize needs at least 2 per-sample estimates")
    g = flat.detach().to(torch.float64)
    mean = g.mean(dim=0)
    var = (g - mean).pow(2).sum(dim=0) / (n - 1)
    trace_var = var.sum()
    return GradientSummary(
        n=n,
        mean=mean,
        var=var,
        variance=trace_var,
        stderr=(var / n).sqrt(),
        snr=mean.pow(2).sum() / (trace_var / n),
        shapes=shapes,
    )


# ----------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class GaussianQuadraticMoments:
    """True gradient and single-sample variances for x ~ N(μ, σ²), f(x) = (x − k)²."""

    grad_mu: float
    grad_sigma: float
    var_pathwise_mu: float
    var_pathwise_sigma: float
    var_score_mu: float
    var_score_sigma: float


def closed_form_gaussian_quadratic(
    mu: float, sigma: float, k: float, baseline: float = 0.0
) -> GaussianQuadraticMoments:
    """docs/estimators.md §5 in closed form, extended to a constant score-function baseline b.

    With d = μ − k and c = E[f] − b = d² + σ² − b (x = μ + σε, ε ~ N(0, 1)):

        ∂μ E f = 2d,  ∂σ E f = 2σ
        pathwise:  Var ∂μ = 4σ²,  Var ∂σ = 4d² + 8σ²
        score:     Var ∂μ = (c² + 4cσ² + 8d²σ² + 10σ⁴) / σ²
                   Var ∂σ = (2c² + 16cσ² + 40d²σ² + 56σ⁴) / σ²

    b = 0 gives the §4 table, (d⁴ + 14d²σ² + 15σ⁴)/σ² and 2(d⁴ + 30d²σ² + 37σ⁴)/σ²; b = E f
    (c = 0) gives 8d² + 10σ² and 40d² + 56σ². The variance-minimising constants differ per
    parameter: c = −2σ² for ∂μ and c = −4σ² for ∂σ (the optimal constant baseline b*_j).
    Derivation: expand (f − b)·ε/σ and (f − b)(ε² − 1)/σ as polynomials in ε and use
    E ε^{2m} = (2m − 1)!!.
    """
    d = mu - k
    s2 = sigma * sigma
    c = d * d + s2 - baseline
    return GaussianQuadraticMoments(
        grad_mu=2.0 * d,
        grad_sigma=2.0 * sigma,
        var_pathwise_mu=4.0 * s2,
        var_pathwise_sigma=4.0 * d * d + 8.0 * s2,
        var_score_mu=(c * c + 4.0 * c * s2 + 8.0 * d * d * s2 + 10.0 * s2 * s2) / s2,
        var_score_sigma=(2.0 * c * c + 16.0 * c * s2 + 40.0 * d * d * s2 + 56.0 * s2 * s2) / s2,
    )


def optimal_baselines_gaussian_quadratic(mu: float, sigma: float, k: float) -> tuple[float, float]:
    """(b*_μ, b*_σ) = (d² + 3σ², d² + 5σ²), d = μ − k: the variance-minimising constant
    baselines E[f s_j²]/E[s_j²] for x ~ N(μ, σ²), f(x) = (x − k)² (docs/estimators.md §6).

    With x = μ + σε: s_μ = ε/σ, so b*_μ = E[(d + σε)² ε²] = d² + 3σ²; s_σ = (ε² − 1)/σ, with
    E[(ε² − 1)²] = 2 and E[ε²(ε² − 1)²] = 15 − 6 + 1 = 10, so b*_σ = (2d² + 10σ²)/2 = d² + 5σ².
    In :func:`closed_form_gaussian_quadratic` they are the c = −2σ² and c = −4σ² minima.
    """
    d2, s2 = (mu - k) ** 2, sigma * sigma
    return d2 + 3.0 * s2, d2 + 5.0 * s2
