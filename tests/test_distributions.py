"""Tests of rlgrad.distributions against torch.distributions and float64 references.

Reference for the tanh Jacobian term: log(1 − tanh²u) = −2 log cosh u
= 2 (log 2 − |u| − log1p(exp(−2|u|))), evaluated in float64. Unlike log1p(−tanh²u) (tanh rounds
to ±1 once |u| ≳ 19 in float64) or torch's softplus (linear above its threshold of 20, an
absolute error up to e⁻²⁰ ≈ 2e−9), this form is accurate to a few ulp for every finite u;
``test_reference_is_exact`` checks it against mpmath.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from rlgrad.distributions import Gaussian, TanhGaussian, log_one_minus_tanh_squared

SHAPES = [(1,), (5,), (4, 3), (2, 3, 6)]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}


def _params(shape, dtype, seed=0, mean_scale=1.0, log_std_scale=0.7):
    g = torch.Generator().manual_seed(seed)
    mean = (torch.randn(shape, generator=g, dtype=torch.float64) * mean_scale).to(dtype)
    log_std = (torch.randn(shape, generator=g, dtype=torch.float64) * log_std_scale).to(dtype)
    return mean, log_std.exp(), g


def ref_log_one_minus_tanh_sq(u: torch.Tensor) -> torch.Tensor:
    """log(1 − tanh²u) in float64, accurate for all finite u (see module docstring)."""
    a = u.double().abs()
    return 2.0 * (math.log(2.0) - a - torch.log1p(torch.exp(-2.0 * a)))


def ref_tanh_log_prob(mean, std, u) -> torch.Tensor:
    """Σ_j [log N(u_j; μ_j, σ_j) − log(1 − tanh² u_j)] in float64."""
    normal = Normal(mean.double(), std.double()).log_prob(u.double())
    return (normal - ref_log_one_minus_tanh_sq(u)).sum(-1)


# ----------------------------------------------------------------------------- Gaussian


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_log_prob_and_entropy_match_torch(shape, dtype):
    mean, std, g = _params(shape, dtype)
    dist = Gaussian(mean, std)
    ref = Normal(mean, std)
    # x with two leading sample dimensions, far into the tails as well as near the mean
    x = (torch.randn((7, 2, *shape), generator=g, dtype=torch.float64) * 4).to(dtype)
    log_prob = dist.log_prob(x)
    assert log_prob.shape == (7, 2, *shape[:-1]) and log_prob.dtype == dtype
    torch.testing.assert_close(log_prob, ref.log_prob(x).sum(-1), **TOL[dtype])
    entropy = dist.entropy()
    assert entropy.shape == shape[:-1]
    torch.testing.assert_close(entropy, ref.entropy().sum(-1), **TOL[dtype])


def test_gaussian_broadcasts_state_independent_std():
    # PPO-style: per-state mean (B, d), one log_std vector (d,)
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(6, 3, generator=g, dtype=torch.float64)
    log_std = torch.randn(3, generator=g, dtype=torch.float64)
    dist = Gaussian.from_log_std(mean, log_std)
    assert dist.mean.shape == dist.std.shape == (6, 3)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    ref = Normal(mean, log_std.exp())
    torch.testing.assert_close(dist.log_prob(x), ref.log_prob(x).sum(-1))
    torch.testing.assert_close(dist.entropy(), ref.entropy().sum(-1))


def test_gaussian_log_prob_gradients_match_torch():
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    log_std = (0.5 * torch.randn(5, 4, generator=g, dtype=torch.float64)).requires_grad_()
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad(
        Gaussian.from_log_std(mean, log_std).log_prob(x).sum(), [mean, log_std]
    )
    ref = torch.autograd.grad(Normal(mean, log_std.exp()).log_prob(x).sum(), [mean, log_std])
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_gaussian_rsample_is_pathwise_and_sample_is_not():
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    std = torch.rand(2, 3, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    dist = Gaussian(mean, std)

    g.manual_seed(10)
    x = dist.rsample((5,), generator=g)
    assert x.shape == (5, 2, 3) and x.requires_grad
    eps = ((x - mean) / std).detach()
    x.sum().backward()
    # x = μ + σ ε: ∂Σx/∂μ = number of samples, ∂Σx/∂σ = Σ ε over samples
    torch.testing.assert_close(mean.grad, torch.full_like(mean, 5.0))
    torch.testing.assert_close(std.grad, eps.sum(0))

    g.manual_seed(10)
    s = dist.sample((5,), generator=g)
    assert not s.requires_grad and s.grad_fn is None
    torch.testing.assert_close(s, x.detach())  # same noise, same values


def test_gaussian_samples_have_the_right_moments():
    mean = torch.tensor([0.0, -3.0, 2.5, 10.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.1, 2.0, 5.0], dtype=torch.float64)
    n = 200_000
    g = torch.Generator().manual_seed(1234)
    x = Gaussian(mean, std).sample((n,), generator=g)
    assert x.shape == (n, 4) and x.dtype == torch.float64
    # 5 standard errors: SE(mean) = σ/√n, SE(std) ≈ σ/√(2n)
    assert ((x.mean(0) - mean).abs() < 5 * std / math.sqrt(n)).all(), x.mean(0)
    assert ((x.std(0) - std).abs() < 5 * std / math.sqrt(2 * n)).all(), x.std(0)
    # and the generator makes it reproducible
    g.manual_seed(1234)
    assert torch.equal(Gaussian(mean, std).sample((n,), generator=g), x)


# ------------------------------------------------------------------------- TanhGaussian


def test_reference_is_exact():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    u = torch.tensor([-300.0, -40.0, -15.0, -10.5, -2.0, -1e-3, 0.0, 0.3, 9.7, 19.5, 25.0, 100.0])
    exact = torch.tensor(
        [float(2 * mpmath.log(mpmath.sech(mpmath.mpf(float(v))))) for v in u], dtype=torch.float64
    )
    torch.testing.assert_close(ref_log_one_minus_tanh_sq(u), exact, rtol=1e-15, atol=1e-15)


def test_log_one_minus_tanh_squared_is_stable():
    u = torch.linspace(-60, 60, 2401)
    ours = log_one_minus_tanh_squared(u)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), ref_log_one_minus_tanh_sq(u), rtol=1e-6, atol=1e-6)


def test_log_prob_pre_tanh_matches_float64_reference_in_the_tails():
    g = torch.Generator().manual_seed(4)
    B, d = 256, 3
    mean = torch.randn(B, d, generator=g) * 3
    std = torch.exp(torch.randn(B, d, generator=g) * 0.7)
    u = torch.randn(B, d, generator=g) * 20  # most rows have some |u_j| > 10
    u[0] = torch.tensor([10.5, -10.5, 15.0])
    u[1] = torch.tensor([-50.0, 100.0, -0.25])
    u[2] = torch.tensor([0.1, -0.2, 0.3])
    dist = TanhGaussian(mean, std)

    ours = dist.log_prob_pre_tanh(u)
    ref = ref_tanh_log_prob(mean, std, u)
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)

    # The naive float32 formula: tanh(u) rounds to ±1, log(1 − tanh²u) = −inf, log π = +inf.
    # This is what the test would catch if log_one_minus_tanh_squared were written naively.
    tails = (u.abs() > 10).any(-1)
    assert tails.sum() > B // 2 and not tails[2]
    naive_jac = torch.log(1 - torch.tanh(u) ** 2)
    naive = Normal(mean, std).log_prob(u).sum(-1) - naive_jac.sum(-1)
    assert (naive_jac[u.abs() > 10] == -math.inf).all()
    assert (naive[tails] == math.inf).all()
    # Where 1 − tanh²u is not yet swamped by rounding the naive formula agrees (a check that
    # `naive` is the right formula): |u| < 3.
    inner = (u.abs() < 3).all(-1)
    assert inner[2]
    torch.testing.assert_close(naive[inner].double(), ref[inner], rtol=1e-3, atol=1e-3)


def test_tanh_log_prob_gradients_finite_and_exact_in_the_tails():
    # Means far out: u ~ N(±12, 1) puts every sample where tanh(u) == ±1 in float32.
    g = torch.Generator().manual_seed(5)
    mean = torch.tensor([[12.0, -12.0, 0.5]]).repeat(64, 1).requires_grad_()
    log_std = torch.zeros(64, 3).requires_grad_()
    dist = TanhGaussian.from_log_std(mean, log_std)
    a, log_prob = dist.rsample_with_log_prob(generator=g)
    assert torch.isfinite(log_prob).all()
    grads = torch.autograd.grad(log_prob.sum(), [mean, log_std])
    assert all(torch.isfinite(gr).all() for gr in grads)

    # Same pathwise computation in float64 with the exact reference.
    g.manual_seed(5)
    mean64 = mean.detach().double().requires_grad_()
    log_std64 = log_std.detach().double().requires_grad_()
    eps = torch.randn(mean.shape, generator=g).double()
    u64 = mean64 + log_std64.exp() * eps
    ref = ref_tanh_log_prob(mean64, log_std64.exp(), u64)
    ref_grads = torch.autograd.grad(ref.sum(), [mean64, log_std64])
    torch.testing.assert_close(log_prob.detach().double(), ref.detach(), rtol=1e-5, atol=1e-4)
    for ours, theirs in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rsample_with_log_prob_is_consistent(dtype):
    mean, std, g = _params((8, 3), dtype, seed=6, mean_scale=0.5, log_std_scale=0.3)
    std = std * 0.5
    dist = TanhGaussian(mean, std)
    n = 500

    g.manual_seed(11)
    a, log_prob = dist.rsample_with_log_prob((n,), generator=g)
    g.manual_seed(11)
    u = dist.rsample_pre_tanh((n,), generator=g)
    assert a.shape == (n, 8, 3) and log_prob.shape == (n, 8)
    assert a.dtype == log_prob.dtype == dtype
    assert (a > -1).all() and (a < 1).all()
    assert torch.equal(a, torch.tanh(u))
    assert torch.equal(log_prob, dist.log_prob(a, pre_tanh=u))
    torch.testing.assert_close(log_prob.double(), ref_tanh_log_prob(mean, std, u), **TOL[dtype])

    # Without u, log_prob inverts tanh (clamped atanh): fine for moderate |u|.
    moderate = (u.abs() < 3).all(-1)
    assert moderate.float().mean() > 0.9
    tol = {"rtol": 1e-4, "atol": 2e-4} if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(dist.log_prob(a)[moderate], log_prob[moderate], **tol)

    g.manual_seed(11)
    assert torch.equal(dist.rsample((n,), generator=g), a)
    g.manual_seed(11)
    s = dist.sample((n,), generator=g)
    assert torch.equal(s, a) and not s.requires_grad
    # entropy() is the single-sample estimate −log π(a) for a drawn with the same noise
    g.manual_seed(12)
    entropy = dist.entropy(generator=g)
    g.manual_seed(12)
    assert torch.equal(entropy, -dist.rsample_with_log_prob(generator=g)[1])
    assert entropy.shape == (8,)


def test_rsample_with_log_prob_is_differentiable():
    mean = torch.zeros(4, 2, requires_grad=True)
    log_std = torch.full((4, 2), -0.5, requires_grad=True)
    a, log_prob = TanhGaussian.from_log_std(mean, log_std).rsample_with_log_prob()
    assert a.requires_grad and log_prob.requires_grad
    grads = torch.autograd.grad((a.sum() + log_prob.sum()), [mean, log_std])
    assert all(torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_transformed_distribution(dtype):
    mean, std, g = _params((16, 4), dtype, seed=7, mean_scale=0.5, log_std_scale=0.3)
    std = std * 0.5
    tanh = TanhTransform(cache_size=1)
    torch_dist = Independent(TransformedDistribution(Normal(mean, std), [tanh]), 1)
    ours = TanhGaussian(mean, std)

    torch.manual_seed(8)  # torch's Normal.rsample has no generator argument
    a = torch_dist.rsample((200,))
    u = tanh.inv(a)  # the cached pre-tanh sample, exact
    assert torch.equal(torch.tanh(u), a)
    torch_log_prob = torch_dist.log_prob(a)  # also inverts through the cache
    assert torch_log_prob.shape == (200, 16)
    torch.testing.assert_close(ours.log_prob(a, pre_tanh=u), torch_log_prob, **TOL[dtype])
    torch.testing.assert_close(ours.log_prob_pre_tanh(u), torch_log_prob, **TOL[dtype])

    # Without the cache both invert tanh; compare where |u| is moderate.
    moderate = (u.abs() < 3).all(-1)
    assert moderate.float().mean() > 0.9
    uncached = Independent(TransformedDistribution(Normal(mean, std), [TanhTransform()]), 1)
    a_copy = a.clone()  # a new tensor object: no cache hit
    tol = {"rtol": 1e-4, "atol": 2e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}
    torch.testing.assert_close(
        ours.log_prob(a_copy)[moderate], uncached.log_prob(a_copy)[moderate], **tol
    )


def test_mode_and_from_log_std():
    mean = torch.tensor([[-20.0, 0.0, 0.7]])
    log_std = torch.tensor([[0.1, -1.0, 2.0]])
    dist = TanhGaussian.from_log_std(mean, log_std)
    torch.testing.assert_close(dist.mode, torch.tanh(mean))
    torch.testing.assert_close(dist.std, log_std.exp())
    assert dist.mean is dist.base.mean
    assert Gaussian(mean, log_std.exp()).mode is not None
    torch.testing.assert_close(Gaussian(mean, log_std.exp()).mode, mean)
