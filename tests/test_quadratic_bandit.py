"""rlgrad/QuadraticBandit-v0 and the true actor gradient of experiments/dimension_scaling.py."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlgrad.envs  # noqa: F401  (registers the toy envs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import dimension_scaling as ds  # noqa: E402


def test_bandit_episodes_are_one_step_and_q_is_the_reward():
    env = gym.make("rlgrad/QuadraticBandit-v0", action_dim=3, obs_dim=2, seed=5)
    bandit = env.unwrapped
    assert env.action_space.shape == (3,) and env.observation_space.shape == (2,)
    problem = ds.make_problem(3, obs_dim=2, env_seed=5)
    rng = np.random.default_rng(0)
    for episode in range(20):
        obs, _ = env.reset(seed=episode)
        assert np.all(np.abs(obs) <= 1.0)
        optimum = bandit.optimum(obs)
        assert np.all(np.abs(optimum) < 1.0)
        action = rng.uniform(-1, 1, 3).astype(np.float32)
        _, reward, terminated, truncated, _ = env.step(action)
        assert terminated and not truncated  # one step, then the episode ends: Q(s, a) = r(s, a)
        expected = -float(np.sum((action.astype(np.float64) - np.tanh(bandit.weight @ obs)) ** 2))
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-12)
        # the experiment's torch Q is the env's reward
        q = problem.q(torch.as_tensor(obs)[None], torch.as_tensor(action)[None])
        assert float(q[0]) == pytest.approx(reward, rel=1e-5, abs=1e-6)
    # at the optimum the reward is 0, and W is fixed by the seed kwarg alone
    env.reset(seed=0)
    assert env.step(bandit.optimum(bandit.state))[1] == pytest.approx(0.0, abs=1e-6)
    again = gym.make("rlgrad/QuadraticBandit-v0", action_dim=3, obs_dim=2, seed=5).unwrapped
    other = gym.make("rlgrad/QuadraticBandit-v0", action_dim=3, obs_dim=2, seed=6).unwrapped
    assert np.array_equal(again.weight, bandit.weight)
    assert not np.allclose(other.weight, bandit.weight)


def quadrature_gradient(problem: ds.Problem, nodes_s: int = 4000, nodes_eps: int = 801):
    """∇θ E_s E_ε[‖tanh(μ(s) + σ(s) ε) − a*(s)‖²] for d = m = 1 in float64: the midpoint rule
    over s ~ U[−1, 1] (the actor is piecewise smooth in s) and the trapezoid rule over
    ε ∈ [−10, 10] against the standard normal density (exponentially accurate for the smooth
    integrand in ε)."""
    actor = copy.deepcopy(problem.actor).double()
    s = (torch.arange(nodes_s, dtype=torch.float64) + 0.5) / nodes_s * 2.0 - 1.0
    eps = torch.linspace(-10.0, 10.0, nodes_eps, dtype=torch.float64)
    w_eps = torch.exp(-0.5 * eps * eps) / math.sqrt(2 * math.pi) * (eps[1] - eps[0])
    w_eps[0] = w_eps[-1] = w_eps[0] / 2
    dist = actor(s[:, None])
    u = dist.mean + dist.std * eps[:, None, None]  # (E, S, 1)
    target = torch.tanh(s[:, None] @ problem.weight.double().T)  # (S, 1)
    h = ((torch.tanh(u) - target) ** 2).sum(-1)  # (E, S)
    objective = (w_eps[:, None] * h).sum(0).mean()
    grads = torch.autograd.grad(objective, list(actor.parameters()))
    return torch.cat([g.flatten() for g in grads])


def test_true_gradient_matches_quadrature_within_its_standard_error():
    problem = ds.make_problem(1, obs_dim=1, env_seed=3, actor_seed=3, hidden=(16, 16))
    g_mc, se = ds.true_gradient(problem, samples=1_000_000, seed=11)
    g_quad = quadrature_gradient(problem)
    # the test has power: the gradient stands far out of the Monte Carlo error
    assert g_quad.norm() > 30 * se.norm()
    live = se > 0
    z = (g_mc[live] - g_quad[live]) / se[live]
    assert float((z * z).mean()) < 1.6, float((z * z).mean())
    assert float(z.abs().max()) < 5.5, float(z.abs().max())
    assert torch.allclose(g_mc[~live], g_quad[~live], atol=1e-9)
    # a wrong truth (e.g. the gradient at a 10 % different objective scale) is caught
    z_wrong = (1.1 * g_mc[live] - g_quad[live]) / se[live]
    assert float((z_wrong * z_wrong).mean()) > 1.6


def test_dimension_scaling_smoke_finite_and_pathwise_aligned_at_d1():
    """Smoke test: finite numbers for every line; and pathwise's batch-256 estimate points
    along the true gradient at d = 1."""
    rows = ds.run_dimension(
        1, ks=(1, 4), truth_samples=1 << 16, states=512, pilot_states=256, hidden=(32, 32)
    )
    lines = {(r["estimator"], r["K"], r["baseline"]) for r in rows}
    assert lines == {
        ("pathwise", 1, ""),
        ("score", 1, "none"),
        ("mixed", 1, "none"),
        ("score", 4, "loo"),
        ("score", 4, "optimal"),
        ("mixed", 4, "loo"),
    }
    for r in rows:
        for key in ("variance", "variance_per_evaluation", "cosine_batch256_mean"):
            assert math.isfinite(r[key]) and (key == "cosine_batch256_mean" or r[key] > 0)
        assert r["variance_per_evaluation"] == pytest.approx(
            r["variance"] * r["critic_evaluations"]
        )
    pathwise = next(r for r in rows if r["estimator"] == "pathwise")
    assert pathwise["cosine_batch256_mean"] > 0.9
