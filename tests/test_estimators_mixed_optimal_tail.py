"""The estimators beyond the two basic ones, against closed forms: the optimal constant baseline,
inverse-variance mixing of pathwise and score function, and the tail share."""

from __future__ import annotations

import math

import pytest
import torch

from rlgrad.estimators import (
    closed_form_gaussian_quadratic,
    mixing_weights,
    optimal_baseline,
    optimal_baselines_gaussian_quadratic,
    per_sample_estimates,
    summarize,
    tail_share,
)


def _normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.distributions.Normal:
    return torch.distributions.Normal(mu, sigma)


def _params(mu: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)


def _quadratic(k: float):
    return lambda x: (x - k).pow(2)


GRID = [(0.7, 0.5, 2.0), (0.0, 1.0, 1.0), (1.5, 0.3, -1.0)]


@pytest.mark.parametrize(("mu", "sigma", "k"), GRID)
def test_optimal_baseline_estimate_converges_to_its_closed_form(mu, sigma, k):
    """Mean over samples of the leave-one-out b_ij → b*_j = (d² + 3σ², d² + 5σ²)."""
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    eps = torch.randn(n, generator=gen, dtype=torch.float64)
    x = mu + sigma * eps
    values = (x - k).pow(2)
    scores = torch.stack([eps / sigma, (eps.pow(2) - 1) / sigma], dim=1)  # ∂μ, ∂σ of log q
    b = optimal_baseline(values, scores).mean(0)
    want = optimal_baselines_gaussian_quadratic(mu, sigma, k)
    assert b[0].item() == pytest.approx(want[0], rel=0.02)
    assert b[1].item() == pytest.approx(want[1], rel=0.02)


@pytest.mark.parametrize(("mu", "sigma", "k"), GRID)
def test_optimal_baseline_is_unbiased_with_the_closed_form_variance(mu, sigma, k):
    n = 400_000
    est = per_sample_estimates(
        _quadratic(k),
        _normal,
        _params(mu, sigma),
        n,
        "score",
        "optimal",
        torch.Generator().manual_seed(1),
    )
    s = summarize(est.grads)
    b_mu, b_sigma = optimal_baselines_gaussian_quadratic(mu, sigma, k)
    for j, (b, true) in enumerate([(b_mu, 2 * (mu - k)), (b_sigma, 2 * sigma)]):
        assert abs(s.mean[j].item() - true) < 4 * s.stderr[j].item()
        form = closed_form_gaussian_quadratic(mu, sigma, k, baseline=b)
        want = form.var_score_mu if j == 0 else form.var_score_sigma
        assert s.var[j].item() == pytest.approx(want, rel=0.06)


def test_optimal_baseline_matches_the_guides_monte_carlo_figure():
    """μ = 0.7, σ = 0.5, k = 2: Var ∂μ is 38.9 with b = 0, 16.1 with the mean, 15.1 with b*_μ."""
    b_mu, _ = optimal_baselines_gaussian_quadratic(0.7, 0.5, 2.0)
    assert closed_form_gaussian_quadratic(0.7, 0.5, 2.0, 0.0).var_score_mu == pytest.approx(
        38.9, abs=0.1
    )
    mean_b = (0.7 - 2.0) ** 2 + 0.25
    assert closed_form_gaussian_quadratic(0.7, 0.5, 2.0, mean_b).var_score_mu == pytest.approx(
        16.1, abs=0.1
    )
    assert closed_form_gaussian_quadratic(0.7, 0.5, 2.0, b_mu).var_score_mu == pytest.approx(
        15.1, abs=0.1
    )


@pytest.mark.parametrize("omega", [0.5, 0.9, 1.45, 3.0])
def test_optimal_baseline_is_never_worse_than_the_mean_baseline_on_cosines(omega):
    """cos(ωx): at ω ≈ 0.9 the mean baseline raises the variance of ∂σ above no baseline; the
    optimal one does not (it is the minimum over constants)."""
    f = lambda x: torch.cos(omega * x)  # noqa: E731
    variances = {}
    for baseline in (None, "mean", "optimal"):
        est = per_sample_estimates(
            f,
            _normal,
            _params(0.0, 1.0),
            200_000,
            "score",
            baseline,
            torch.Generator().manual_seed(3),
        )
        variances[baseline] = summarize(est.grads).var
    assert (variances["optimal"] <= variances["mean"] * 1.02).all(), variances
    assert (variances["optimal"] <= variances[None] * 1.02).all(), variances


@pytest.mark.parametrize(("mu", "sigma", "k"), GRID)
def test_mixed_is_unbiased_and_no_noisier_than_the_better_estimator(mu, sigma, k):
    n = 200_000
    est = per_sample_estimates(
        _quadratic(k),
        _normal,
        _params(mu, sigma),
        n,
        "mixed",
        "mean",
        torch.Generator().manual_seed(4),
    )
    s = summarize(est.grads)
    form = closed_form_gaussian_quadratic(mu, sigma, k, baseline=(mu - k) ** 2 + sigma**2)
    for j, true in enumerate([2 * (mu - k), 2 * sigma]):
        assert abs(s.mean[j].item() - true) < 4 * s.stderr[j].item()
    best_mu = min(form.var_pathwise_mu, form.var_score_mu)
    best_sigma = min(form.var_pathwise_sigma, form.var_score_sigma)
    assert s.var[0].item() <= 1.1 * best_mu
    assert s.var[1].item() <= 1.1 * best_sigma
    assert est.mix_weights is not None and all(0.0 <= w <= 1.0 for w in est.mix_weights)


def test_mixed_takes_its_weights_from_an_independent_pilot():
    """The weights applied are not those the applied samples would give (a pilot of other draws),
    and with them fixed the result is exactly w·pathwise + (1 − w)·score on the main draws."""
    args = (_quadratic(1.0), _normal, _params(0.3, 0.8), 2_000)
    est = per_sample_estimates(*args, "mixed", "mean", torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    pilot_pw = per_sample_estimates(*args, "pathwise", None, gen)  # the pilot's draws
    main_pw = per_sample_estimates(*args, "pathwise", None, gen)  # the main sample's draws
    torch.testing.assert_close(est.x, main_pw.x)
    assert not torch.equal(est.x, pilot_pw.x)
    eps = (main_pw.x - 0.3) / 0.8
    scores = (torch.stack([eps / 0.8, (eps.pow(2) - 1) / 0.8], 1),)
    values = main_pw.values
    loo = (values.sum() - values) / (values.numel() - 1)
    main_sf = ((values - loo).unsqueeze(1) * scores[0],)
    main_pw_flat = (torch.stack([g for g in main_pw.grads], 1),)
    w_main = mixing_weights(
        [main_pw_flat[0][:, 0], main_pw_flat[0][:, 1]], [main_sf[0][:, 0], main_sf[0][:, 1]]
    )
    assert est.mix_weights != pytest.approx(w_main, abs=1e-12)
    for j, w in enumerate(est.mix_weights):
        want = w * main_pw_flat[0][:, j] + (1 - w) * main_sf[0][:, j]
        torch.testing.assert_close(est.grads[j], want, rtol=1e-9, atol=1e-9)


def test_mixing_weights_are_the_variance_minimising_convex_combination():
    gen = torch.Generator().manual_seed(6)
    common = torch.randn(100_000, 3, generator=gen, dtype=torch.float64)
    a = common + 2.0 * torch.randn(100_000, 3, generator=gen, dtype=torch.float64)
    b = common + 1.0 * torch.randn(100_000, 3, generator=gen, dtype=torch.float64)
    (w,) = mixing_weights([a], [b])
    # Per element: Var a = 5, Var b = 2, Cov = 1 → w* = (2 − 1)/(5 + 2 − 2) = 0.2
    assert w == pytest.approx(0.2, abs=0.01)
    grid = [w + d for d in (-0.1, -0.05, 0.05, 0.1)]
    var_w = (w * a + (1 - w) * b).var(0).sum()
    assert all(var_w <= (v * a + (1 - v) * b).var(0).sum() for v in grid)


def test_tail_share_equals_a_direct_computation():
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    log_prob = torch.tensor([-1.0, -5.0, -0.5, -2.0], dtype=torch.float64)
    # 5 % of 4 draws rounds up to 1: the least likely draw is row 1, ‖g‖² = 4 of 16.
    assert tail_share(grads, log_prob).item() == pytest.approx(4.0 / 16.0)
    # 50 %: rows 1 and 3 (log q −5, −2): (4 + 2) / 16
    assert tail_share(grads, log_prob, fraction=0.5).item() == pytest.approx(6.0 / 16.0)


def test_tail_share_separates_smooth_from_tail_heavy_integrands():
    """(x − k)²'s score-function estimate leans on rare draws more than its pathwise one; with
    a function that lives in the tails (x⁴ at μ = 0), both do."""
    gen = torch.Generator().manual_seed(7)
    shares = {}
    for name in ("pathwise", "score"):
        est = per_sample_estimates(
            _quadratic(2.0), _normal, _params(0.0, 1.0), 100_000, name, None, gen
        )
        shares[name] = tail_share(est.grads, est.log_prob).item()
    assert shares["score"] > shares["pathwise"] > 0.05
    est = per_sample_estimates(
        lambda x: x.pow(4), _normal, _params(0.0, 1.0), 100_000, "pathwise", None, gen
    )
    assert tail_share(est.grads, est.log_prob).item() > 0.4
    assert math.isfinite(shares["score"])
