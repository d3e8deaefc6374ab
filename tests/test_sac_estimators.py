"""SAC with the estimators beyond the two basic ones: the optimal baseline, the inverse-variance
mix of pathwise and score function, and the tail probe, against direct computations."""

from __future__ import annotations

import copy

import pytest
import torch

from rlgrad import diagnostics
from rlgrad.agents.sac import Agent, Config
from rlgrad.config import DiagnosticsConfig
from rlgrad.envs import EnvSpec
from rlgrad.estimators import SquashedGaussianPolicy
from rlgrad.learner import Learner


def _agent(**overrides) -> Agent:
    torch.manual_seed(0)
    cfg = Config(**{"hidden_sizes": [16, 16], "score_samples": 4, "batch_size": 32, **overrides})
    agent = Agent(cfg, EnvSpec(obs_dim=3, act_dim=2), Learner(), n_envs=1)
    gen = torch.Generator().manual_seed(1)
    agent.observe(
        torch.randn(128, 3, generator=gen),
        torch.rand(128, 2, generator=gen) * 2 - 1,
        torch.randn(128, generator=gen),
        torch.randn(128, 3, generator=gen),
        torch.zeros(128, dtype=torch.bool),
        torch.zeros(128, dtype=torch.bool),
    )
    return agent


def _flat_grad(agent: Agent, loss: torch.Tensor) -> torch.Tensor:
    params = list(agent.actor.parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    return torch.cat([g.flatten() for g in grads])


def test_mixed_training_gradient_is_the_per_layer_combination_of_the_two():
    agent = _agent(actor_estimator="mixed")
    weights = {name: 0.1 * (i + 1) for i, name in enumerate(agent.mixed.weights)}
    agent.mixed.weights = weights
    obs, alpha = torch.randn(16, 3), torch.tensor(0.2)
    objective = agent.actor_objective(obs, alpha)
    policy = agent.policy(obs)
    torch.manual_seed(3)
    noise = agent.mixed.draw(policy)
    loss, _ = agent.mixed.loss(policy, noise, objective)
    got = torch.autograd.grad(loss, list(agent.actor.parameters()))

    pathwise, score = agent.estimators["pathwise"], agent.estimators["score"]
    g_pw = torch.autograd.grad(
        pathwise.loss(agent.policy(obs), noise[0], objective)[0], list(agent.actor.parameters())
    )
    g_sf = torch.autograd.grad(
        score.loss(agent.policy(obs), noise[1:], objective)[0], list(agent.actor.parameters())
    )
    for (name, _), g, a, b in zip(agent.actor.named_parameters(), got, g_pw, g_sf, strict=True):
        w = weights[name]
        torch.testing.assert_close(g, w * a + (1 - w) * b, rtol=1e-5, atol=1e-7)


def test_mixed_weights_come_from_a_measurement_of_their_own_and_resume_exactly():
    agent = _agent(actor_estimator="mixed", mix_interval=3)
    assert set(agent.mixed.weights.values()) == {1.0}  # pathwise alone before the first refresh
    batch = agent.buffer.sample(32)
    agent.update_once(batch)
    first = dict(agent.mixed.weights)
    assert all(0.0 <= w <= 1.0 for w in first.values()) and set(first.values()) != {1.0}
    # Weights are per layer: a layer's weight and bias share theirs.
    for name, w in first.items():
        assert w == first[name.rsplit(".", 1)[0] + ".weight"]
    agent.update_once(agent.buffer.sample(32))
    assert agent.mixed.weights == first  # refreshed every mix_interval updates only
    other = _agent(actor_estimator="mixed", mix_interval=3)
    other.load_state_dict(copy.deepcopy(agent.state_dict()))
    assert other.mixed.weights == first


def test_mixed_estimate_is_no_noisier_than_the_better_estimator():
    """At optimal weights (measured on other states), the mixed per-state variance is at most
    1.1 × the smaller of the two on fresh states."""
    agent, alpha = _agent(actor_estimator="mixed"), torch.tensor(0.2)
    with torch.no_grad():
        agent.critic.ensemble.biases[-1].add_(3.0)
    agent.refresh_mixing_weights(alpha)  # from 16 replayed states and their own draws
    torch.manual_seed(8)
    obs = torch.randn(4096, 3)
    m = agent.measure(obs, alpha)
    var = {k: diagnostics.moment_statistics(v)["variance"].item() for k, v in m.moments.items()}
    assert var["mixed"] <= 1.1 * min(var["pathwise"], var["score"]), var


def test_diagnose_logs_tail_shares_costs_and_mixing_weights():
    agent = _agent(actor_estimator="mixed")
    metrics = agent.diagnose(DiagnosticsConfig(interval=1, reference_interval=0))
    for name in ("pathwise", "score"):
        assert 0.0 < metrics[f"grad/{name}/tail_share"] < 1.0
    assert metrics["grad/pathwise/critic_evaluations"] == 1
    assert metrics["grad/score/critic_evaluations"] == 4
    assert metrics["grad/mixed/critic_evaluations"] == 5
    assert {k for k in metrics if k.startswith("grad/mixed/weight_pathwise/")} == {
        f"grad/mixed/weight_pathwise/{layer}" for layer in ("trunk.0", "trunk.2", "mean", "log_std")
    }
    assert "grad/mixed/variance" in metrics


# K = 4 with 2d = 4 head outputs: measured through the heads; K = 1: by the direct backwards.
ROUTES = {"heads": {}, "direct": {"score_samples": 1, "score_baseline": "none"}}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("name", ["pathwise", "score"])
def test_tail_share_equals_a_direct_computation_on_the_same_draws(name, route):
    """The share of Σ‖g‖² of the 5 % least likely draws, from a loop of backward calls (one per
    draw) on the draws the measurement made."""
    agent, alpha = _agent(**ROUTES[route]), torch.tensor(0.3)
    obs = torch.randn(40, 3)
    torch.manual_seed(11)
    got = agent.measure(obs, alpha).tail_share[name]

    torch.manual_seed(11)
    objective = agent.actor_objective(obs, alpha)
    policy = SquashedGaussianPolicy.of(agent.actor(obs))
    noises = {}
    for key, estimator in agent.estimators.items():  # the same draws in the same order
        noises[key] = estimator.draw(policy)
    estimator, noise = agent.estimators[name], noises[name]
    prepared = estimator.prepare(policy, noise, objective)
    draws = estimator.draw_losses(policy, noise, prepared, alpha)
    flat = draws.reshape(-1)
    norms = torch.stack(
        [_flat_grad(agent, flat[i]).double().pow(2).sum() for i in range(flat.numel())]
    )
    unlikely = estimator.unlikeliness(noise, prepared).reshape(-1)
    k = max(1, -(-flat.numel() * 5 // 100))
    tail = torch.topk(unlikely, k).indices
    want = norms[tail].sum() / norms.sum()
    assert got.item() == pytest.approx(want.item(), rel=1e-4)


@pytest.mark.parametrize("baseline", ["loo", "optimal", "value"])
def test_measuring_through_the_heads_equals_backward_passes_through_the_actor(baseline):
    """The two ways of ``measure`` (the heads' Jacobians; one backward through the actor per
    estimator and one over the K draws) on the same draws: deltas, moments, cross sums and
    each draw's ‖g‖²."""
    agent, alpha = _agent(score_baseline=baseline), torch.tensor(0.3)
    obs = torch.randn(40, 3)
    with torch.enable_grad():
        tape, policy, drawn = agent.measurement_draws(obs, alpha)
        want, want_sq = agent._direct(tape, policy, drawn, alpha)
        got, got_sq = agent._through_heads(tape, drawn, alpha)
    close = {"rtol": 1e-5, "atol": 1e-7}
    for key in drawn:
        for layer, delta in want.deltas[key].items():
            torch.testing.assert_close(got.deltas[key][layer], delta, **close)
        expected, moments = want.moments[key], got.moments[key]
        assert list(moments.sums) == list(expected.sums)
        for param in expected.sums:
            torch.testing.assert_close(moments.sums[param], expected.sums[param], **close)
            torch.testing.assert_close(
                moments.sq_sums[param], expected.sq_sums[param], rtol=1e-5, atol=0
            )
        torch.testing.assert_close(moments.row_sq, expected.row_sq, rtol=1e-5, atol=0)
        if want_sq[key] is None:
            assert got_sq[key] is None
        else:
            torch.testing.assert_close(got_sq[key], want_sq[key], rtol=1e-5, atol=0)
    assert list(got.cross) == list(want.cross)
    for param, value in want.cross.items():
        torch.testing.assert_close(got.cross[param], value, rtol=1e-5, atol=1e-12)


def test_measurement_draws_what_it_always_drew_and_evaluates_h_as_training_does():
    """The global RNG gives ε (B, d), then the K score draws (K, B, d), and nothing else (seeded
    runs with diagnostics stay as they were); the critic's K·B rows, sent in smaller calls,
    give the values of ``actor_objective``."""
    agent, alpha = _agent(), torch.tensor(0.3)
    obs = torch.randn(40, 3)
    torch.manual_seed(5)
    agent.measure(obs, alpha)
    after = torch.rand(3)
    torch.manual_seed(5)
    torch.randn(40, 2), torch.randn(4, 40, 2)
    assert torch.equal(after, torch.rand(3))
    actions = torch.rand(4, 40, 2) * 2 - 1
    for a in (actions, actions[0]):
        torch.testing.assert_close(
            agent.measurement_objective(obs, alpha).f(a),
            agent.actor_objective(obs, alpha).f(a),
            rtol=1e-6,
            atol=1e-6,
        )


def test_optimal_baseline_weights_are_leave_one_out_per_component():
    agent, alpha = _agent(score_baseline="optimal"), torch.tensor(0.2)
    obs = torch.randn(5, 3)
    score = agent.estimators["score"]
    policy = SquashedGaussianPolicy.of(agent.actor(obs))
    torch.manual_seed(2)
    noise = score.draw(policy)
    prepared = score.prepare(policy, noise, agent.actor_objective(obs, alpha))
    u, h = prepared["u"], prepared["objective"]
    dist = policy.distribution
    s_mu = ((u - dist.mean) / dist.std**2).detach()
    k, b, j = 2, 3, 1  # one draw, state and component, by hand
    others = [i for i in range(4) if i != k]
    num = sum(h[i, b] * s_mu[i, b, j] ** 2 for i in others)
    den = sum(s_mu[i, b, j] ** 2 for i in others)
    want = (h[k, b] - num / den + alpha) * s_mu[k, b, j]
    torch.testing.assert_close(prepared["weighted_score_mean"][k, b, j], want, rtol=1e-5, atol=1e-6)
