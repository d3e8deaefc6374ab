"""Tests of rlgrad.estimators against closed forms (docs/estimators.md §5) and autograd loops.

Sample sizes for the "variance within 5 %" checks are computed, not guessed: a single-sample
estimate g of the f = (x − k)² problem is a polynomial in ε ~ N(0, 1), so its kurtosis
κ = E(g − Eg)⁴ / Var(g)² is exact (E ε^{2m} = (2m − 1)!!). The sample variance then has relative
standard deviation √((κ − 1)/n), and n = 16 (κ − 1) / 0.05² puts 5 % at four of them. The
score function's ∂σ estimate has κ ≈ 270 (≈ 360 with a baseline), hence n ≈ 1.7e6 (2.4e6); the
pathwise estimates have κ ≤ 15 and need < 1e5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import polynomial as npoly

from rlgrad.distributions import Gaussian, TanhGaussian
from rlgrad.estimators import (
    GradientSummary,
    closed_form_gaussian_quadratic,
    flatten_per_sample,
    per_sample_estimates,
    per_sample_gradients,
    summarize,
)

# torch's forward-mode AD registers its decompositions with torch.jit.script on first use
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)

D = torch.distributions
REL_TOL_VAR = 0.05
N_SE = 4.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- exact moments


def _normal_moment(k: int) -> float:
    """E ε^k for ε ~ N(0, 1)."""
    return 0.0 if k % 2 else float(math.prod(range(1, k, 2)))


def _expect(coeffs: np.ndarray) -> float:
    """E p(ε) for a polynomial with coefficients in increasing degree."""
    return float(sum(c * _normal_moment(i) for i, c in enumerate(coeffs)))


def _var_and_kurtosis(coeffs: np.ndarray) -> tuple[float, float]:
    centred = np.array(coeffs, dtype=float)
    centred[0] -= _expect(centred)
    var = _expect(npoly.polypow(centred, 2))
    return var, _expect(npoly.polypow(centred, 4)) / var**2


def _estimate_polys(mu: float, sigma: float, k: float, b: float) -> dict[str, np.ndarray]:
    """Single-sample estimates of (∂μ, ∂σ) E(x − k)² as polynomials in ε, x = μ + σε."""
    lin = np.array([mu - k, sigma])  # x − k
    f_minus_b = npoly.polypow(lin, 2) - np.array([b, 0.0, 0.0])
    return {
        "pathwise_mu": 2.0 * lin,
        "pathwise_sigma": npoly.polymul(2.0 * lin, [0.0, 1.0]),
        "score_mu": npoly.polymul(f_minus_b, [0.0, 1.0]) / sigma,
        "score_sigma": npoly.polymul(f_minus_b, [-1.0, 0.0, 1.0]) / sigma,
    }


def _samples_needed(polys: list[np.ndarray]) -> int:
    """n such that 5 % is N_SE standard deviations of every sample variance."""
    kurt = max(_var_and_kurtosis(p)[1] for p in polys)
    return math.ceil((N_SE / REL_TOL_VAR) ** 2 * (kurt - 1.0))


@pytest.mark.parametrize("b", [0.0, 0.3, 2.5])
@pytest.mark.parametrize(("mu", "sigma", "k"), [(0.7, 0.5, 0.7), (0.0, 1.0, 1.0), (2.0, 0.5, -1)])
def test_closed_form_matches_exact_polynomial_moments(mu, sigma, k, b):
    cf = closed_form_gaussian_quadratic(mu, sigma, k, baseline=b)
    polys = _estimate_polys(mu, sigma, k, b)
    for name, poly in polys.items():
        assert _expect(poly) == pytest.approx(getattr(cf, "grad_" + name.split("_")[1]))
        assert _var_and_kurtosis(poly)[0] == pytest.approx(getattr(cf, "var_" + name))


def test_closed_form_b0_is_the_guide_table():
    mu, sigma, k = 0.3, 0.8, 1.1
    d, s2 = mu - k, sigma**2
    cf = closed_form_gaussian_quadratic(mu, sigma, k)
    assert cf.var_score_mu == pytest.approx((d**4 + 14 * d**2 * s2 + 15 * s2**2) / s2)
    assert cf.var_score_sigma == pytest.approx(2 * (d**4 + 30 * d**2 * s2 + 37 * s2**2) / s2)
    assert cf.var_pathwise_sigma == pytest.approx(4 * d**2 + 8 * s2)


# ----------------------------------------------------------------------------- §4 grid


def _check_against_closed_form(
    grads: tuple[torch.Tensor, ...], truth: tuple[float, float], variances: tuple[float, float]
) -> GradientSummary:
    s = summarize(grads)
    for j in range(2):
        err = abs(s.mean[j].item() - truth[j])
        assert err < N_SE * s.stderr[j].item(), (j, s.mean[j].item(), truth[j], s.stderr[j])
        assert s.var[j].item() == pytest.approx(variances[j], rel=REL_TOL_VAR), j
    return s


GRID = [(0.7, 0.5, 0.7), (0.0, 1.0, 1.0), (1.5, 2.0, 0.5), (2.0, 0.5, 0.0)]


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
@pytest.mark.parametrize(("mu", "sigma", "k"), GRID)
def test_quadratic_mean_and_variance_match_closed_form(mu, sigma, k, estimator):
    polys = _estimate_polys(mu, sigma, k, 0.0)
    n = _samples_needed([polys[f"{estimator}_mu"], polys[f"{estimator}_sigma"]])
    params = (torch.tensor(mu), torch.tensor(sigma))
    grads = per_sample_gradients(
        lambda x: (x - k) ** 2, D.Normal, params, n=n, estimator=estimator, generator=_gen(1)
    )
    assert [g.shape for g in grads] == [torch.Size([n]), torch.Size([n])]
    cf = closed_form_gaussian_quadratic(mu, sigma, k)
    variances = (getattr(cf, f"var_{estimator}_mu"), getattr(cf, f"var_{estimator}_sigma"))
    _check_against_closed_form(grads, (cf.grad_mu, cf.grad_sigma), variances)


@pytest.mark.parametrize(("mu", "sigma", "k"), [(0.0, 1.0, 1.0)])
def test_baseline_keeps_mean_and_reduces_score_variance(mu, sigma, k):
    mean_f = (mu - k) ** 2 + sigma**2
    n = _samples_needed(list(_estimate_polys(mu, sigma, k, mean_f).values()))
    params = (torch.tensor(mu), torch.tensor(sigma))
    cf0 = closed_form_gaussian_quadratic(mu, sigma, k)
    cfb = closed_form_gaussian_quadratic(mu, sigma, k, baseline=mean_f)
    truth = (cf0.grad_mu, cf0.grad_sigma)
    plain = summarize(
        per_sample_gradients(lambda x: (x - k) ** 2, D.Normal, params, n=n, generator=_gen(2))
    )
    for baseline in ["mean", mean_f]:
        grads = per_sample_gradients(
            lambda x: (x - k) ** 2, D.Normal, params, n=n, baseline=baseline, generator=_gen(2)
        )
        # leave-one-out b_i = E f + O(n^-1/2): same variance as b = E f up to O(1/n)
        s = _check_against_closed_form(grads, truth, (cfb.var_score_mu, cfb.var_score_sigma))
        assert (s.var < 0.8 * plain.var).all(), (baseline, s.var, plain.var)


# ----------------------------------------------------------------------------- multivariate


def _quadratic_problem(dim: int = 5) -> tuple[torch.Tensor, ...]:
    g = _gen(0)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    A = a @ a.T / dim + torch.eye(dim, dtype=torch.float64)
    mu = torch.randn(dim, generator=g, dtype=torch.float64)
    sigma = 0.3 + torch.rand(dim, generator=g, dtype=torch.float64)
    k = torch.randn(dim, generator=g, dtype=torch.float64)
    return A, mu, sigma, k


def _quad_f(A: torch.Tensor, k: torch.Tensor):
    return lambda x: torch.einsum("ni,ij,nj->n", x - k, A, x - k)


def _assert_within_se(grads, truth) -> None:
    s = summarize(grads)
    err = (s.mean - torch.cat([t.reshape(-1) for t in truth])).abs()
    assert (err < N_SE * s.stderr).all(), err / s.stderr


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
@pytest.mark.parametrize(
    "dist_fn",
    [D.Normal, Gaussian, lambda m, s: D.Independent(D.Normal(m, s), 1)],
    ids=["torch-Normal", "rlgrad-Gaussian", "Independent"],
)
def test_diagonal_gaussian_5d_quadratic(dist_fn, estimator):
    A, mu, sigma, k = _quadratic_problem()
    # E (x−k)ᵀA(x−k) = dᵀAd + Σ_j A_jj σ_j²  ⇒  ∂μ = 2Ad, ∂σ_j = 2 A_jj σ_j
    truth = (2 * A @ (mu - k), 2 * A.diagonal() * sigma)
    grads = per_sample_gradients(
        _quad_f(A, k), dist_fn, (mu, sigma), n=50_000, estimator=estimator, generator=_gen(3)
    )
    assert [g.shape for g in grads] == [(50_000, 5), (50_000, 5)]
    _assert_within_se(grads, truth)


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_parameters_of_different_shapes(estimator):
    """A vector mean with one shared log-std: the factory sees the parameters as given."""
    A, mu, _, k = _quadratic_problem()
    log_s = torch.tensor(-0.2, dtype=torch.float64)
    s2 = math.exp(2 * log_s.item())
    truth = (2 * A @ (mu - k), 2 * A.diagonal().sum() * s2)  # ∂/∂log σ of σ² tr A
    grads = per_sample_gradients(
        _quad_f(A, k),
        lambda m, ls: D.Normal(m, ls.exp()),
        (mu, log_s),
        n=50_000,
        estimator=estimator,
        generator=_gen(4),
    )
    assert [g.shape for g in grads] == [(50_000, 5), (50_000,)]
    _assert_within_se(grads, truth)


# ----------------------------------------------------------------------------- rlgrad dists


@pytest.mark.parametrize("shape", [(), (1,)])
@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_rlgrad_gaussian_scalar_and_vector_parameters(shape, estimator):
    mu, sigma, k = 0.4, 0.6, 1.0
    params = (torch.full(shape, mu), torch.full(shape, sigma))
    grads = per_sample_gradients(
        lambda x: ((x - k) ** 2).reshape(x.shape[0], -1).sum(1),
        Gaussian,
        params,
        n=200_000,
        estimator=estimator,
        generator=_gen(5),
    )
    cf = closed_form_gaussian_quadratic(mu, sigma, k)
    assert grads[0].shape == (200_000, *shape)
    _assert_within_se(grads, (torch.tensor(cf.grad_mu), torch.tensor(cf.grad_sigma)))


def _tanh_square_reference(mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """∂μ, ∂σ of E Σ_j tanh²(μ_j + σ_j ε) by 200-node Gauss–Hermite in float64."""
    eps, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()
    t = np.tanh(mu[:, None] + sigma[:, None] * eps[None, :])
    dfdu = 2 * t * (1 - t**2)
    return (dfdu * w).sum(1), (dfdu * eps * w).sum(1)


def test_tanh_gaussian_pathwise_and_score_agree_with_reference():
    mu = torch.tensor([0.3, -1.2, 2.5])
    sigma = torch.tensor([0.8, 0.4, 1.5])
    ref = tuple(map(torch.from_numpy, _tanh_square_reference(mu.double().numpy(), sigma.numpy())))
    summaries = {}
    for estimator in ["score", "pathwise"]:
        est = per_sample_estimates(
            lambda a: (a**2).sum(-1),
            TanhGaussian,
            (mu, sigma),
            n=200_000,
            estimator=estimator,
            baseline="mean" if estimator == "score" else None,
            generator=_gen(6),
        )
        assert est.x.abs().max() <= 1.0
        _assert_within_se(est.grads, ref)
        summaries[estimator] = summarize(est.grads)
    sf, pw = summaries["score"], summaries["pathwise"]
    diff = (sf.mean - pw.mean).abs()
    assert (diff < N_SE * (sf.stderr**2 + pw.stderr**2).sqrt()).all()
    assert (pw.var < sf.var).all()  # a smooth f: the pathwise estimator wins here


# ----------------------------------------------------------------------------- vs backward()


def _loop_score(f, dist_fn, mu, sigma, x, baseline):
    values = f(x)
    n = len(x)
    rows = []
    for i in range(n):
        m, s = mu.clone().requires_grad_(), sigma.clone().requires_grad_()
        if baseline == "mean":
            b = (values.sum() - values[i]) / (n - 1)
        else:
            b = 0.0 if baseline is None else baseline
        ((values[i] - b) * dist_fn(m, s).log_prob(x[i]).sum()).backward()
        rows.append((m.grad, s.grad))
    return rows


def _loop_pathwise(f, mu, sigma, x):
    rows = []
    for x_i in x:
        m, s = mu.clone().requires_grad_(), sigma.clone().requires_grad_()
        eps = (x_i - mu) / sigma  # the noise that produced x_i
        f((m + s * eps)[None])[0].backward()
        rows.append((m.grad, s.grad))
    return rows


@pytest.mark.parametrize("dist_fn", [D.Normal, Gaussian], ids=["torch-Normal", "rlgrad-Gaussian"])
@pytest.mark.parametrize(
    ("estimator", "baseline"),
    [("score", None), ("score", 0.5), ("score", "mean"), ("pathwise", None)],
)
def test_rows_equal_a_loop_of_backward_calls(dist_fn, estimator, baseline):
    mu = torch.tensor([0.2, -0.5, 1.0], dtype=torch.float64)
    sigma = torch.tensor([0.7, 1.3, 0.4], dtype=torch.float64)

    def f(x):
        return torch.sin(x).sum(-1) * x.prod(-1) + (x**3).sum(-1)

    est = per_sample_estimates(
        f, dist_fn, (mu, sigma), n=6, estimator=estimator, baseline=baseline, generator=_gen(7)
    )
    if estimator == "score":
        rows = _loop_score(f, dist_fn, mu, sigma, est.x, baseline)
    else:
        rows = _loop_pathwise(f, mu, sigma, est.x)
    torch.testing.assert_close(est.values, f(est.x), rtol=0, atol=1e-12)
    for i, (gm, gs) in enumerate(rows):
        torch.testing.assert_close(est.grads[0][i], gm, rtol=0, atol=1e-6)
        torch.testing.assert_close(est.grads[1][i], gs, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- other dists


def test_score_function_on_a_categorical():
    """∂/∂l_j E_{x~Cat(softmax l)}[w_x] = p_j (w_j − Σ_i p_i w_i)."""
    logits = torch.tensor([0.1, 0.5, -0.3, 1.0], dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    p = logits.softmax(0)
    grads = per_sample_gradients(
        lambda x: w[x],
        lambda lg: D.Categorical(logits=lg),
        (logits,),
        n=100_000,
        baseline="mean",
        generator=_gen(8),
    )
    _assert_within_se(grads, (p * (w - (p * w).sum()),))


# ----------------------------------------------------------------------------- errors


class _NormalWithoutRsample(D.Normal):
    has_rsample = False


def _quadratic(x):
    return (x**2).reshape(x.shape[0], -1).sum(1)


PARAMS = (torch.tensor([0.1, 0.2]), torch.tensor([1.0, 0.5]))


@pytest.mark.parametrize(
    ("dist_fn", "params"),
    [
        (lambda lg: D.Categorical(logits=lg), (torch.zeros(3),)),
        (_NormalWithoutRsample, PARAMS),
    ],
    ids=["Categorical", "Normal-has_rsample-False"],
)
def test_pathwise_without_rsample_is_refused(dist_fn, params):
    with pytest.raises(ValueError, match="rsample"):
        per_sample_gradients(_quadratic, dist_fn, params, n=10, estimator="pathwise")


@pytest.mark.parametrize(
    "f",
    [
        lambda x: (x > 0).float().sum(-1),
        lambda x: (x.detach() ** 2).sum(-1),
        lambda x: torch.from_numpy(x.detach().numpy() ** 2).sum(-1),
    ],
    ids=["comparison", "detach", "numpy"],
)
def test_pathwise_with_non_differentiable_f_is_refused(f):
    with pytest.raises(ValueError, match="differentiable"):
        per_sample_gradients(f, D.Normal, PARAMS, n=10, estimator="pathwise")
    # the score function only needs the values
    grads = per_sample_gradients(f, D.Normal, PARAMS, n=10, estimator="score")
    assert grads[0].shape == (10, 2)


def test_piecewise_constant_f_warns_about_all_zero_pathwise_estimates():
    with pytest.warns(RuntimeWarning, match="exactly zero"):
        per_sample_gradients(
            lambda x: torch.round(x).sum(-1), D.Normal, PARAMS, n=10, estimator="pathwise"
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"estimator": "reinforce"}, "unknown estimator"),
        ({"baseline": "avg"}, "unknown baseline"),
        ({"baseline": True}, "unknown baseline"),
        ({"baseline": [1.0]}, "unknown baseline"),
        ({"baseline": float("nan")}, "finite"),
        ({"baseline": "mean", "n": 1}, "n >= 2"),
        ({"estimator": "pathwise", "baseline": 0.0}, "only to estimator='score'"),
        ({"n": 0}, "positive integer"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"n": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        per_sample_gradients(_quadratic, D.Normal, PARAMS, **args)


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_f_with_wrong_output_shape(estimator):
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        per_sample_gradients(lambda x: x**2, D.Normal, PARAMS, n=10, estimator=estimator)


# ----------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("dist_fn", [D.Normal, Gaussian], ids=["torch-Normal", "rlgrad-Gaussian"])
@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_generator_makes_draws_reproducible_and_leaves_global_rng_alone(dist_fn, estimator):
    state = torch.get_rng_state()
    a = per_sample_gradients(_quadratic, dist_fn, PARAMS, 50, estimator, generator=_gen(9))
    b = per_sample_gradients(_quadratic, dist_fn, PARAMS, 50, estimator, generator=_gen(9))
    c = per_sample_gradients(_quadratic, dist_fn, PARAMS, 50, estimator, generator=_gen(10))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_returned_gradients_are_detached_and_params_untouched():
    mu = torch.tensor([0.3], requires_grad=True)
    sigma = torch.tensor([0.5], requires_grad=True)
    for estimator in ["score", "pathwise"]:
        grads = per_sample_gradients(_quadratic, D.Normal, (mu, sigma), 20, estimator)
        assert not any(g.requires_grad for g in grads)
    assert mu.grad is None and sigma.grad is None


# ----------------------------------------------------------------------------- summarize


def test_summarize_matches_hand_computation_and_accepts_flat_or_tuple():
    g = _gen(11)
    a, b = torch.randn(7, 2, generator=g), torch.randn(7, generator=g)
    flat = torch.cat([a, b[:, None]], 1)
    s = summarize((a, b))
    assert s.n == 7 and s.shapes == (torch.Size([2]), torch.Size([]))
    mean = flat.double().mean(0)
    var = ((flat.double() - mean) ** 2).sum(0) / 6
    torch.testing.assert_close(s.mean, mean)
    torch.testing.assert_close(s.var, var)
    torch.testing.assert_close(s.var, flat.double().var(0))
    torch.testing.assert_close(s.trace_var, var.sum())
    torch.testing.assert_close(s.stderr, (var / 7).sqrt())
    torch.testing.assert_close(s.snr, (mean**2).sum() / (var.sum() / 7))
    torch.testing.assert_close(s.batch_var, var.sum() / 7)
    s_flat = summarize(flat)
    torch.testing.assert_close(s_flat.var, s.var)
    assert s_flat.shapes == (torch.Size([3]),)
    m_a, m_b = s.unflatten(s.mean)
    assert m_a.shape == (2,) and m_b.shape == ()
    assert flatten_per_sample((a, b))[0].shape == (7, 3)


def test_summarize_rejects_too_few_or_mismatched_samples():
    with pytest.raises(ValueError, match="at least 2"):
        summarize(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="disagree"):
        summarize((torch.zeros(4, 2), torch.zeros(5)))
