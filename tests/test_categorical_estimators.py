"""Tests of rlgrad.estimators.categorical: the exact sum against its closed form, the score
function's unbiasedness, Gumbel-softmax's bias and variance as τ → 0, straight-through's
forward and backward, and per-state rows against a loop of backward calls.

Most checks use a tabular policy: N states that share the logits l0, each with its own copy
as a leaf, so that the gradient of the summed rows in state i's copy is state i's estimate and
the N estimates are independent draws of one estimator. Everything runs in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from rlgrad.diagnostics import per_sample_grads
from rlgrad.estimators import (
    CategoricalEstimator,
    CategoricalExact,
    CategoricalObjective,
    CategoricalPolicy,
    CategoricalScore,
    GumbelSoftmax,
    StraightThrough,
    categorical_statistics,
    closed_form_categorical,
    make_categorical_estimator,
)

DT = torch.float64
N_SE = 4.0
L0 = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=DT)
Q0 = torch.tensor([1.0, 3.0, -0.5, 2.0], dtype=DT)
ALPHA = 0.3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _explicit_objective(logits: Tensor, q: Tensor, alpha: float) -> Tensor:
    """Σ_s Σ_a π_a (α log π_a − Q_a), π = exp(l)/Σ exp(l), by enumerating the actions."""
    z = logits.exp().sum(-1)
    total = logits.new_zeros(())
    for a in range(logits.shape[-1]):
        pi_a = logits[:, a].exp() / z
        total = total + (pi_a * (alpha * torch.log(pi_a) - q[:, a])).sum()
    return total


def _tabular_estimates(
    estimator: CategoricalEstimator,
    n: int,
    seed: int,
    q: Tensor = Q0,
    alpha: float = ALPHA,
    logits: Tensor = L0,
) -> Tensor:
    """n independent per-state estimates (n, A) of ∇_l E_a[α log π_a − Q_a] at l = ``logits``."""
    leaf = logits.expand(n, -1).clone().requires_grad_(True)
    policy = CategoricalPolicy(leaf)
    noise = estimator.draw(policy, generator=_gen(seed))
    objective = CategoricalObjective.from_q(q.expand(n, -1), alpha)
    prepared = estimator.prepare(policy, noise, objective)
    rows = estimator.row_losses(policy, noise, prepared, torch.as_tensor(alpha, dtype=DT))
    (grads,) = torch.autograd.grad(rows.sum(), leaf)
    return grads


def _exact_logit_gradient(q: Tensor = Q0, alpha: float = ALPHA) -> Tensor:
    return closed_form_categorical(L0, -q, alpha)[1]


# ----------------------------------------------------------------------------- exact


@pytest.mark.parametrize("alpha", [0.0, 0.3, 2.0])
def test_closed_form_is_the_gradient_of_the_enumerated_sum(alpha: float) -> None:
    """∂/∂l_j Σ_a π_a (α log π_a − Q_a) = π_j (h_j − h̄): the α log π term adds nothing."""
    g = _gen(0)
    logits = torch.randn(5, 4, dtype=DT, generator=g).requires_grad_(True)
    q = torch.randn(5, 4, dtype=DT, generator=g) * 3
    (autograd,) = torch.autograd.grad(_explicit_objective(logits, q, alpha), logits)
    value, closed = closed_form_categorical(logits.detach(), -q, alpha)
    torch.testing.assert_close(closed, autograd, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value.sum(), _explicit_objective(logits.detach(), q, alpha))
    # and the explicit formula, written out once more: π_j (h_j − Σ_a π_a h_a)
    pi = torch.softmax(logits.detach(), -1)
    h = alpha * pi.log() - q
    torch.testing.assert_close(closed, pi * (h - (pi * h).sum(-1, keepdim=True)))


def test_exact_estimator_equals_closed_form_and_has_zero_variance() -> None:
    g = _gen(1)
    logits = torch.randn(6, 5, dtype=DT, generator=g).requires_grad_(True)
    q = torch.randn(6, 5, dtype=DT, generator=g)
    exact = CategoricalExact()
    policy = CategoricalPolicy(logits)
    loss, value = exact.loss(policy, exact.draw(policy), CategoricalObjective.from_q(q, ALPHA))
    (grad,) = torch.autograd.grad(loss, logits)
    closed_value, closed = closed_form_categorical(logits.detach(), -q, ALPHA)
    torch.testing.assert_close(grad, closed / 6, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(value, closed_value.mean())
    stats = categorical_statistics(_tabular_estimates(exact, 50, 0), _exact_logit_gradient())
    assert stats.variance < 1e-28 and stats.bias < 1e-14 and stats.cosine == pytest.approx(1.0)


def test_exact_through_a_network_matches_enumeration() -> None:
    """θ = the weights of nn.Linear(obs → logits): the chain rule of the closed form."""
    torch.manual_seed(2)
    net = nn.Linear(3, 4).double()
    obs = torch.randn(7, 3, dtype=DT)
    q = torch.randn(7, 4, dtype=DT)
    exact = CategoricalExact()
    policy = CategoricalPolicy(net(obs))
    loss, _ = exact.loss(policy, exact.draw(policy), CategoricalObjective.from_q(q, ALPHA))
    ours = torch.autograd.grad(loss, list(net.parameters()))
    theirs = torch.autograd.grad(
        _explicit_objective(net(obs), q, ALPHA) / 7, list(net.parameters())
    )
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_function_of_one_hot_vectors_reads_as_its_table() -> None:
    """f given as a function of y is evaluated at the A one-hot vectors for the exact sum."""
    g = _gen(3)
    logits = torch.randn(4, 3, dtype=DT, generator=g).requires_grad_(True)
    table = torch.randn(4, 3, dtype=DT, generator=g)

    def f(y: Tensor) -> Tensor:  # nonlinear off the vertices, the table on them
        return (y * table).sum(-1) + (y * (1 - y)).sum(-1) * 5.0

    exact, policy = CategoricalExact(), CategoricalPolicy(logits)
    by_fn, _ = exact.loss(policy, exact.draw(policy), CategoricalObjective(f, ALPHA))
    by_table, _ = exact.loss(policy, exact.draw(policy), CategoricalObjective(table, ALPHA))
    torch.testing.assert_close(by_fn, by_table)
    torch.testing.assert_close(
        torch.autograd.grad(by_fn, logits)[0], torch.autograd.grad(by_table, logits)[0]
    )


# ----------------------------------------------------------------------------- score function


def test_gumbel_max_draws_follow_the_policy_and_are_reproducible() -> None:
    n = 200_000
    score = CategoricalScore(samples=2, baseline="none")
    policy = CategoricalPolicy(L0.expand(n, -1))
    objective = CategoricalObjective.from_q(Q0.expand(n, -1))
    noise = score.draw(policy, generator=_gen(4))
    action = score.prepare(policy, noise, objective)["action"]
    assert ((action == 0) | (action == 1)).all() and (action.sum(-1) == 1).all()
    freq = action.reshape(-1, 4).mean(0)
    pi = torch.softmax(L0, -1)
    assert ((freq - pi).abs() < N_SE * (pi * (1 - pi) / (2 * n)).sqrt()).all()
    again = score.prepare(policy, score.draw(policy, generator=_gen(4)), objective)["action"]
    assert torch.equal(action, again)


@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_score_is_unbiased(baseline: str) -> None:
    """Each component of the mean of 100 000 per-state estimates (K = 4) lies within 4 standard
    errors of the exact gradient."""
    estimates = _tabular_estimates(CategoricalScore(4, baseline), 100_000, seed=5)
    exact = _exact_logit_gradient()
    stderr = estimates.std(0) / math.sqrt(estimates.shape[0])
    z = (estimates.mean(0) - exact) / stderr
    assert (z.abs() < N_SE).all(), z
    stats = categorical_statistics(estimates, exact)
    assert stats.bias < 3 * stats.noise_floor and stats.cosine > 0.99


@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_score_estimate_is_the_stated_formula(baseline: str) -> None:
    """Per state, ĝ = (1/K) Σ_k (h_k − b_k + α)(e_{a_k} − π) in the logits (∇_l log π_a =
    e_a − π), with a_k = argmax(l + g_k) and b_k the others' mean h (loo) or 0."""
    k, n = 5, 40
    logits = torch.randn(n, 4, dtype=DT, generator=_gen(20))
    estimator = CategoricalScore(k, baseline)
    noise = estimator.draw(CategoricalPolicy(logits), generator=_gen(21))
    leaf = logits.clone().requires_grad_(True)
    policy = CategoricalPolicy(leaf)
    q = Q0.expand(n, -1)
    loss, value = estimator.loss(policy, noise, CategoricalObjective.from_q(q, ALPHA))
    (grads,) = torch.autograd.grad(loss * n, leaf)

    index = (logits + noise).argmax(-1)  # (K, B)
    pi = torch.softmax(logits, -1)
    h = ALPHA * pi.log().gather(-1, index.T).T - q.gather(-1, index.T).T
    b = (h.sum(0) - h) / (k - 1) if baseline == "loo" else torch.zeros_like(h)
    onehot = torch.nn.functional.one_hot(index, 4).to(DT)
    expected = ((h - b + ALPHA)[..., None] * (onehot - pi)).mean(0)
    torch.testing.assert_close(grads, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value, h.mean())


def test_loo_baseline_lowers_the_variance_under_a_large_offset() -> None:
    """Q + 50: without a baseline every weight carries the offset; loo removes it."""
    q = Q0 + 50.0
    exact = _exact_logit_gradient(q)
    none = categorical_statistics(
        _tabular_estimates(CategoricalScore(4, "none"), 20_000, 6, q), exact
    )
    loo = categorical_statistics(
        _tabular_estimates(CategoricalScore(4, "loo"), 20_000, 6, q), exact
    )
    assert loo.variance * 100 < none.variance


# ----------------------------------------------------------------------------- relaxations


def test_gumbel_softmax_bias_falls_and_variance_grows_as_temperature_falls() -> None:
    """τ ∈ {1, 0.5, 0.1}, 200 000 draws each, against the exact gradient. The relative biases
    are ≈ 0.33, 0.12, 0.01; each step down is checked beyond 4 standard errors (delta method)
    plus the next one's noise floor (what an unbiased estimate reads as bias)."""
    exact = _exact_logit_gradient()
    stats = [
        categorical_statistics(_tabular_estimates(GumbelSoftmax(tau), 200_000, 7), exact)
        for tau in (1.0, 0.5, 0.1)
    ]
    for hi, lo in zip(stats, stats[1:], strict=False):
        margin = N_SE * (hi.bias_stderr + lo.bias_stderr) + lo.noise_floor
        assert hi.bias - lo.bias > margin, (hi, lo)
        assert hi.variance * 2 < lo.variance, (hi, lo)
    assert stats[0].bias > 20 * stats[0].noise_floor  # biased, well beyond noise, at τ = 1


def test_gumbel_softmax_is_the_pathwise_gradient_of_the_relaxed_objective() -> None:
    """ĝ = ∇_l [α Σ_a y_a log π_a + f(y)], y = softmax((l + g)/τ), written out with autograd,
    for a nonlinear f (``prepare``'s slope stands in for f)."""
    n, tau = 20, 0.4
    logits = torch.randn(n, 4, dtype=DT, generator=_gen(22))
    f = _nonlinear_f(torch.randn(n, 4, dtype=DT, generator=_gen(23)))
    estimator = GumbelSoftmax(tau, samples=3)
    noise = estimator.draw(CategoricalPolicy(logits), generator=_gen(24))
    leaf = logits.clone().requires_grad_(True)
    loss, value = estimator.loss(CategoricalPolicy(leaf), noise, CategoricalObjective(f, ALPHA))
    (ours,) = torch.autograd.grad(loss, leaf)

    leaf = logits.clone().requires_grad_(True)
    y = torch.softmax((leaf + noise) / tau, -1)
    relaxed = ALPHA * (y * torch.log_softmax(leaf, -1)).sum(-1) + f(y)
    (theirs,) = torch.autograd.grad(relaxed.mean(), leaf)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(value, relaxed.detach().mean())


def test_straight_through_forward_is_exactly_one_hot() -> None:
    for dtype in (torch.float32, DT):
        logits = torch.randn(50, 6, dtype=dtype, generator=_gen(8)).requires_grad_(True)
        policy = CategoricalPolicy(logits)
        st = StraightThrough(temperature=0.7, samples=3)
        noise = st.draw(policy, generator=_gen(9))
        q = torch.randn(50, 6, dtype=dtype, generator=_gen(10))
        prepared = st.prepare(policy, noise, CategoricalObjective.from_q(q, ALPHA))
        y = st.sample(policy, noise, prepared["hard"])
        assert y.requires_grad
        assert ((y == 0) | (y == 1)).all() and (y.sum(-1) == 1).all()
        index = (logits.detach() + noise).argmax(-1)
        assert torch.equal(y.detach().argmax(-1), index)
        log_pi = torch.log_softmax(logits.detach(), -1).expand(3, -1, -1)
        picked_q = q.gather(-1, index.T).T  # Q(s, a_k), (K, B)
        expected = ALPHA * log_pi.gather(-1, index[..., None])[..., 0] - picked_q
        torch.testing.assert_close(prepared["objective"], expected)


def _row_grads(estimator: CategoricalEstimator, logits: Tensor, noise: Tensor, alpha: float):
    leaf = logits.clone().requires_grad_(True)
    policy = CategoricalPolicy(leaf)
    objective = CategoricalObjective.from_q(Q0.expand_as(logits), alpha)
    prepared = estimator.prepare(policy, noise, objective)
    rows = estimator.row_losses(policy, noise, prepared, torch.as_tensor(alpha, dtype=DT))
    return torch.autograd.grad(rows.sum(), leaf)[0], prepared


def test_straight_through_gradient_is_the_relaxed_gradient() -> None:
    """With α = 0 and a table the two estimates agree draw for draw; with α ≠ 0 they differ by
    exactly α Σ_a (y_hard − y)_a ∇ log π_a (the weight of the score term)."""
    logits = torch.randn(30, 4, dtype=DT, generator=_gen(11))
    noise = GumbelSoftmax(0.5).draw(CategoricalPolicy(logits), generator=_gen(12))
    relaxed, _ = _row_grads(GumbelSoftmax(0.5), logits, noise, 0.0)
    straight, _ = _row_grads(StraightThrough(0.5), logits, noise, 0.0)
    torch.testing.assert_close(straight, relaxed, rtol=1e-12, atol=1e-14)
    relaxed, _ = _row_grads(GumbelSoftmax(0.5), logits, noise, ALPHA)
    straight, prepared = _row_grads(StraightThrough(0.5), logits, noise, ALPHA)
    y = torch.softmax((logits + noise) / 0.5, -1)[0]
    weight = ALPHA * (prepared["hard"][0] - y)  # ∇_l Σ_a w_a log π_a = w − π Σ_a w_a
    pi = torch.softmax(logits, -1)
    difference = weight - pi * weight.sum(-1, keepdim=True)
    torch.testing.assert_close(straight - relaxed, difference, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- per-state rows


def _nonlinear_f(q: Tensor) -> Callable[[Tensor], Tensor]:
    w = torch.linspace(-1.0, 1.0, q.shape[-1], dtype=q.dtype)

    def f(y: Tensor) -> Tensor:
        return -(y * q).sum(-1) + 0.5 * torch.tanh((y * w).sum(-1))

    return f


@pytest.mark.parametrize(
    "estimator",
    [
        CategoricalExact(),
        CategoricalScore(3, "none"),
        CategoricalScore(3, "loo"),
        GumbelSoftmax(0.5, samples=2),
        StraightThrough(0.5, samples=2),
    ],
    ids=lambda e: f"{e.name}-{getattr(e, 'baseline', '')}",
)
@pytest.mark.parametrize("table", [True, False], ids=["table", "function"])
def test_per_state_rows_match_a_loop_of_backward_calls(
    estimator: CategoricalEstimator, table: bool
) -> None:
    """vmap(grad(ℓ_i)) over states through ``per_state`` = autograd.grad(ℓ_i) state by state,
    on nn.Linear(3 → 4); and their mean is the gradient of ``loss``."""
    torch.manual_seed(13)
    net = nn.Linear(3, 4).double()
    obs = torch.randn(6, 3, dtype=DT)
    q = torch.randn(6, 4, dtype=DT)
    objective = CategoricalObjective(-q if table else _nonlinear_f(q), ALPHA)
    alpha = torch.as_tensor(ALPHA, dtype=DT)
    params = list(net.parameters())
    with torch.no_grad():
        policy = CategoricalPolicy(net(obs))
        noise = estimator.draw(policy, generator=_gen(14))
        prepared = estimator.prepare(policy, noise, objective)

    rows = estimator.row_losses(CategoricalPolicy(net(obs)), noise, prepared, alpha)
    assert rows.shape == (6,)
    loop = [torch.autograd.grad(rows[i], params, retain_graph=True) for i in range(6)]

    inputs, row_loss = estimator.per_state(noise, prepared, alpha)

    def loss(forward, obs_i, *inputs_i):
        return row_loss(CategoricalPolicy(forward(obs_i)), *inputs_i)

    vmapped = per_sample_grads(net, loss, obs, *inputs)
    for k, (name, _) in enumerate(net.named_parameters()):
        expected = torch.stack([g[k] for g in loop])
        torch.testing.assert_close(vmapped[name], expected, rtol=1e-6, atol=1e-6)

    batch_loss, _ = estimator.loss(CategoricalPolicy(net(obs)), noise, objective)
    for k, g in enumerate(torch.autograd.grad(batch_loss, params)):
        torch.testing.assert_close(g, torch.stack([row[k] for row in loop]).mean(0))


# ----------------------------------------------------------------------------- statistics, API


def test_categorical_statistics_on_known_numbers() -> None:
    exact = torch.tensor([3.0, 4.0], dtype=DT)
    offset = torch.tensor([0.5, 0.0], dtype=DT)
    spread = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=DT)
    stats = categorical_statistics(exact + offset + spread, exact)
    assert stats.n == 4
    assert stats.bias == pytest.approx(0.5 / 5.0)
    assert stats.variance == pytest.approx((1 + 1 + 4 + 4) / 3)
    assert stats.noise_floor == pytest.approx(math.sqrt(10 / 3 / 4) / 5)
    # d = (0.5, 0): dᵀ Σ̂ d / n = 0.25 · (2/3) / 4, divided by ‖d‖ ‖g‖ = 2.5
    assert stats.bias_stderr == pytest.approx(math.sqrt(0.25 * (2 / 3) / 4) / 2.5)
    assert stats.cosine == pytest.approx(
        float((exact + offset) @ exact / (exact + offset).norm() / 5)
    )
    # one exact gradient per state: the residuals' spread, not the states'
    per_state = torch.stack([exact, 2 * exact, exact, 2 * exact])
    stats = categorical_statistics(per_state + offset, per_state)
    assert stats.variance == pytest.approx(0.0, abs=1e-24)
    assert stats.bias == pytest.approx(0.5 / 7.5)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="loo"):
        CategoricalScore(1, "loo")
    with pytest.raises(ValueError, match="baseline"):
        CategoricalScore(4, "value")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        GumbelSoftmax(0.0)
    with pytest.raises(ValueError, match="temperature"):
        StraightThrough(-1.0)
    with pytest.raises(ValueError, match="unknown categorical estimator"):
        make_categorical_estimator("pathwise")
    with pytest.raises(ValueError, match="exact gradient"):
        categorical_statistics(torch.zeros(3, 2), torch.zeros(5))
    assert isinstance(
        make_categorical_estimator("straight_through", temperature=0.3), StraightThrough
    )
